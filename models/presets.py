"""Tiny configs of every model: same architecture (masks, CCABs, GCA iterations, fusions), a few thousand
parameters, milliseconds per batch on CPU. For tests, smoke runs and the demo corpus; never for numbers
that are put beside the papers'.

>>> from models import create_model, example_batch
>>> create_model("rlc", **tiny_config("rlc")).eval()(**example_batch("rlc", **tiny_config("rlc"))).shape
torch.Size([2, 4])
"""

from __future__ import annotations

from typing import Any

_A = dict(d_model=16, lstm_hidden=8, d_ff=32, n_heads=2, num_layers=1, cnn_channels=(4, 8))
_C = dict(
    fbank_dim=16,
    glove_dim=12,
    phoneme_vocab=12,
    phoneme_filters=6,
    hidden=16,
    n_heads=2,
    d_ff=32,
    prenet_hidden=16,
)

TINY: dict[str, dict[str, Any]] = {
    "ilt": _A,
    "cnn_transformer": _A,
    "cnn_lstm_transformer": _A,
    "cat": _A,
    "ks_transformer": dict(
        audio_dim=16, text_dim=8, ffn_audio=32, ffn_text=16, n_heads=2,
        num_extract_layers=1, ccab=2, num_fusion_layers=1,
    ),
    "multilevel_transformer": _C,
    "multigranularity": dict(_C, bert_dim=20, bert_proj=8, multilevel_proj=8),
    "classical": dict(input_dim=6),
    "probe": dict(input_dim=8, n_layers=2, hidden=8),
    "rlc": dict(
        stem_channels=8, channels=(16, 16), kernels=(5, 3), use_sa=(False, True), strides=(2, 2, 2),
        lstm_hidden=16, dense_units=16,
    ),
    "head_fusion": dict(n_head=2, n_size=8),
}  # fmt: skip


def tiny_config(name: str, **extra) -> dict[str, Any]:
    """Tiny overrides for model ``name`` (feature dims included), with ``extra`` applied on top."""
    from models.registry import get_model_info

    get_model_info(name)  # unknown name → ValueError listing the known ones
    return dict(TINY[name], **extra)
