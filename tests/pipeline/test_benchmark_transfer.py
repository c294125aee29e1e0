"""Moving a benchmark to another machine: a pooled copy of an encoder feature (benchmarks.pooled_copy) and
features linked in from elsewhere instead of extracted (benchmarks.accuracy --features-from)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks.accuracy import extract_features, feature_note, link_feature
from benchmarks.pooled_copy import pooled_copy, two_frames
from features.store import FeatureReader, FeatureWriter, FileMeta
from models import create_model

ROOT = Path(__file__).resolve().parents[2]


def _encoder_file(path, n_utts=5, layers=3, dim=8, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # layers on different scales and offsets, as an encoder's are; float16 as the Whisper feature is stored
    arrays = {f"u{i}": (rng.normal(size=(20 + 7 * i, layers, dim)) * np.arange(1, layers + 1)[None, :, None]
                        + 5.0).astype(np.float16) for i in range(n_utts)}
    meta = FileMeta("whisper", "1", {"model": "m"}, "h1", dim, 0.02, "audio", provenance={"model": "m"})
    sums = {u: f"sha-{u}" for u in arrays}
    with FeatureWriter(path, meta) as w:
        w.plan(sums)
        w.write_batch(arrays, sums)
        w.commit(sums)
    return arrays


def test_pooled_copy_gives_the_probe_and_teacher_the_same_pooled_vectors(tmp_path):
    arrays = _encoder_file(tmp_path / "whisper.h5")
    assert pooled_copy(tmp_path / "whisper.h5", tmp_path / "copy.h5") == len(arrays)
    probe = create_model("probe", num_classes=4, feature="whisper", pooling="meanstd", head="linear", n_layers=3)
    copy = FeatureReader(tmp_path / "copy.h5")
    assert copy.checksums() == FeatureReader(tmp_path / "whisper.h5").checksums()
    with torch.no_grad():
        for u, x in arrays.items():
            assert copy[u].shape == (2, 3, 8) and copy[u].dtype == np.float32
            want = probe.pool(torch.from_numpy(x.astype(np.float32))[None])
            got = probe.pool(torch.from_numpy(copy[u])[None])
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-3)
    # only the pooled vectors are the original's, not the frames: the copy says so wherever it is used
    assert "two frames per utterance" in feature_note(tmp_path / "copy.h5")
    assert "two frames" not in feature_note(tmp_path / "whisper.h5")
    with pytest.raises(AssertionError):  # a learned layer weighting would see something else
        w = np.array([0.7, 0.2, 0.1])[None, :, None]
        x = arrays["u1"].astype(np.float64)
        np.testing.assert_allclose((two_frames(arrays["u1"]) * w).sum(1).std(0), (x * w).sum(1).std(0), rtol=1e-3)


def test_features_from_links_instead_of_extracting_and_refuses_to_replace_another_file(tmp_path):
    _encoder_file(tmp_path / "pulled" / "whisper.h5")
    params = {"dataset": {"root": str(tmp_path)}, "extract": {"features": ["whisper"]},
              "models": {"probe": {"feature": "whisper"}}, "train": {}}
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "params.yaml").write_text(yaml.safe_dump(params))
    linked: dict[str, str] = {}
    timings = extract_features(tmp_path / "w" / "params.yaml", tmp_path / "w", ["probe"], tmp_path / "pulled", linked)
    stored = tmp_path / "w" / "data" / "features" / "whisper.h5"
    assert timings == {} and stored.samefile(tmp_path / "pulled" / "whisper.h5")
    assert list(linked) == ["whisper"] and "weights m" in linked["whisper"]
    assert link_feature(tmp_path / "pulled" / "whisper.h5", stored) == (tmp_path / "pulled" / "whisper.h5").resolve()
    _encoder_file(tmp_path / "other.h5", seed=1)
    with pytest.raises(SystemExit, match="already there"):
        link_feature(tmp_path / "other.h5", stored)


def test_jobs_train_models_in_parallel_with_the_rows_of_a_one_at_a_time_run(prefect_harness, tmp_path, monkeypatch):
    """``--jobs 2``: the models train at once, each in its own process (own log, own Prefect home), and give the
    rows a one-at-a-time run gives."""
    from benchmarks import accuracy
    from models import tiny_config
    from pipeline.corpus.demo_corpus import generate_demo_corpus

    generate_demo_corpus(tmp_path / "demo", seed=1, n_speakers=4, n_sessions=2, utts_per_speaker=8,
                         min_duration=1.0, max_duration=1.5)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"]["root"] = str(tmp_path / "demo")
    params["folds"]["plans"] = ["random_55_25_20"]
    params["extract"].update(features=["functionals", "logmel40"], jobs=1)
    params["train"].update(models=["classical", "ilt"], epochs=1, batch_size=8, fixed_frames=64, num_threads=1)
    params["models"]["classical"]["fold_plan"] = "random_55_25_20"
    params["models"]["ilt"] = {**{k: list(v) if isinstance(v, tuple) else v for k, v in tiny_config("ilt").items()},
                               "fold_plan": "random_55_25_20"}
    p = tmp_path / "params.demo.yaml"
    p.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    rows = {}
    for jobs in (1, 2):
        result = accuracy.main(["--params", str(p), "--workdir", str(tmp_path / f"w{jobs}"),
                                "--out", str(tmp_path / f"{jobs}.json"), "--jobs", str(jobs)])
        assert result["failed"] == {} and result["jobs"] == jobs
        rows[jobs] = [(r["model"], r["ua"], r["wa"]) for r in result["rows"]]
    assert [m for m, *_ in rows[2]] == ["classical", "ilt"] and rows[2] == rows[1]
    for m in ("classical", "ilt"):  # each worker's output, its temporary Prefect server's included
        assert f"{m}-fold0" in (tmp_path / "w2" / "logs" / f"{m}.log").read_text()
        assert (tmp_path / "w2" / ".prefect-workers" / m).is_dir()
