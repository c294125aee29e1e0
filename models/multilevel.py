"""Paper C: He et al. (2022), "Multilevel Transformer for Multimodal Emotion Recognition".

No public code. Structure from the paper (section 3, Fig. 1-2); gaps filled from works it cites (R):

* phonemes: embedding 8 → Conv1d(width 5) → ReLU → max over each word's phonemes (R ``allenai/bi-att-flow``
  char-CNN: 8-d embedding, width 5, 100 filters);
* words: GloVe 300-d (P); [phoneme-CNN; GloVe] → 2-layer highway Z = H(u)·T(u) + u·(1 − T(u)) (P eq. 3),
  or ``combine="concat"`` (P ablation);
* encoder prenet: 3 × [Conv1d(k 5, pad 2) → BN → ReLU → Dropout 0.2] + Linear (R ``soobinseo/Transformer-TTS``),
  then scaled sinusoidal PE with a learned scale (R Transformer-TTS) and the text encoder (P: 1 layer);
* audio: 128-d filterbank → 2-layer FC prenet (Linear → ReLU → Dropout 0.5, twice; P/R), a learned dummy
  mel vector prepended before the prenet (its being learned is our choice), scaled PE (R);
* cross-modal layer (P: 1): self-attention over the mel sequence + encoder–decoder attention over the text
  encoder output + FFN (a Transformer-TTS decoder layer without the causal mask: the whole golden mel is
  available, P eq. 2); deep fusion (P: 2 self-attention layers); logits = Linear(output at the dummy).

NF (our choice): 4 heads, FFN 512, attention/residual dropout 0.1, post-LN layers, prenet hidden 256.
Hidden size 128 everywhere (P).

``multigranularity`` adds a BERT CLS vector (P: 12-layer, 768-d BERT): both CLS vectors are projected
(NF: Linear → ReLU, 128 each), concatenated, dropout 0.1 (NF) → Linear (P: "a fully connected layer").
BERT is not fine-tuned here (its CLS comes from the feature store; NF).

Inputs: ``fbank`` (B, T, 128) + ``fbank_mask``; ``phonemes`` LongTensor (B, W, P), 0 = pad id (vocab ids
start at 1); ``glove`` (B, W, 300) + ``glove_mask`` (B, W), which is the word mask for phonemes too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.blocks import SinusoidalPositionalEncoding, TransformerLayer, lengths_to_mask, zero_padded
from models.registry import InputSpec, PaperModel, random_lengths, random_sequence, register_model

TITLE_C = "Multilevel Transformer for Multimodal Emotion Recognition (He et al. 2022)"
TRAIN_C = {
    "optimizer": "adam",
    "lr": 1e-5,
    "betas": [0.9, 0.999],  # NF: Adam defaults
    "weight_decay": 0.0,
    "batch_size": 4,
    "epochs": 100,  # NF: the paper early-stops on validation WA
    "early_stopping_patience": 10,  # NF
    "schedule": None,
    "select_on": "val_wa",
    "loss": "cross_entropy",
}
PROTOCOL_C = "5-fold CV by session, 3/1/1 sessions train/dev/test, 3 runs averaged"


class PhonemeCNN(nn.Module):
    """Character-level CNN over each word's phonemes, max-pooled over the word (P 3.1.3; R bi-att-flow).

    ``forward(phonemes (B, W, P) long, 0 = pad) -> (B, W, n_filters)``; a word without phonemes gives zeros.
    Pad ids embed to exact zeros and conv positions past the word's last phoneme are excluded from the max,
    so extra phoneme padding never changes the output.
    """

    def __init__(self, vocab_size: int, emb_dim: int, n_filters: int, width: int):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, emb_dim, padding_idx=0)
        self.conv = nn.Conv1d(emb_dim, n_filters, width, padding=width // 2)

    def forward(self, phonemes: torch.Tensor) -> torch.Tensor:
        B, W, P = phonemes.shape
        ids = phonemes.reshape(B * W, P)
        h = torch.relu(self.conv(self.emb(ids).transpose(1, 2)))  # (BW, F, P)
        valid = (ids != 0).unsqueeze(1)
        h = h.masked_fill(~valid, float("-inf")).max(dim=-1).values
        h = torch.where(torch.isinf(h), torch.zeros_like(h), h)  # words with no phonemes
        return h.view(B, W, -1)


class Highway(nn.Module):
    """Z = H(u)·T(u) + u·(1 − T(u)), H = affine + ReLU, T = sigmoid gate (P eq. 3), ``n_layers`` times."""

    def __init__(self, dim: int, n_layers: int = 2):
        super().__init__()
        self.h = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_layers)])
        self.t = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_layers)])

    def forward(self, u):
        for h, t in zip(self.h, self.t, strict=True):
            g = torch.sigmoid(t(u))
            u = torch.relu(h(u)) * g + u * (1 - g)
        return u


class EncoderPrenet(nn.Module):
    """3 × [Conv1d(k, pad k//2) → BN → ReLU → Dropout] + Linear (R Transformer-TTS). ``(B, W, in) → (B, W, hidden)``.
    Padded words are zeroed before each conv so they act like the conv's own zero padding."""

    def __init__(self, in_dim, hidden, kernel=5, dropout=0.2, n_convs=3):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv1d(in_dim if i == 0 else hidden, hidden, kernel, padding=kernel // 2)
                for i in range(n_convs)
            ]
        )
        self.bns = nn.ModuleList([nn.BatchNorm1d(hidden) for _ in range(n_convs)])
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x, mask):
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = zero_padded(x, mask)
            x = self.drop(torch.relu(bn(conv(x.transpose(1, 2))))).transpose(1, 2)
        return self.proj(x)


