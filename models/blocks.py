"""Shared building blocks for the paper models.

Conventions used everywhere in :mod:`models`:

* tensors are batch-first: sequences are ``(B, T, D)``;
* a padding mask is a bool tensor ``(B, T)`` with **True = padding** (PyTorch ``key_padding_mask``);
* every block that mixes time steps (attention, pooling, convolution) honours the mask so that an item's
  output does not depend on how much padding the batch adds after it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# ----------------------------------------------------------------------------------------------- masks


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Lengths ``(B,)`` → padding mask ``(B, T)``, True where padded.

    >>> lengths_to_mask(torch.tensor([1, 3]))
    tensor([[False,  True,  True],
            [False, False, False]])
    """
    lengths = lengths.long()
    max_len = int(lengths.max().item()) if max_len is None else int(max_len)
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) >= lengths.unsqueeze(1)


def mask_to_lengths(mask: torch.Tensor | None, batch: int, max_len: int, device=None) -> torch.Tensor:
    """Padding mask ``(B, T)`` (or None = no padding) → lengths ``(B,)`` (long).

    >>> mask_to_lengths(torch.tensor([[False, True], [False, False]]), 2, 2)
    tensor([1, 2])
    """
    if mask is None:
        return torch.full((batch,), max_len, dtype=torch.long, device=device)
    return (~mask).sum(dim=1).long()


def conv_out_lengths(lengths: torch.Tensor, kernel: int, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """Valid output length of a conv/pool for each input length (PyTorch floor formula).

    An output step is valid iff its window starts inside the valid input (zeros beyond it are exactly
    the conv's own zero padding when the caller zeroes padded frames first).

    >>> conv_out_lengths(torch.tensor([10, 7]), kernel=3, stride=2, padding=1)
    tensor([5, 4])
    """
    out = torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1
    return out.clamp(min=0)


def zero_padded(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero padded time steps of ``x`` ``(B, T, ...)`` so convolutions see the same zeros as alone.

    >>> zero_padded(torch.ones(1, 2, 1), torch.tensor([[False, True]])).flatten().tolist()
    [1.0, 0.0]
    """
    if mask is None:
        return x
    shape = mask.shape + (1,) * (x.dim() - 2)
    return x.masked_fill(mask.view(shape), 0.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
    """Mean of ``x`` ``(B, T, D)`` over time, ignoring padded steps. Returns ``(B, D)``.

    >>> masked_mean(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[False, False, True]]))
    tensor([[2.]])
    """
    if mask is None:
        return x.mean(dim=dim)
    keep = (~mask).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(dim=dim) / keep.sum(dim=dim).clamp(min=1.0)


def last_valid(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Vector at each item's last non-padded step: ``(B, T, D)`` → ``(B, D)``.

    >>> last_valid(torch.arange(6.).view(1, 3, 2), torch.tensor([[False, False, True]]))
    tensor([[2., 3.]])
    """
    lengths = mask_to_lengths(mask, x.size(0), x.size(1), x.device)
    idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, x.size(-1))
    return x.gather(1, idx).squeeze(1)


