"""Paper A: He, Minematsu, Saito (2021), "Effective Integration of Transformer for Network-based SER".

Models: ``ilt`` (CNN → parallel BiLSTM+attention-pooling and Transformer, fused), ``cat`` (cross attention
transformer between a CNN branch and a conv1d→BiLSTM branch), and the paper's baselines
``cnn_transformer`` and ``cnn_lstm_transformer``.

No public code exists. Everything structural follows the paper (section 2); **all layer sizes are NF (our
choice)**: 3 CNN blocks (16/32/64 channels, 3×3 kernels, 2×2 average pooling, dropout 0.2), d_model 128,
4 heads, 2 layers, FFN 512, dropout 0.1, BiLSTM 64 units per direction (so O_LSTM and O_Trans have the same
size for the ``plus`` fusions), Transformer output pooled by masked mean, ``plus`` α = 0.5.
The paper's CNN block is conv → BN → avg-pool → dropout; we add a ReLU after BN (NF: without it the stack
is linear).

Input: ``x`` (B, T, 40) log-Mel frames (the dataset pads/cuts to 750 frames = 7.5 s) and ``x_mask`` (B, T),
True = padding. Masks are honoured throughout (padded frames are zeroed before every convolution, packed
LSTMs, masked attention and pooling), so padding never changes an item's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.blocks import (
    AttentionPooling,
    TransformerLayer,
    TransformerStack,
    conv_out_lengths,
    lengths_to_mask,
    mask_to_lengths,
    masked_mean,
    run_lstm,
    zero_padded,
)
from models.registry import InputSpec, PaperModel, random_lengths, random_sequence, register_model

TITLE_A = "Effective Integration of Transformer for Network-based Speech Emotion Recognition (He et al. 2021)"
TRAIN_A = {
    "optimizer": "adam",
    "lr": 1e-4,
    "betas": [0.9, 0.99],
    "weight_decay": 0.0,
    "batch_size": 40,
    "epochs": 100,
    "schedule": None,
    "select_on": "val_wa",
    "loss": "cross_entropy",
    # dataset-side, recorded here so the flow can find it: white noise on train and val, SNR NF
    "noise_snr_db": 30.0,
    "fixed_frames": 750,
}
PROTOCOL_A = "random 0.55/0.25/0.2 train/val/test, 5 repetitions averaged (speaker-dependent)"
FOLD_PLAN_A = "random_55_25_20"


@dataclass
class CNNTransformerConfig:
    """Shared config of paper A's models. Every size here is NF (our choice); see the module docstring."""

    n_mels: int = 40  # input feature dim (P: 40 log-Mel bins)
    cnn_channels: tuple[int, ...] = (16, 32, 64)  # NF
    cnn_kernel: int = 3  # NF
    cnn_pool: int = 2  # NF (pool over freq and time)
    cnn_dropout: float = 0.2  # NF
    d_model: int = 128  # NF
    n_heads: int = 4  # NF
    d_ff: int = 512  # NF
    num_layers: int = 2  # NF
    dropout: float = 0.1  # NF
    lstm_hidden: int = 64  # NF, per direction
    positional_encoding: bool = True  # P: the baselines' best rows use PE


