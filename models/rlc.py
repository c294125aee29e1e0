"""Paper D: Li et al. (IJCAI 2019), "Towards Discriminative Representation Learning for Speech Emotion
Recognition" — the RLC: residual 1-D CNN with multi-head self-attention, then GCA-LSTM.

Sources: the paper (P) and the authors' TensorFlow code ``thuhcsi/IJCAI2019-DRL4SER`` (C,
``emotion_inferring/model/modules.py``, ``GCM.py``, ``SelfAttention.py``).

* Residual CNN (C ``Stack_CNN_blocks``): conv1d(32, k10, s2, valid) → block(64, k5, no SA) → block(128, k5, SA)
  → block(256, k3, SA) → block(512, k3, SA). Block: x0 = conv1d(F, k, stride, valid);
  L(x) = conv1d(F, k, same) → BN → ReLU → Dropout 0.5; m = x0 + L(SA(L(x0))); out = m + L(SA(L(m))), SA
  with its own residual add. Strides: the **paper** says every one of the 5 groups has stride 2 (160 ms
  granularity at 5 ms frames) — our default ``strides=(2, 2, 2, 2, 2)``; the code uses (2, 2, 2, 1, 1).
* Self-attention: 4 heads, hidden = channels, no-bias Q/K/V projections, attention dropout 0.1, residual
  add, no LayerNorm (C). Weights: paper = standard softmax(QKᵀ/√d) (default); ``sa_sigmoid=True`` gives the
  code's softmax(sigmoid(QKᵀ/√d) + padding bias). We keep an output projection W^O (P eq. 3).
* GCA-LSTM (P eq. 4-12, C ``GCA_LSTM``): LSTM1 (256) → LayerNorm → h; F⁰ = h at the last valid step; for
  I = 3 iterations: e_n = w₂ᵀ tanh(W₁[h_n; F]) (no biases, C); r = softmax over valid steps, then min-max
  normalised to [0, 1] (ε-guarded); LSTM2 (256, hand-written cell, weights shared across iterations, zero
  initial state) with c_n = f⊙c_{n−1}⊙(1−r_n) + i⊙tanh(j)⊙r_n (eq. 11); F = ReLU(W_F[h2_N; F]) (no bias, C).
  The code also feeds r as an extra LSTM2 input; the paper does not, nor do we.
* Text branch (``use_text``, P 3.4): Word2Vec 300-d → one LSTM (256, P "each LSTM contains 256 units") →
  last valid hidden state, concatenated with F^(I). (C: 2 BiLSTM 128.)
* Classifier: P "three stacked dense layers, each 256 units" → 3 × [Linear 256 → ReLU] (dropout 0.5 after the
  first, C) → Linear(num_classes). (C: FC256 → Dropout → FC256 → FC4.)

Inputs: ``lld`` (B, T, 17) + ``lld_mask``; with ``use_text``: ``text`` (B, W, 300) + ``text_mask``.
All convolutions see zeros at padded frames, lengths are tracked through every stride, attention and
softmaxes are masked and the LSTMs stop at each item's last valid step, so padding never changes eval-mode
logits. In training, BatchNorm's batch statistics include padded frames (as in C) unless
``masked_batchnorm=True`` (valid frames only, :class:`models.blocks.MaskedBatchNorm1d`; a small-corpus setting).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.blocks import (
    MaskedBatchNorm1d,
    conv_out_lengths,
    last_valid,
    lengths_to_mask,
    mask_to_lengths,
    masked_mean,
    run_lstm,
    zero_padded,
)
from models.registry import InputSpec, PaperModel, random_lengths, random_sequence, register_model


class ConvSelfAttention(nn.Module):
    """Multi-head self-attention over (B, T, C) with residual add (C ``self_attention_block``)."""

    def __init__(self, channels: int, heads: int = 4, dropout: float = 0.1, sigmoid: bool = False):
        super().__init__()
        if channels % heads:
            raise ValueError(f"rlc: channels {channels} not divisible by {heads} heads")
        self.q = nn.Linear(channels, channels, bias=False)
        self.k = nn.Linear(channels, channels, bias=False)
        self.v = nn.Linear(channels, channels, bias=False)
        self.o = nn.Linear(channels, channels, bias=False)
        self.h, self.d, self.sigmoid = heads, channels // heads, sigmoid
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        B, T, C = x.shape

        def split(t):
            return t.view(B, T, self.h, self.d).transpose(1, 2)

        s = split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) * self.d**-0.5
        if self.sigmoid:
            s = torch.sigmoid(s)
        if mask is not None:
            s = s.masked_fill(mask.view(B, 1, 1, T), float("-inf"))
        w = self.drop(torch.softmax(s, dim=-1))
        out = (w @ split(self.v(x))).transpose(1, 2).reshape(B, T, C)
        return x + self.o(out)


class ResidualBlock(nn.Module):
    """x0 = conv(stride, valid); m = x0 + L(SA(L(x0))); out = m + L(SA(L(m))). ``(B, T, Cin) → (B, T', C)``."""

    def __init__(
        self, c_in, c, kernel, stride, use_sa, dropout=0.5, heads=4, att_dropout=0.1, sa_sigmoid=False,
        masked_batchnorm=False,
    ):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.down = nn.Conv1d(c_in, c, kernel, stride=stride)
        self.convs = nn.ModuleList([nn.Conv1d(c, c, kernel, padding="same") for _ in range(4)])
        self.bns = nn.ModuleList([MaskedBatchNorm1d(c) for _ in range(4)])
        self.masked_batchnorm = masked_batchnorm
        self.sas = nn.ModuleList(
            [ConvSelfAttention(c, heads, att_dropout, sa_sigmoid) for _ in range(2)] if use_sa else []
        )
        self.drop = nn.Dropout(dropout)

    def _L(self, i, x, mask):
        x = zero_padded(x, mask).transpose(1, 2)
        y = self.bns[i](self.convs[i](x), mask if self.masked_batchnorm else None)
        return self.drop(torch.relu(y)).transpose(1, 2)

    def _SA(self, i, x, mask):
        return self.sas[i](x, mask) if len(self.sas) else x

    def forward(self, x, lengths):
        x0 = self.down(zero_padded(x, lengths_to_mask(lengths, x.size(1))).transpose(1, 2)).transpose(1, 2)
        lengths = conv_out_lengths(lengths, self.kernel, self.stride).clamp(min=1)
        mask = lengths_to_mask(lengths, x0.size(1))
        m = x0 + self._L(1, self._SA(0, self._L(0, x0, mask), mask), mask)
        out = m + self._L(3, self._SA(1, self._L(2, m, mask), mask), mask)
        return out, lengths


class GCALSTMCell(nn.Module):
    """LSTM2 cell with the informativeness gate r in the cell update (P eq. 11), written by hand.

    ``forward(x (B, D), r (B,), (h, c)) -> (h, c)``:
    gates i, j, f, o = split(W x + U h + b); c' = σ(f)⊙c⊙(1−r) + σ(i)⊙tanh(j)⊙r; h' = σ(o)⊙tanh(c').
    The forget-gate bias starts at 1 (C: TF BasicLSTMCell forget_bias=1.0).

    >>> cell = GCALSTMCell(3, 2)
    >>> h, c = cell(torch.randn(4, 3), torch.rand(4), (torch.zeros(4, 2), torch.zeros(4, 2)))
    >>> h.shape, c.shape
    (torch.Size([4, 2]), torch.Size([4, 2]))
    """

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.W = nn.Linear(input_size, 4 * hidden, bias=True)
        self.U = nn.Linear(hidden, 4 * hidden, bias=False)
        with torch.no_grad():
            self.W.bias.zero_()
            self.W.bias[2 * hidden : 3 * hidden].fill_(1.0)

    def forward(self, x, r, state):
        h, c = state
        i, j, f, o = (self.W(x) + self.U(h)).chunk(4, dim=-1)
        r = r.unsqueeze(-1)
        c_new = torch.sigmoid(f) * c * (1 - r) + torch.sigmoid(i) * torch.tanh(j) * r
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        return h_new, c_new


def informativeness_gate(e: torch.Tensor, mask: torch.Tensor | None, eps: float = 1e-8) -> torch.Tensor:
    """r = minmax(softmax_n(e_n)) over valid steps (P eq. 10 + min-max normalisation); padded steps get 0.

    ``e`` (B, N) → r (B, N) in [0, 1]; a constant score (zero range) gives r = 0 everywhere (ε guard).

    >>> informativeness_gate(torch.tensor([[0.0, 1.0, 2.0]]), None)
    tensor([[0.0000, 0.2689, 1.0000]])
    """
    if mask is not None:
        e = e.masked_fill(mask, float("-inf"))
    p = torch.softmax(e, dim=1)
    if mask is None:
        lo, hi = p.min(dim=1, keepdim=True).values, p.max(dim=1, keepdim=True).values
    else:
        lo = p.masked_fill(mask, float("inf")).min(dim=1, keepdim=True).values
        hi = p.masked_fill(mask, float("-inf")).max(dim=1, keepdim=True).values
    r = (p - lo) / (hi - lo + eps)
    if mask is not None:
        r = r.masked_fill(mask, 0.0)
    return r.clamp(0.0, 1.0)


class GCALSTM(nn.Module):
    """Global context-aware attention LSTM (P section 3.3, eq. 4-12; C ``GCA_LSTM``).

    ``forward(m (B, N, D), mask (B, N)) -> F^(I) (B, hidden)``. ``return_gates=True`` also returns the list
    of r per iteration (for analysis/tests).
    """

    def __init__(self, input_size: int, hidden: int = 256, iterations: int = 3):
        super().__init__()
        self.iterations = iterations
        self.lstm1 = nn.LSTM(input_size, hidden, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.W1 = nn.Linear(2 * hidden, hidden, bias=False)  # W_e2 in eq. 9
        self.w2 = nn.Linear(hidden, 1, bias=False)  # W_e1 in eq. 9
        self.cell = GCALSTMCell(hidden, hidden)
        self.WF = nn.Linear(2 * hidden, hidden, bias=False)  # eq. 12

    def refine(self, h, mask, F):
        """One iteration: gate r from (h, F), run LSTM2 over valid steps, return (F_new, r)."""
        B, N, H = h.shape
        e = self.w2(torch.tanh(self.W1(torch.cat([h, F.unsqueeze(1).expand(B, N, H)], dim=-1)))).squeeze(-1)
        r = informativeness_gate(e, mask)
        h2 = h.new_zeros(B, H)
        c2 = h.new_zeros(B, H)
        for n in range(N):
            h_new, c_new = self.cell(h[:, n], r[:, n], (h2, c2))
            if mask is not None:  # padded steps leave the state as it was, so h2 ends at the last valid step
                keep = mask[:, n].unsqueeze(-1)
                h_new = torch.where(keep, h2, h_new)
                c_new = torch.where(keep, c2, c_new)
            h2, c2 = h_new, c_new
        return torch.relu(self.WF(torch.cat([h2, F], dim=-1))), r

    def forward(self, m, mask=None, return_gates=False):
        h, _ = run_lstm(self.lstm1, m, mask)
        h = self.norm(h)
        F = last_valid(h, mask)
        gates = []
        for _ in range(self.iterations):
            F, r = self.refine(h, mask, F)
            gates.append(r)
        return (F, gates) if return_gates else F


@dataclass
class RLCConfig:
    """RLC config: P values (17 LLDs, 4 heads, LSTM 256, I = 3, 3 dense layers of 256, stride 2 in all five
    groups), C values where the paper is silent (channels, kernels, which blocks use SA, dropouts)."""

    lld_dim: int = 17  # P
    stem_channels: int = 32  # C
    stem_kernel: int = 10  # C
    channels: tuple[int, ...] = (64, 128, 256, 512)  # C
    kernels: tuple[int, ...] = (5, 5, 3, 3)  # C
    use_sa: tuple[bool, ...] = (False, True, True, True)  # C
    strides: tuple[int, ...] = (2, 2, 2, 2, 2)  # P (stem + 4 blocks); C: (2, 2, 2, 1, 1)
    heads: int = 4  # P/C
    conv_dropout: float = 0.5  # C
    attention_dropout: float = 0.1  # C
    sa_sigmoid: bool = False  # P: plain softmax; True = the code's softmax(sigmoid(.))
    lstm_hidden: int = 256  # P
    gca_iterations: int = 3  # P
    use_text: bool = False  # P: A (audio only, default) or A+L
    text_dim: int = 300  # P Word2Vec
    text_hidden: int = 256  # P
    dense_units: int = 256  # P
    dense_layers: int = 3  # P
    dense_dropout: float = 0.5  # C
    masked_batchnorm: bool = False  # P/C: batch statistics over padded frames too; True: valid frames only
    #: "gca" = the paper's GCA-LSTM. "mean" = a DIAGNOSTIC that replaces it with the mean of the CNN trunk's
    #: valid frames (measures what the GCA-LSTM adds on a corpus); not the RLC, flagged in every run's provenance
    readout: str = "gca"


@register_model(
    "rlc",
    train={
        "optimizer": "adam",
        "lr": 1e-3,  # P; code 1e-4
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "batch_size": 128,  # P
        "epochs": 100,  # NF
        "schedule": None,
        "grad_clip": 1.0,  # C
        "select_on": "val_ua",  # the paper reports UA/F1 only
        "loss": "cross_entropy",
    },
    paper={
        "title": "Towards Discriminative Representation Learning for Speech Emotion Recognition (Li et al., IJCAI 2019)",
        "wa": None,
        "ua": 69.4,
        "f1": 0.693,
        "ua_with_text": 79.2,
        "f1_with_text": 0.791,
        "params_m": 9.11,  # Table 2, S3
        "protocol": "random 8:1:1 train/val/test, 10-fold CV",
        "row": "RLC (S3), audio only",
    },
    fold_plan="random_811_10fold",
    description="RLC: residual CNN + MHSA + GCA-LSTM on 17 LLDs (optional Word2Vec LSTM)",
)
class RLC(PaperModel):
    """Residual CNN + self-attention + GCA-LSTM (+ optional text LSTM) classifier (see module docstring).

    >>> from models import create_model, example_batch
    >>> kw = dict(stem_channels=4, channels=[8, 8], kernels=[3, 3], use_sa=[False, True], strides=[2, 2, 2],
    ...           lstm_hidden=8, dense_units=8, use_text=True, text_dim=5, text_hidden=4)
    >>> create_model("rlc", **kw).eval()(**example_batch("rlc", **kw)).shape
    torch.Size([2, 4])
    """

    Config = RLCConfig

    @property
    def output_layer(self) -> str:
        return f"classifier.{len(self.classifier) - 1}"  # after the optional dense layers

    @staticmethod
    def input_specs(cfg):
        specs = {"lld": InputSpec("lld17", "sequence", "lld_dim", "lld_mask")}
        if cfg.use_text:
            specs["text"] = InputSpec("word2vec", "sequence", "text_dim", "text_mask", optional=True)
        return specs

    @staticmethod
    def config_deviations(cfg):
        return [] if cfg.readout == "gca" else [f"readout {cfg.readout!r} replaces the paper's GCA-LSTM (a diagnostic)"]

    @staticmethod
    def example_batch(cfg, batch_size, gen):
        lengths = random_lengths(batch_size, 160, gen, min_len=80)
        lld, lld_mask = random_sequence(lengths, cfg.lld_dim, gen)
        batch = {"lld": lld, "lld_mask": lld_mask}
        if cfg.use_text:
            lw = random_lengths(batch_size, 8, gen, min_len=2)
            batch["text"], batch["text_mask"] = random_sequence(lw, cfg.text_dim, gen)
        return batch

    def __init__(self, config: RLCConfig, num_classes: int = 4):
        super().__init__(config, num_classes)
        c = config
        n = len(c.channels)
        if not (len(c.kernels) == len(c.use_sa) == n and len(c.strides) == n + 1):
            raise ValueError(
                "rlc: channels, kernels, use_sa need one entry per block and strides one more (stem)"
            )
        self.stem = nn.Conv1d(c.lld_dim, c.stem_channels, c.stem_kernel, stride=c.strides[0])
        blocks, c_in = [], c.stem_channels
        for ch, k, sa, s in zip(c.channels, c.kernels, c.use_sa, c.strides[1:], strict=True):
            blocks.append(
                ResidualBlock(c_in, ch, k, s, sa, c.conv_dropout, c.heads, c.attention_dropout, c.sa_sigmoid,
                              c.masked_batchnorm)
            )
            c_in = ch
        self.blocks = nn.ModuleList(blocks)
        if c.readout not in ("gca", "mean"):
            raise ValueError(f"rlc: readout must be 'gca' (the paper's GCA-LSTM) or 'mean' (diagnostic), got {c.readout!r}")
        self.gca = GCALSTM(c_in, c.lstm_hidden, c.gca_iterations) if c.readout == "gca" else None
        feat = c.lstm_hidden if self.gca is not None else c_in
        if c.use_text:
            self.text_lstm = nn.LSTM(c.text_dim, c.text_hidden, batch_first=True)
            feat += c.text_hidden
        layers = []
        for i in range(c.dense_layers):
            layers += [nn.Linear(feat if i == 0 else c.dense_units, c.dense_units), nn.ReLU()]
            if i == 0:
                layers.append(nn.Dropout(c.dense_dropout))
        layers.append(nn.Linear(c.dense_units if c.dense_layers else feat, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, lld, lld_mask=None, text=None, text_mask=None) -> torch.Tensor:
        """``lld`` (B, T, lld_dim), ``lld_mask`` (B, T) True = pad; with ``use_text``: ``text`` (B, W, text_dim),
        ``text_mask`` (B, W) → logits (B, num_classes)."""
        B, T, _ = lld.shape
        lengths = mask_to_lengths(lld_mask, B, T, lld.device)
        x = self.stem(zero_padded(lld, lld_mask).transpose(1, 2)).transpose(1, 2)
        lengths = conv_out_lengths(lengths, self.config.stem_kernel, self.config.strides[0]).clamp(min=1)
        for block in self.blocks:
            x, lengths = block(x, lengths)
        mask = lengths_to_mask(lengths, x.size(1))
        z = self.gca(x, mask) if self.gca is not None else masked_mean(x, mask)
        if self.config.use_text:
            if text is None:
                raise ValueError("rlc: use_text=True needs the 'text' (word2vec) input")
            _, h_n = run_lstm(self.text_lstm, text, text_mask)
            z = torch.cat([z, h_n[-1]], dim=-1)
        return self.classifier(z)
