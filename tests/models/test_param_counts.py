"""Parameter counts of the default (paper) configs against the expected order of magnitude."""

import pytest
import torch

from models import create_model
from models.blocks import count_parameters

# (name, overrides, low, high). Sources in the comments.
CASES = [
    # Li et al. 2019 Table 2: RLC (S3) 9.11 M with 17-d LLD input; ours 9.4 M (3 dense layers + output, W^O)
    ("rlc", {}, 8.0e6, 10.5e6),
    ("rlc", {"strides": (2, 2, 2, 1, 1)}, 8.0e6, 10.5e6),  # code strides: same weights
    # KS-Transformer, 768-d wav2vec2 + 768-d RoBERTa, 13 layers per modality, no input projection: ~78 M
    ("ks_transformer", {}, 60e6, 100e6),
    # the authors' dims (wav2vec-large 512, roberta-large 1024): text branch dominates
    ("ks_transformer", {"audio_dim": 512, "text_dim": 1024}, 70e6, 110e6),
    # Xu & Zhang: ACNN + 4 heads × 3 × (80→64) 1×1 convs: ~0.16 M
    ("head_fusion", {}, 0.1e6, 0.3e6),
    # paper A: sizes NF (ours); small CNN + 2-layer d_model-128 transformer
    ("ilt", {}, 0.2e6, 2e6),
    ("cat", {}, 0.2e6, 2e6),
    ("cnn_transformer", {}, 0.2e6, 2e6),
    ("cnn_lstm_transformer", {}, 0.2e6, 2e6),
    # paper C: hidden 128 transformers, 400-d word features into the prenet
    ("multilevel_transformer", {}, 1e6, 4e6),
    ("multigranularity", {}, 1e6, 4e6),
]


@pytest.mark.parametrize(
    ("name", "overrides", "low", "high"), CASES, ids=[f"{c[0]}{c[1] or ''}" for c in CASES]
)
def test_parameter_count(name, overrides, low, high):
    with torch.device("meta"):  # no allocation: the KS model has ~80 M parameters
        n = count_parameters(create_model(name, **overrides))
    assert low <= n <= high, f"{name}: {n / 1e6:.2f} M parameters, expected {low / 1e6}-{high / 1e6} M"


def test_head_fusion_matches_authors_code_count():
    # MACNN(attention_heads=4, attention_hidden=64) in lessonxmk/head_fusion, counted by hand:
    convs = (10 * 2 * 8 + 8) + (2 * 8 * 8 + 8) + (9 * 16 * 32 + 32) + (9 * 32 * 48 + 48) + (9 * 48 * 64 + 64)
    convs += 9 * 64 * 80 + 80
    bns = 2 * (8 + 8 + 32 + 48 + 64 + 80)
    heads = 4 * 3 * (80 * 64 + 64)
    fc = 64 * 4 + 4
    assert count_parameters(create_model("head_fusion")) == convs + bns + heads + fc


def test_multigranularity_adds_only_the_bert_branch():
    ml = count_parameters(create_model("multilevel_transformer"))
    mg = count_parameters(create_model("multigranularity"))
    # projections 128→128, 768→128 and the 256→4 head replace the 128→4 head
    assert mg - ml == (128 * 128 + 128) + (768 * 128 + 128) + (256 * 4 + 4) - (128 * 4 + 4)