class CNNFrontEnd(nn.Module):
    """conv → BN → ReLU → avg-pool → dropout blocks over the (freq, time) image, then Linear to d_model.

    ``forward(x (B, T, F), mask (B, T)) -> (C (B, K, d_model), C_mask (B, K))``.
    """

    def __init__(self, cfg: CNNTransformerConfig):
        super().__init__()
        self.pool = cfg.cnn_pool
        blocks, c_in, freq = [], 1, cfg.n_mels
        for c in cfg.cnn_channels:
            blocks.append(
                nn.ModuleDict(
                    {
                        "conv": nn.Conv2d(c_in, c, cfg.cnn_kernel, padding=cfg.cnn_kernel // 2),
                        "bn": nn.BatchNorm2d(c),
                        "pool": nn.AvgPool2d(cfg.cnn_pool),
                        "drop": nn.Dropout(cfg.cnn_dropout),
                    }
                )
            )
            c_in, freq = c, freq // cfg.cnn_pool
        if freq < 1:
            raise ValueError(f"n_mels={cfg.n_mels} too small for {len(cfg.cnn_channels)} pooling blocks")
        self.blocks = nn.ModuleList(blocks)
        self.proj = nn.Linear(c_in * freq, cfg.d_model)

    def forward(self, x, mask):
        B, T, _ = x.shape
        lengths = mask_to_lengths(mask, B, T, x.device)
        h = x.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        for blk in self.blocks:
            # zero padded frames so the conv sees the same zeros as its own padding would give alone
            h = h.masked_fill(lengths_to_mask(lengths, h.size(-1)).view(B, 1, 1, -1), 0.0)
            h = torch.relu(blk["bn"](blk["conv"](h)))
            h = blk["drop"](blk["pool"](h))
            lengths = conv_out_lengths(lengths, self.pool, self.pool)
        lengths = lengths.clamp(min=1)  # an utterance shorter than the total pooling keeps one step
        h = h.permute(0, 3, 1, 2).flatten(2)  # (B, K, C·F')
        return self.proj(h), lengths_to_mask(lengths, h.size(1))


def _example(cfg, batch_size, gen, max_len=96):
    lengths = random_lengths(batch_size, max_len, gen, min_len=max_len // 2)
    x, mask = random_sequence(lengths, cfg.n_mels, gen)
    return {"x": x, "x_mask": mask}


def _specs_a(cfg):
    return {"x": InputSpec("logmel40", "sequence", "n_mels", "x_mask")}


class _PaperAModel(PaperModel):
    output_layer = "head.1"  # head = Dropout → Linear, on the pooled representation
    input_specs = staticmethod(_specs_a)
    example_batch = staticmethod(_example)


@register_model(
    "cnn_transformer",
    train=TRAIN_A,
    paper={"title": TITLE_A, "wa": 66.91, "ua": 67.60, "protocol": PROTOCOL_A, "row": "baseline1, PE=True"},
    fold_plan=FOLD_PLAN_A,
    description="baseline 1 of paper A: CNN → Transformer → mean pool → FC",
)
class CNNTransformer(_PaperAModel):
    """Baseline 1 (P, section 3.3): ILT with the LSTM removed: CNN → Transformer → masked mean → FC.

    >>> from models import create_model, example_batch
    >>> kw = dict(d_model=16, d_ff=32, cnn_channels=[4, 4])
    >>> create_model("cnn_transformer", **kw).eval()(**example_batch("cnn_transformer", **kw)).shape
    torch.Size([2, 4])
    """

    Config = CNNTransformerConfig

    def __init__(self, config: CNNTransformerConfig, num_classes: int = 4):
        super().__init__(config, num_classes)
        c = config
        self.cnn = CNNFrontEnd(c)
        self.transformer = TransformerStack(
            c.d_model, c.n_heads, c.d_ff, c.num_layers, c.dropout, c.positional_encoding
        )
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.d_model, num_classes))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, T, n_mels), ``x_mask`` (B, T) True = pad → logits (B, num_classes)."""
        h, m = self.cnn(x, x_mask)
        return self.head(masked_mean(self.transformer(h, m), m))


@register_model(
    "cnn_lstm_transformer",
    train=TRAIN_A,
    paper={"title": TITLE_A, "wa": 66.47, "ua": 67.52, "protocol": PROTOCOL_A, "row": "baseline2, PE=True"},
    fold_plan=FOLD_PLAN_A,
    description="baseline 2 of paper A: CNN → BiLSTM → Transformer → mean pool → FC",
)
class CNNLSTMTransformer(_PaperAModel):
    """Baseline 2 (P, section 3.3): a BiLSTM inserted between the CNN and the Transformer.

    >>> from models import create_model, example_batch
    >>> kw = dict(d_model=16, d_ff=32, lstm_hidden=8, cnn_channels=[4, 4])
    >>> create_model("cnn_lstm_transformer", **kw).eval()(**example_batch("cnn_lstm_transformer", **kw)).shape
    torch.Size([2, 4])
    """

    Config = CNNTransformerConfig

    def __init__(self, config: CNNTransformerConfig, num_classes: int = 4):
        super().__init__(config, num_classes)
        c = config
        self.cnn = CNNFrontEnd(c)
        self.lstm = nn.LSTM(c.d_model, c.lstm_hidden, batch_first=True, bidirectional=True)
        # BiLSTM output (2·lstm_hidden) is projected only when it differs from d_model
        self.lstm_proj = (
            nn.Linear(2 * c.lstm_hidden, c.d_model) if 2 * c.lstm_hidden != c.d_model else nn.Identity()
        )
        self.transformer = TransformerStack(
            c.d_model, c.n_heads, c.d_ff, c.num_layers, c.dropout, c.positional_encoding
        )
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.d_model, num_classes))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, T, n_mels), ``x_mask`` (B, T) True = pad → logits (B, num_classes)."""
        h, m = self.cnn(x, x_mask)
        h, _ = run_lstm(self.lstm, h, m)
        h = self.transformer(self.lstm_proj(h), m)
        return self.head(masked_mean(h, m))