@dataclass
class MultilevelConfig:
    """Multilevel transformer config: P values where given (hidden 128, 1/1/2 layers, GloVe 300, fbank 128,
    highway), R values for the phoneme CNN and prenets, NF otherwise (see module docstring)."""

    fbank_dim: int = 128  # P
    glove_dim: int = 300  # P
    phoneme_vocab: int = (
        71  # ids incl. 0 = <pad>, 1 = <unk>: features.text.phoneme_vocabulary(stress=True) has 71
    )
    phoneme_emb: int = 8  # R
    phoneme_filters: int = 100  # R
    phoneme_width: int = 5  # R
    combine: str = "highway"  # P: "highway" (best) | "concat"
    highway_layers: int = 2  # P
    hidden: int = 128  # P
    prenet_hidden: int = 256  # NF (Transformer-TTS: 2 × hidden)
    prenet_dropout: float = 0.5  # P/R audio prenet
    encoder_prenet_dropout: float = 0.2  # R
    text_layers: int = 1  # P Table 2 best
    cross_layers: int = 1  # P
    fusion_layers: int = 2  # P
    n_heads: int = 4  # NF
    d_ff: int = 512  # NF
    dropout: float = 0.1  # NF
    use_text: bool = True  # P; False: the audio path alone (no text encoder, the cross-modal layers without their
    #                        encoder-decoder attention) — the fusion sanity check "not below its audio-only part"


