"""``use_text: false`` on the multimodal models of paper C: the audio path alone (the fusion sanity check)."""

from __future__ import annotations

import pytest
import torch

from models import create_model, example_batch
from models.registry import requirements

TINY = dict(fbank_dim=8, glove_dim=6, phoneme_vocab=10, phoneme_filters=4, hidden=8, n_heads=2, d_ff=16,
            prenet_hidden=8)


@pytest.mark.parametrize("name", ["multilevel_transformer", "multigranularity"])
def test_audio_only_reads_fbank_alone_and_has_no_text_weights(name):
    kw = dict(TINY, bert_dim=12, bert_proj=4, multilevel_proj=4) if name == "multigranularity" else TINY
    assert requirements(name, {"use_text": False}).features == ["fbank128"]
    assert "glove" in requirements(name, {}).features  # the paper's default keeps the text
    batch = example_batch(name, use_text=False, **kw)
    assert set(batch) == {"fbank", "fbank_mask"}
    model = create_model(name, use_text=False, **kw).eval()
    assert model(**batch).shape == (2, 4)
    names = [n for n, _ in model.named_parameters()]
    assert not any(k in n for n in names for k in ("phoneme_cnn", "text_encoder", "bert_proj", "cross_attn"))
    with_text = create_model(name, **kw)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in with_text.parameters())


def test_audio_only_output_does_not_depend_on_padding():
    model = create_model("multilevel_transformer", use_text=False, **TINY).eval()
    fbank = torch.randn(1, 20, 8)
    padded = torch.cat([fbank, torch.zeros(1, 7, 8)], dim=1)
    mask = torch.zeros(1, 27, dtype=torch.bool)
    mask[:, 20:] = True
    torch.testing.assert_close(model(fbank), model(padded, fbank_mask=mask))


def test_text_model_without_text_inputs_says_what_is_missing():
    model = create_model("multilevel_transformer", **TINY).eval()
    with pytest.raises(ValueError, match="needs the 'phonemes' and 'glove' inputs"):
        model(torch.randn(1, 5, 8))