@dataclass
class ILTConfig(CNNTransformerConfig):
    """ILT config. ``fusion``: ``concat`` (eq. 12), ``plus`` (eq. 13, fixed ``alpha``; α NF = 0.5) or
    ``trainable_plus`` (eq. 14-16, W_A, W_B scalars through softmax, init equal). Paper's best:
    trainable_plus without PE (Table 1), which are the defaults."""

    fusion: str = "trainable_plus"
    alpha: float = 0.5  # NF, used by fusion="plus"
    positional_encoding: bool = False  # P: best ILT runs without PE


@register_model(
    "ilt",
    train=TRAIN_A,
    paper={
        "title": TITLE_A,
        "wa": 67.56,
        "ua": 68.63,
        "protocol": PROTOCOL_A,
        "row": "ILT trainable plus, PE=False",
    },
    fold_plan=FOLD_PLAN_A,
    description="ILT: CNN → (BiLSTM + attention pooling) ∥ Transformer, fused",
)
class ILT(_PaperAModel):
    """Integrate LSTM with Transformer (P, section 2.2, Fig. 1, eq. 5-16).

    >>> from models import create_model, example_batch
    >>> kw = dict(d_model=16, d_ff=32, lstm_hidden=8, cnn_channels=[4, 4], fusion="concat")
    >>> create_model("ilt", **kw).eval()(**example_batch("ilt", **kw)).shape
    torch.Size([2, 4])
    """

    Config = ILTConfig
    FUSIONS = ("concat", "plus", "trainable_plus")

    def __init__(self, config: ILTConfig, num_classes: int = 4):
        super().__init__(config, num_classes)
        c = config
        if c.fusion not in self.FUSIONS:
            raise ValueError(f"ilt: fusion must be one of {self.FUSIONS}, got {c.fusion!r}")
        if c.fusion != "concat" and 2 * c.lstm_hidden != c.d_model:
            raise ValueError(
                f"ilt: fusion={c.fusion!r} adds O_LSTM and O_Trans, so 2*lstm_hidden must equal d_model"
            )
        self.cnn = CNNFrontEnd(c)
        self.lstm = nn.LSTM(c.d_model, c.lstm_hidden, batch_first=True, bidirectional=True)
        self.attn_pool = AttentionPooling(2 * c.lstm_hidden)
        self.transformer = TransformerStack(
            c.d_model, c.n_heads, c.d_ff, c.num_layers, c.dropout, c.positional_encoding
        )
        if c.fusion == "trainable_plus":
            self.fusion_logits = nn.Parameter(torch.zeros(2))  # [W_A, W_B]
        out_dim = 2 * c.lstm_hidden + c.d_model if c.fusion == "concat" else c.d_model
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(out_dim, num_classes))

    def fusion_weights(self) -> torch.Tensor:
        """(α_LSTM, α_Trans): the paper learned ≈ (0.65, 0.35)."""
        if self.config.fusion == "trainable_plus":
            return torch.softmax(self.fusion_logits, dim=0)
        a = self.config.alpha
        return torch.tensor([a, 1.0 - a])

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, T, n_mels), ``x_mask`` (B, T) True = pad → logits (B, num_classes)."""
        h, m = self.cnn(x, x_mask)
        lstm_out, _ = run_lstm(self.lstm, h, m)
        o_lstm = self.attn_pool(lstm_out, m)
        o_trans = masked_mean(self.transformer(h, m), m)
        if self.config.fusion == "concat":
            fused = torch.cat([o_lstm, o_trans], dim=-1)
        else:
            w = self.fusion_weights().to(device=h.device, dtype=h.dtype)
            fused = w[0] * o_lstm + w[1] * o_trans
        return self.head(fused)


@dataclass
class CATConfig(CNNTransformerConfig):
    """CAT config. The length-reducing conv1d before the LSTM (P) has NF kernel 4 / stride 4 / ReLU.
    ``cnn_to_lstm_only`` / ``lstm_to_cnn_only`` are the paper's ablations (Table 2). Each cross-attention
    transformer is ``num_layers`` cross-attention+FFN layers (NF); PE off (NF)."""

    reduce_kernel: int = 4  # NF
    reduce_stride: int = 4  # NF
    cnn_to_lstm_only: bool = False
    lstm_to_cnn_only: bool = False
    positional_encoding: bool = False  # NF


@register_model(
    "cat",
    train=TRAIN_A,
    paper={"title": TITLE_A, "wa": 68.10, "ua": 69.25, "protocol": PROTOCOL_A, "row": "CAT"},
    fold_plan=FOLD_PLAN_A,
    description="CAT: cross attention transformers CNN→LSTM and LSTM→CNN, pooled and added",
)
class CAT(_PaperAModel):
    """Cross Attention Transformer (P, section 2.3, Fig. 2).

    CtoL: Q = H_C (CNN), K = V = H_L (LSTM); LtoC: Q = H_L, K = V = H_C. The two outputs have different
    lengths, so each is pooled over time (masked mean, NF) before they are added → FC.

    >>> from models import create_model, example_batch
    >>> kw = dict(d_model=16, d_ff=32, lstm_hidden=8, cnn_channels=[4, 4])
    >>> create_model("cat", **kw).eval()(**example_batch("cat", **kw)).shape
    torch.Size([2, 4])
    """

    Config = CATConfig

    def __init__(self, config: CATConfig, num_classes: int = 4):
        super().__init__(config, num_classes)
        c = config
        if c.cnn_to_lstm_only and c.lstm_to_cnn_only:
            raise ValueError("cat: cnn_to_lstm_only and lstm_to_cnn_only cannot both be true")
        self.cnn = CNNFrontEnd(c)
        self.reduce = nn.Conv1d(c.n_mels, c.d_model, c.reduce_kernel, stride=c.reduce_stride)
        self.lstm = nn.LSTM(c.d_model, c.lstm_hidden, batch_first=True, bidirectional=True)
        self.lstm_proj = (
            nn.Linear(2 * c.lstm_hidden, c.d_model) if 2 * c.lstm_hidden != c.d_model else nn.Identity()
        )

        def cross():
            return nn.ModuleList(
                [
                    TransformerLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, cross=True, self_attn=False)
                    for _ in range(c.num_layers)
                ]
            )

        # an ablated direction is not built at all, so every parameter of the model learns
        self.c_to_l = None if c.lstm_to_cnn_only else cross()
        self.l_to_c = None if c.cnn_to_lstm_only else cross()
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.d_model, num_classes))

    @staticmethod
    def _run(layers, q, q_mask, kv, kv_mask):
        for layer in layers:
            q = layer(q, q_mask, kv, kv_mask)
        return masked_mean(q, q_mask)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, T, n_mels), ``x_mask`` (B, T) True = pad → logits (B, num_classes)."""
        B, T, _ = x.shape
        h_c, m_c = self.cnn(x, x_mask)
        lengths = mask_to_lengths(x_mask, B, T, x.device)
        r = torch.relu(self.reduce(zero_padded(x, x_mask).transpose(1, 2))).transpose(1, 2)
        l_len = conv_out_lengths(lengths, self.config.reduce_kernel, self.config.reduce_stride).clamp(min=1)
        m_l = lengths_to_mask(l_len, r.size(1))
        h_l, _ = run_lstm(self.lstm, r, m_l)
        h_l = self.lstm_proj(h_l)
        out = 0.0
        if self.c_to_l is not None:
            out = out + self._run(self.c_to_l, h_c, m_c, h_l, m_l)
        if self.l_to_c is not None:
            out = out + self._run(self.l_to_c, h_l, m_l, h_c, m_c)
        return self.head(out)
