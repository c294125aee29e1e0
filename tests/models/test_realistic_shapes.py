"""Default (paper-size) configs on inputs of the papers' real lengths: no shape error, finite logits."""

import pytest
import torch

from models import create_model
from models.registry import random_sequence


def _seq(prefix, lengths, dim, gen):
    x, m = random_sequence(torch.tensor(lengths), dim, gen)
    return {prefix: x, f"{prefix}_mask": m}


def _batch(name, gen):
    if name in ("ilt", "cat", "cnn_transformer", "cnn_lstm_transformer"):
        return _seq("x", [750, 420], 40, gen)  # 7.5 s at 10 ms
    if name == "ks_transformer":
        return {**_seq("audio", [460, 200], 768, gen), **_seq("text", [20, 7], 768, gen)}
    if name == "rlc":
        return _seq("lld", [1400, 300], 17, gen)  # 7 s and 1.5 s at 5 ms
    if name == "head_fusion":
        return {"mfcc": torch.randn(2, 63, 13, generator=gen)}  # 2 s, hop 512
    words = [14, 5]
    batch = {**_seq("fbank", [600, 250], 128, gen), **_seq("glove", words, 300, gen)}
    phon = torch.randint(1, 71, (2, 14, 9), generator=gen)  # default phoneme_vocab
    phon[1, 5:] = 0
    phon[:, :, 6:] = 0
    batch["phonemes"] = phon
    if name == "multigranularity":
        batch["bert_cls"] = torch.randn(2, 768, generator=gen)
    return batch


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["ilt", "cat", "cnn_transformer", "cnn_lstm_transformer", "ks_transformer", "rlc", "head_fusion",
     "multilevel_transformer", "multigranularity"],
)  # fmt: skip
def test_default_config_on_real_lengths(name):
    model = create_model(name).eval()
    with torch.no_grad():
        logits = model(**_batch(name, torch.Generator().manual_seed(0)))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
