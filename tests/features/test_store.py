"""HDF5 feature store: round trip, incremental, resume after a crash, locking, concurrent readers, verify."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from features.base import Extractor, ExtractorConfig
from features.store import FeatureReader, FeatureWriter, FileMeta, StoreLockedError, info, verify
from pipeline.extraction.extract import ExtractionError, extract_features


@dataclasses.dataclass
class FrameRmsConfig(ExtractorConfig):
    hop: int = 160
    scale: float = 1.0


class FrameRms(Extractor):
    """Tiny deterministic extractor for store tests: per-frame RMS and mean (frames × 2). Counts its calls."""

    name = "frame_rms_test"
    Config = FrameRmsConfig
    calls: list[str] = []
    fail_on: set[int] = set()

    @property
    def dim(self):
        return 2

    @property
    def frame_shift(self):
        return self.config.hop / 16000

    def extract(self, waveform, sample_rate):
        n = max(1, len(waveform) // self.config.hop)
        frames = waveform[: n * self.config.hop].reshape(n, -1) if len(waveform) >= self.config.hop else waveform[None]
        FrameRms.calls.append(round(float(waveform[:8].sum()), 6))
        if round(float(np.abs(waveform).max()), 3) in FrameRms.fail_on:
            raise RuntimeError("boom")
        rms = np.sqrt((frames**2).mean(axis=1)) * self.config.scale
        return np.stack([rms, frames.mean(axis=1)], axis=1).astype(np.float32)


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        amp = 0.1 + 0.05 * i
        wav = (amp * np.sin(2 * np.pi * 220 * np.arange(8000 + 800 * i) / 16000)).astype(np.float32)
        wav[:8] += rng.normal(0, 1e-3, 8).astype(np.float32)
        p = tmp_path / "wav" / f"u{i:02d}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(p, wav, 16000, subtype="FLOAT")
        rows.append({"utt_id": f"u{i:02d}", "path": f"wav/u{i:02d}.wav", "start": np.nan, "end": np.nan,
                     "transcript": f"sentence {i}", "audio_sha256": f"sha{i}", "amp": round(amp, 3)})
    return tmp_path, pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def reset_calls():
    FrameRms.calls = []
    FrameRms.fail_on = set()


def run(corpus, ex=None, **kw):
    root, manifest = corpus
    ex = ex or FrameRms()
    return extract_features(ex, kw.pop("manifest", manifest), root / "feat.h5", audio_root=root, jobs=1,
                            batch_size=kw.pop("batch_size", 4), progress=False, **kw)


def test_round_trip_and_provenance(corpus):
    res = run(corpus)
    assert (res.total, res.computed, res.reused) == (12, 12, 0)
    r = FeatureReader(res.path)
    assert len(r) == 12 and "u03" in r and "nope" not in r
    a = r["u03"]
    assert a.dtype == np.float32 and a.shape == ((8000 + 2400) // 160, 2)
    assert r.source_sha256("u03") == "sha3"
    assert r.meta.extractor == "frame_rms_test" and r.meta.config == {"hop": 160, "scale": 1.0}
    assert r.meta.config_hash == FrameRms().config_hash and r.meta.random_weights is False
    assert "numpy" in r.meta.packages and r.meta.audio["sample_rate"] == 16000
    with pytest.raises(KeyError, match="nope"):
        r["nope"]
    assert info(res.path)["n_utts"] == 12
    assert not (res.path.parent / "feat.h5.parts").exists()
    assert verify(res.path, dict(zip(corpus[1].utt_id, corpus[1].audio_sha256, strict=True))) == []


def test_incremental_only_changed_utterances(corpus):
    run(corpus)
    FrameRms.calls = []
    first = (corpus[0] / "feat.h5").read_bytes()
    again = run(corpus)
    assert (corpus[0] / "feat.h5").read_bytes() == first  # a no-op run leaves the file byte-identical
    assert again.computed == 0 and again.reused == 12 and FrameRms.calls == []
    before = FeatureReader(again.path)["u05"].copy()

    root, manifest = corpus
    changed = manifest.copy()
    changed.loc[changed.utt_id == "u05", "audio_sha256"] = "sha5-new"
    extra = changed.iloc[[0]].assign(utt_id="u99", audio_sha256="sha99")
    changed = pd.concat([changed[changed.utt_id != "u07"], extra])  # u07 removed, u99 added
    res = run(corpus, manifest=changed)
    assert res.computed == 2 and res.reused == 10
    r = FeatureReader(res.path)
    assert sorted(r.keys()) == sorted(changed.utt_id) and r.source_sha256("u05") == "sha5-new"
    np.testing.assert_array_equal(r["u05"], before)  # same audio bytes: identical values recomputed

    # A config change invalidates the whole file.
    res = run(corpus, ex=FrameRms(FrameRmsConfig(scale=2.0)), manifest=changed)
    assert res.computed == 12
    np.testing.assert_allclose(FeatureReader(res.path)["u05"][:, 0], 2 * before[:, 0], rtol=1e-6)


def test_resume_after_crash_keeps_finished_batches(corpus):
    root, manifest = corpus
    FrameRms.fail_on = {round(0.1 + 0.05 * 9, 3)}  # the 10th utterance fails → batches 1 and 2 finished
    with pytest.raises(ExtractionError, match="frame_rms_test"):
        run(corpus)
    assert not (root / "feat.h5").exists()  # never a half-written file at the final path
    assert len(list((root / "feat.h5.parts").glob("*.h5"))) == 2
    FrameRms.fail_on = set()
    FrameRms.calls = []
    res = run(corpus)
    assert res.resumed == 8 and res.computed == 4 and len(FrameRms.calls) == 4
    assert verify(res.path, dict(zip(manifest.utt_id, manifest.audio_sha256, strict=True))) == []
    assert not (root / "feat.h5.parts").exists()


def test_crash_does_not_touch_previous_file(corpus):
    root, manifest = corpus
    res = run(corpus)
    digest = (root / "feat.h5").read_bytes()
    FrameRms.fail_on = {round(0.1 + 0.05 * 2, 3)}
    with pytest.raises(ExtractionError):
        run(corpus, ex=FrameRms(FrameRmsConfig(scale=3.0)))
    assert (root / "feat.h5").read_bytes() == digest
    assert verify(res.path) == []


def test_second_writer_is_refused(tmp_path):
    meta = FileMeta("x", "1", {}, "h", 2, None, "audio")
    with FeatureWriter(tmp_path / "f.h5", meta):
        with pytest.raises(StoreLockedError, match="another process is writing"):
            with FeatureWriter(tmp_path / "f.h5", meta):
                pass
    with FeatureWriter(tmp_path / "f.h5", meta):  # released after the first closes
        pass


def test_verify_finds_nan_and_stale(corpus):
    root, manifest = corpus
    res = run(corpus)
    with h5py.File(res.path, "a") as f:
        f["utts/u01"][0, 0] = np.nan
    expected = dict(zip(manifest.utt_id, manifest.audio_sha256, strict=True))
    expected["u02"] = "different"
    expected["u50"] = "new"
    problems = "\n".join(verify(res.path, expected))
    assert "u01: contains NaN/inf" in problems
    assert "computed from different audio" in problems and "missing" in problems


def test_readers_in_dataloader_workers(corpus):
    torch = pytest.importorskip("torch")
    res = run(corpus)
    reader = FeatureReader(res.path)
    reader["u00"]  # open in the parent first: workers must reopen, not share the handle

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.from_numpy(reader[f"u{i:02d}"]).sum()

    dl = torch.utils.data.DataLoader(DS(), batch_size=3, num_workers=2)
    got = torch.cat(list(dl))
    want = torch.tensor([reader[f"u{i:02d}"].sum() for i in range(12)])
    torch.testing.assert_close(got, want)


def test_runtime_only_fields_do_not_change_the_content_key():
    from features import get_extractor

    a = get_extractor("wav2vec2", model="data/models/tiny-wav2vec2", device="cpu", batch_size=2)
    b = get_extractor("wav2vec2", model="data/models/tiny-wav2vec2", device="cuda", batch_size=64)
    c = get_extractor("wav2vec2", model="data/models/tiny-wav2vec2", dtype="float16")
    assert a.config_hash == b.config_hash != c.config_hash


@pytest.mark.parametrize(
    "key,value",
    [("center", "yes"), ("n_mels", "forty"), ("n_mels", 40.5), ("fmin", True), ("window", 3), ("hop_length", None)],
)
def test_config_values_of_the_wrong_type_are_refused(key, value):
    from features import get_extractor

    with pytest.raises(ValueError, match=rf"features\.logmel40\.{key}: expected"):
        get_extractor("logmel40", **{key: value})


def test_config_values_of_the_right_type_are_taken():
    from features import get_extractor

    ex = get_extractor("logmel40", fmin=20, fmax=None, top_db=None, n_mels=64)
    assert (ex.config.fmin, ex.config.n_mels, ex.config.top_db) == (20, 64, None)