class MultilevelEncoder(nn.Module):
    """Everything up to the dummy-position vector: ``forward(fbank, phonemes, glove, fbank_mask, glove_mask)
    -> (B, hidden)``."""

    def __init__(self, c: MultilevelConfig):
        super().__init__()
        if c.combine not in ("highway", "concat"):
            raise ValueError(f"multilevel: combine must be 'highway' or 'concat', got {c.combine!r}")
        self.use_text = c.use_text
        if c.use_text:
            self.phoneme_cnn = PhonemeCNN(c.phoneme_vocab, c.phoneme_emb, c.phoneme_filters, c.phoneme_width)
            word_dim = c.phoneme_filters + c.glove_dim
            self.highway = Highway(word_dim, c.highway_layers) if c.combine == "highway" else nn.Identity()
            self.encoder_prenet = EncoderPrenet(word_dim, c.hidden, dropout=c.encoder_prenet_dropout)
            self.text_pe = SinusoidalPositionalEncoding(c.hidden)
            self.text_alpha = nn.Parameter(torch.ones(1))  # R: Transformer-TTS scaled PE
            self.text_encoder = nn.ModuleList(
                [TransformerLayer(c.hidden, c.n_heads, c.d_ff, c.dropout) for _ in range(c.text_layers)]
            )
        self.dummy_mel = nn.Parameter(torch.zeros(c.fbank_dim))
        self.mel_prenet = nn.Sequential(
            nn.Linear(c.fbank_dim, c.prenet_hidden), nn.ReLU(), nn.Dropout(c.prenet_dropout),
            nn.Linear(c.prenet_hidden, c.hidden), nn.ReLU(), nn.Dropout(c.prenet_dropout),
        )  # fmt: skip
        self.mel_alpha = nn.Parameter(torch.ones(1))
        self.mel_pe = SinusoidalPositionalEncoding(c.hidden)
        self.cross = nn.ModuleList(
            [
                TransformerLayer(c.hidden, c.n_heads, c.d_ff, c.dropout, cross=c.use_text)
                for _ in range(c.cross_layers)
            ]
        )
        self.fusion = nn.ModuleList(
            [TransformerLayer(c.hidden, c.n_heads, c.d_ff, c.dropout) for _ in range(c.fusion_layers)]
        )

    def forward(self, fbank, phonemes=None, glove=None, fbank_mask=None, glove_mask=None):
        B = fbank.size(0)
        t = None
        if self.use_text:
            if phonemes is None or glove is None:
                raise ValueError("multilevel: use_text=True needs the 'phonemes' and 'glove' inputs")
            if glove_mask is None:
                glove_mask = torch.zeros(glove.shape[:2], dtype=torch.bool, device=glove.device)
            # text side: words and their phonemes
            u = torch.cat([self.phoneme_cnn(phonemes), glove], dim=-1)
            t = self.encoder_prenet(self.highway(u), glove_mask)
            t = t + self.text_alpha * self.text_pe.encoding(t.size(1)).unsqueeze(0)
            for layer in self.text_encoder:
                t = layer(t, glove_mask)
        # audio side: dummy mel vector first, its output is the utterance representation
        mel = torch.cat([self.dummy_mel.expand(B, 1, -1), fbank], dim=1)
        m_mask = None
        if fbank_mask is not None:
            m_mask = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=fbank.device), fbank_mask], dim=1)
        m = self.mel_prenet(mel)
        m = m + self.mel_alpha * self.mel_pe.encoding(m.size(1)).unsqueeze(0)
        for layer in self.cross:
            m = layer(m, m_mask, t, glove_mask) if self.use_text else layer(m, m_mask)
        for layer in self.fusion:
            m = layer(m, m_mask)
        return m[:, 0]


def _specs_c(cfg):
    specs = {"fbank": InputSpec("fbank128", "sequence", "fbank_dim", "fbank_mask")}
    if cfg.use_text:
        specs["phonemes"] = InputSpec("phonemes", "phonemes", "phoneme_vocab", "glove_mask")
        specs["glove"] = InputSpec("glove", "sequence", "glove_dim", "glove_mask")
    return specs


def _example_c(cfg, batch_size, gen):
    lf = random_lengths(batch_size, 48, gen, min_len=12)
    lw = random_lengths(batch_size, 7, gen, min_len=2)
    fbank, fbank_mask = random_sequence(lf, cfg.fbank_dim, gen)
    if not cfg.use_text:
        return {"fbank": fbank, "fbank_mask": fbank_mask}
    glove, glove_mask = random_sequence(lw, cfg.glove_dim, gen)
    n_phon = torch.randint(1, 7, (batch_size, int(lw.max())), generator=gen)
    n_phon = n_phon.masked_fill(glove_mask, 0)
    phon_mask = lengths_to_mask(n_phon.flatten(), 6).view(batch_size, -1, 6)
    phonemes = torch.randint(1, cfg.phoneme_vocab, phon_mask.shape, generator=gen).masked_fill(phon_mask, 0)
    return {
        "fbank": fbank,
        "fbank_mask": fbank_mask,
        "phonemes": phonemes,
        "glove": glove,
        "glove_mask": glove_mask,
    }