# ----------------------------------------------------------------------------------------------- layers


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """Sinusoidal positional encoding (Vaswani et al. 2017, eq. 3-4 of He et al. 2021): ``(max_len, dim)``.

    >>> abs(sinusoidal_table(2, 4)[1, 0].item() - math.sin(1.0)) < 1e-6
    True
    """
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    i = torch.arange(0, dim, 2, dtype=torch.float32)
    div = torch.exp(-math.log(10000.0) * i / dim)
    pe = torch.zeros(max_len, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to ``x`` ``(B, T, D)``; grows the table on demand (no parameters).

    >>> SinusoidalPositionalEncoding(4)(torch.zeros(1, 3, 4)).shape
    torch.Size([1, 3, 4])
    """

    def __init__(self, dim: int, max_len: int = 2048, scale: float = 1.0):
        super().__init__()
        self.dim = dim
        self.scale = scale
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)

    def encoding(self, length: int) -> torch.Tensor:
        if length > self.table.size(0):
            self.table = sinusoidal_table(2 * length, self.dim).to(self.table.device)
        return self.table[:length]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.encoding(x.size(1)).to(x.dtype).unsqueeze(0)


class AttentionPooling(nn.Module):
    """β_t = softmax_t(wᵀh_t) over valid steps, O = Σ_t β_t h_t (He et al. 2021, eq. 9-10).

    Shapes: ``x`` (B, T, D), ``mask`` (B, T) True = pad → (B, D).

    >>> AttentionPooling(3)(torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.bool)).shape
    torch.Size([2, 3])
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        e = self.score(x).squeeze(-1)
        if mask is not None:
            e = e.masked_fill(mask, float("-inf"))
        beta = torch.softmax(e, dim=1)
        return torch.bmm(beta.unsqueeze(1), x).squeeze(1)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics (and running averages) come from valid frames only.

    Plain BatchNorm over a padded batch counts padded frames as data: the batch mean and variance, and so the
    running statistics used at evaluation, depend on how much padding the batch carried. With ``mask=None`` or
    in eval mode it is exactly ``nn.BatchNorm1d``. Shapes: ``x`` (B, C, T), ``mask`` (B, T) True = pad → (B, C, T).

    >>> bn = MaskedBatchNorm1d(1, affine=False)
    >>> x = torch.tensor([[[1.0, 3.0, 0.0, 0.0]]])
    >>> bn(x, torch.tensor([[False, False, True, True]]))[0, 0, :2].round(decimals=3).tolist()  # mean 2, var 1
    [-1.0, 1.0]
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None or not self.training:
            return super().forward(x)
        keep = (~mask).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        n = keep.sum().clamp(min=1.0)
        mean = (x * keep).sum(dim=(0, 2)) / n
        var = ((x - mean.view(1, -1, 1)) ** 2 * keep).sum(dim=(0, 2)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(unbiased.detach(), m)
        y = (x - mean.view(1, -1, 1)) * torch.rsqrt(var.view(1, -1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1) + self.bias.view(1, -1, 1)
        return y


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, mask: torch.Tensor | None):
    """Run a batch-first ``nn.LSTM`` on the valid steps only (packed), so padding never enters the state.

    Returns ``(outputs (B, T, H·dirs) with zeros at padded steps, h_n (layers·dirs, B, H))``.
    """
    if mask is None:
        out, (h_n, _) = lstm(x)
        return out, h_n
    lengths = mask_to_lengths(mask, x.size(0), x.size(1)).clamp(min=1).cpu()
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    return out, h_n


class TransformerLayer(nn.Module):
    """Post-LN transformer layer (Vaswani et al. 2017): self-attention, optional cross-attention, FFN.

    ``forward(x, x_mask, memory=None, memory_mask=None)``: ``x`` (B, T, D), ``memory`` (B, S, D) →
    (B, T, D). With ``cross=True`` it is a decoder layer without the causal mask (used by the multilevel
    model's cross-modal layer); with ``self_attn=False`` it is a pure cross-attention layer (CAT).

    >>> layer = TransformerLayer(8, 2, 16).eval()
    >>> layer(torch.randn(2, 5, 8), torch.zeros(2, 5, dtype=torch.bool)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        cross: bool = False,
        self_attn: bool = True,
    ):
        super().__init__()
        self.self_attn = (
            nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True) if self_attn else None
        )
        self.norm1 = nn.LayerNorm(d_model) if self_attn else None
        self.cross_attn = (
            nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True) if cross else None
        )
        self.norm2 = nn.LayerNorm(d_model) if cross else None
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )
        self.norm3 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, x_mask=None, memory=None, memory_mask=None):
        if self.self_attn is not None:
            a, _ = self.self_attn(x, x, x, key_padding_mask=x_mask, need_weights=False)
            x = self.norm1(x + self.drop(a))
        if self.cross_attn is not None:
            a, _ = self.cross_attn(x, memory, memory, key_padding_mask=memory_mask, need_weights=False)
            x = self.norm2(x + self.drop(a))
        return self.norm3(x + self.drop(self.ff(x)))


class TransformerStack(nn.Module):
    """``num_layers`` :class:`TransformerLayer` s with optional sinusoidal PE added once at the input.

    >>> TransformerStack(8, 2, 16, 2, positional_encoding=True).eval()(torch.randn(1, 4, 8)).shape
    torch.Size([1, 4, 8])
    """

    def __init__(
        self, d_model, n_heads, d_ff, num_layers, dropout=0.1, positional_encoding=False, cross=False
    ):
        super().__init__()
        self.pe = SinusoidalPositionalEncoding(d_model) if positional_encoding else None
        self.layers = nn.ModuleList(
            [TransformerLayer(d_model, n_heads, d_ff, dropout, cross=cross) for _ in range(num_layers)]
        )

    def forward(self, x, x_mask=None, memory=None, memory_mask=None):
        if self.pe is not None:
            x = self.pe(x)
        for layer in self.layers:
            x = layer(x, x_mask, memory, memory_mask)
        return x


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters.

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