@register_model(
    "multilevel_transformer",
    train=TRAIN_C,
    paper={"title": TITLE_C, "wa": 73.0, "ua": 74.1, "protocol": PROTOCOL_C, "row": "multilevel, highway"},
    fold_plan="session_3_1_1",
    description="Multilevel transformer: fbank + phoneme CNN + GloVe, Transformer-TTS-style fusion",
)
class MultilevelTransformer(PaperModel):
    """Multilevel transformer (see module docstring).

    >>> from models import create_model, example_batch
    >>> kw = dict(fbank_dim=8, glove_dim=6, phoneme_vocab=10, phoneme_filters=4, hidden=8, n_heads=2, d_ff=16,
    ...           prenet_hidden=8)
    >>> create_model("multilevel_transformer", **kw).eval()(**example_batch("multilevel_transformer", **kw)).shape
    torch.Size([2, 4])
    """

    Config = MultilevelConfig
    output_layer = "head"
    input_specs = staticmethod(_specs_c)
    example_batch = staticmethod(_example_c)

    def __init__(self, config: MultilevelConfig, num_classes: int = 4):
        super().__init__(config, num_classes)
        self.encoder = MultilevelEncoder(config)
        self.head = nn.Linear(config.hidden, num_classes)

    def forward(self, fbank, phonemes=None, glove=None, fbank_mask=None, glove_mask=None) -> torch.Tensor:
        """``fbank`` (B, T, fbank_dim), ``phonemes`` (B, W, P) long (0 = pad), ``glove`` (B, W, glove_dim),
        masks (B, T)/(B, W) True = pad → logits (B, num_classes). ``use_text=False``: ``fbank`` alone."""
        return self.head(self.encoder(fbank, phonemes, glove, fbank_mask, glove_mask))


@dataclass
class MultigranularityConfig(MultilevelConfig):
    """Multilevel config + the BERT CLS branch (P: BERT-base, 768-d). Projection sizes NF."""

    bert_dim: int = 768  # P
    bert_proj: int = 128  # NF
    multilevel_proj: int = 128  # NF
    head_dropout: float = 0.1  # NF


@register_model(
    "multigranularity",
    train=TRAIN_C,
    paper={
        "title": TITLE_C,
        "wa": 74.5,
        "ua": 75.0,
        "protocol": PROTOCOL_C,
        "row": "multi-granularity (with BERT)",
        # stored features are frozen: reports say so on every run of this model
        "deviations": ["BERT CLS vectors are frozen features; the paper fine-tunes BERT"],
    },
    fold_plan="session_3_1_1",
    description="Multilevel transformer CLS + BERT CLS, late fusion",
)
class Multigranularity(PaperModel):
    """Multi-granularity model (P 3.2, Fig. 2): multilevel CLS ⊕ BERT CLS → FC.

    >>> from models import create_model, example_batch
    >>> kw = dict(fbank_dim=8, glove_dim=6, phoneme_vocab=10, phoneme_filters=4, hidden=8, n_heads=2, d_ff=16,
    ...           prenet_hidden=8, bert_dim=12, bert_proj=4, multilevel_proj=4)
    >>> create_model("multigranularity", **kw).eval()(**example_batch("multigranularity", **kw)).shape
    torch.Size([2, 4])
    """

    Config = MultigranularityConfig
    output_layer = "head.1"

    @staticmethod
    def input_specs(cfg):
        if not cfg.use_text:
            return _specs_c(cfg)
        return dict(_specs_c(cfg), bert_cls=InputSpec("bert_cls", "vector", "bert_dim"))

    @staticmethod
    def example_batch(cfg, batch_size, gen):
        batch = _example_c(cfg, batch_size, gen)
        if cfg.use_text:
            batch["bert_cls"] = torch.randn(batch_size, cfg.bert_dim, generator=gen)
        return batch

    def __init__(self, config: MultigranularityConfig, num_classes: int = 4):
        super().__init__(config, num_classes)
        c = config
        self.encoder = MultilevelEncoder(c)
        self.multilevel_proj = nn.Sequential(nn.Linear(c.hidden, c.multilevel_proj), nn.ReLU())
        bert = c.bert_proj if c.use_text else 0
        if c.use_text:
            self.bert_proj = nn.Sequential(nn.Linear(c.bert_dim, c.bert_proj), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(c.head_dropout), nn.Linear(c.multilevel_proj + bert, num_classes))

    def forward(self, fbank, phonemes=None, glove=None, bert_cls=None, fbank_mask=None, glove_mask=None):
        """As :class:`MultilevelTransformer` plus ``bert_cls`` (B, bert_dim) → logits (B, num_classes);
        ``use_text=False``: ``fbank`` alone (no BERT branch either)."""
        z = self.multilevel_proj(self.encoder(fbank, phonemes, glove, fbank_mask, glove_mask))
        if not self.config.use_text:
            return self.head(z)
        if bert_cls is None:
            raise ValueError("multigranularity: use_text=True needs the 'bert_cls' input")
        return self.head(torch.cat([z, self.bert_proj(bert_cls)], dim=-1))
