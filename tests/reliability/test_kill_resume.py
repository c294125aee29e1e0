"""Kill and resume: an extraction SIGKILLed at a seeded point (inside a batch, between writing a shard and
renaming it, between writing the merged file and renaming it, or from outside at a seeded random time), then
rerun: the file verifies and equals a clean extraction, finished utterances are not recomputed, the previous
file is byte-identical until the rerun commits, and no temp file, lock or shard folder remains.

The cross-validation flow killed mid-fold is at the end (finished folds come back from the cache)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from _rel import ROOT, counting_logmel, run_cli, sha256_file, tone_manifest

from features import get_extractor
from features.store import FeatureReader, verify
from pipeline.corpus.manifest import read_manifest, write_manifest
from pipeline.extraction.extract import extract_features, source_checksums

HERE = Path(__file__).resolve().parent
N_UTTS, N_OLD, BATCH = 12, 4, 2

_SCRIPT = """
import os, sys
sys.path[:0] = [{root!r}, {here!r}]
import _rel
from pipeline.extraction.extract import extract_features
from pipeline.corpus.manifest import read_manifest
mode, arg = {mode!r}, {arg!r}
if mode == "shard_rename":
    _rel.kill_on_replace(".parts/", nth=arg)
elif mode == "final_rename":
    _rel.kill_on_replace("/logmel40.h5", nth=1)
ex = _rel.counting_logmel({count!r}, kill_at=arg if mode == "mid_batch" else 0,
                          sleep=0.08 if mode == "external" else 0.0)
extract_features(ex, read_manifest({manifest!r}), {out!r}, audio_root={audio!r}, jobs=1, batch_size={batch},
                 progress=False)
print("FINISHED")
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 utterances; the first 4 already extracted (the file a killed run must not damage); a clean reference."""
    root = tmp_path_factory.mktemp("kill")
    full = tone_manifest(root, N_UTTS, lambda i: 0.2 + 0.02 * i, freq=180, step=25)
    write_manifest(full, root / "full.parquet")
    write_manifest(full.iloc[:N_OLD], root / "old.parquet")
    ref = root / "reference.h5"
    extract_features(get_extractor("logmel40"), read_manifest(root / "full.parquet"), ref, audio_root=root, jobs=1,
                     progress=False)
    with FeatureReader(ref) as r:
        reference = {u: r[u] for u in r.keys()}
    return {"root": root, "full": root / "full.parquet", "old": root / "old.parquet", "reference": reference,
            "reference_sha": sha256_file(ref)}


def _start(corpus, out: Path, mode: str, arg: int, count: Path) -> subprocess.Popen:
    script = _SCRIPT.format(root=str(ROOT), here=str(HERE), mode=mode, arg=arg, count=str(count),
                            manifest=str(corpus["full"]), out=str(out), audio=str(corpus["root"]), batch=BATCH)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _shard_utts(parts: Path) -> set[str]:
    """Utterances in finished shards (what a rerun may take over without recomputing)."""
    out: set[str] = set()
    for shard in sorted(parts.glob("*.h5")):
        with h5py.File(shard, "r", locking=False) as f:
            out |= set(f["utts"].keys())
    return out


def _check_resume(corpus, out: Path, old_sha: str, count: Path) -> None:
    parts = out.with_name(out.name + ".parts")
    assert sha256_file(out) == old_sha, "the killed run altered the committed feature file"
    finished = _shard_utts(parts) if parts.is_dir() else set()
    killed_calls = len(count.read_text().splitlines()) if count.exists() else 0
    assert len(finished) <= killed_calls  # shards only hold what was computed

    ex = counting_logmel()
    res = extract_features(ex, read_manifest(corpus["full"]), out, audio_root=corpus["root"], jobs=1,
                           batch_size=BATCH, progress=False)
    new = N_UTTS - N_OLD
    assert res.reused == N_OLD and res.resumed == len(finished)
    assert res.computed == new - len(finished) == type(ex).calls, "finished utterances were recomputed"
    m = read_manifest(corpus["full"])
    assert verify(out, source_checksums(get_extractor("logmel40"), m)) == []
    with FeatureReader(out) as r:
        assert sorted(r.keys()) == sorted(corpus["reference"])
        for u, ref in corpus["reference"].items():
            np.testing.assert_array_equal(r[u], ref, err_msg=u)
    # killed + resumed + incremental gives the very bytes of one uninterrupted extraction
    assert sha256_file(out) == corpus["reference_sha"]
    leftovers = sorted(p.name for p in out.parent.iterdir() if p.name != out.name)
    assert leftovers == [], f"left behind: {leftovers}"


def _prepare(corpus, tmp_path) -> tuple[Path, str]:
    out = tmp_path / "features" / "logmel40.h5"
    extract_features(get_extractor("logmel40"), read_manifest(corpus["old"]), out, audio_root=corpus["root"], jobs=1,
                     progress=False)
    return out, sha256_file(out)


def _wait_killed(proc: subprocess.Popen, timeout: float = 90) -> None:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL death, got rc={proc.returncode}: {err[-2000:]}"


# seeded kill points: (mode, argument) — mid_batch: the extractor call that dies; shard_rename: the shard whose
# rename never happens; final_rename: the merged file written but not renamed
_RNG = random.Random(8)
KILL_POINTS = [
    ("mid_batch", _RNG.randint(1, N_UTTS - N_OLD)),
    ("shard_rename", _RNG.randint(1, (N_UTTS - N_OLD) // BATCH)),
    ("final_rename", 1),
]


@pytest.mark.parametrize("mode, arg", KILL_POINTS, ids=[f"{m}-{a}" for m, a in KILL_POINTS])
def test_sigkill_at_a_seeded_point_then_rerun_resumes(mode, arg, corpus, tmp_path):
    out, old_sha = _prepare(corpus, tmp_path)
    count = tmp_path / "calls.txt"
    _wait_killed(_start(corpus, out, mode, arg, count))
    parts = out.with_name(out.name + ".parts")
    if mode == "mid_batch":
        assert len(count.read_text().splitlines()) == arg
        assert len(_shard_utts(parts) if parts.is_dir() else set()) == (arg - 1) // BATCH * BATCH
    if mode == "shard_rename":
        assert len(list(parts.glob("*.tmp*"))) == 1  # the complete but unrenamed shard is ignored, then removed
        assert len(_shard_utts(parts)) == (arg - 1) * BATCH
    if mode == "final_rename":
        assert len(list(out.parent.glob(f".{out.name}.tmp*"))) == 1
        assert _shard_utts(parts) == {f"u{i:02d}" for i in range(N_OLD, N_UTTS)}
    _check_resume(corpus, out, old_sha, tmp_path / "calls.txt")


def test_external_sigkill_at_a_seeded_random_time_then_rerun_resumes(corpus, tmp_path):
    out, old_sha = _prepare(corpus, tmp_path)
    count = tmp_path / "calls.txt"
    proc = _start(corpus, out, "external", 0, count)
    parts = out.with_name(out.name + ".parts")
    try:
        deadline = time.time() + 60
        while not (parts.is_dir() and any(parts.glob("*.h5"))):  # the first batch is on disk
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() < deadline, "no shard within 60 s"
            time.sleep(0.01)
        time.sleep(random.Random(1).uniform(0.0, 0.2))  # 6 more utterances × 80 ms: lands inside the run
        assert proc.poll() is None, "the extraction finished before the kill; the test proves nothing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _wait_killed(proc)
    assert 1 <= len(_shard_utts(parts)) // BATCH < (N_UTTS - N_OLD) // BATCH
    _check_resume(corpus, out, old_sha, count)


def test_a_killed_first_extraction_leaves_no_final_file_and_resumes(corpus, tmp_path):
    """No previous file: the kill leaves only shards (nothing at the final path for DVC to cache)."""
    out = tmp_path / "features" / "logmel40.h5"
    out.parent.mkdir()
    _wait_killed(_start(corpus, out, "mid_batch", 7, tmp_path / "calls.txt"))
    assert not out.exists()
    code, _, err, _ = run_cli(["features", "verify", out, "--manifest", corpus["full"]])
    assert code == 2 and "feature file not found" in err  # what `emoflow features verify` tells the user
    ex = counting_logmel()
    res = extract_features(ex, read_manifest(corpus["full"]), out, audio_root=corpus["root"], jobs=1,
                           batch_size=BATCH, progress=False)
    assert (res.reused, res.resumed, res.computed, type(ex).calls) == (0, 6, 6, 6)
    assert verify(out, source_checksums(get_extractor("logmel40"), read_manifest(corpus["full"]))) == []
    assert sha256_file(out) == corpus["reference_sha"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["logmel40.h5"]
    code, stdout, _, _ = run_cli(["features", "verify", out, "--manifest", corpus["full"]])
    assert code == 0 and "OK (matches" in stdout


# =================================================================================================================
# cross-validation killed mid-fold
# =================================================================================================================
_CV_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
sys.path[:0] = [{root!r}]
import pipeline.training.train
from models import tiny_config
from pipeline.orchestration.flows import run_cross_validation

_real = pipeline.training.train.train_fold
def slow_fold1(model, fold, **kw):  # fold 1 pauses after each epoch: a wide window to be killed in
    if fold == 1:
        log = kw.get("log") or (lambda s: None)
        kw["log"] = lambda s: (log(s), time.sleep(1.0))
    return _real(model, fold, **kw)
pipeline.training.train.train_fold = slow_fold1
run_cross_validation("ilt", manifest_path={manifest!r}, folds_dir={folds!r}, features_dir={features!r},
                     results_dir={results!r}, storage_dir={storage!r}, runs_dir={runs!r},
                     params={{"models": {{"ilt": tiny_config("ilt")}}, "train": {train!r}, "dataset": {{"name": "demo"}}}})
"""
CV_TRAIN = {"epochs": 3, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1, "seed": 0,
            "task_runner": "threads", "max_workers": 1}


def _persisted(storage: Path, fold: int) -> dict:
    """A fold's result as Prefect persisted it (JSON serializer) under ``<storage>/results``."""
    files = [p for p in (storage / "results").glob(f"ilt-fold{fold}-*") if p.is_file()]
    assert len(files) == 1, files
    result = json.loads(files[0].read_text())["result"]
    return json.loads(result) if isinstance(result, str) else result


@pytest.mark.slow
def test_cross_validation_killed_mid_fold_reuses_finished_folds(prefect_harness, synthetic_cv, tmp_path):
    """A CV run in a subprocess (against the session's Prefect API) is SIGKILLed while fold 1 trains (fold 0's
    result persisted, fold 1 has an epoch checkpoint); the rerun takes fold 0 from the cache, resumes fold 1 from
    its checkpoint, and gives the same metrics as an uninterrupted run."""
    from prefect.settings import PREFECT_API_URL

    from models import tiny_config
    from pipeline.orchestration.flows import run_cross_validation

    cv = synthetic_cv()
    storage = tmp_path / "storage"
    script = _CV_SCRIPT.format(root=str(ROOT), manifest=str(cv["manifest_path"]), folds=str(cv["folds_dir"]),
                               features=str(cv["features_dir"]), results=str(tmp_path / "killed"),
                               storage=str(storage), runs=str(tmp_path / "runs"), train=CV_TRAIN)
    env = dict(os.environ, OMP_NUM_THREADS="1", PREFECT_API_URL=str(PREFECT_API_URL.value()))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 120
        while True:  # fold 0 finished (its result is persisted) and fold 1 has a checkpoint of an epoch
            done0 = list((storage / "results").glob("ilt-fold0-*"))
            ckpt1 = list((storage / "checkpoints" / "ilt").glob("ilt-fold1-*/state.pt"))
            if done0 and ckpt1:
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "fold 1 never started within 120 s"
            time.sleep(0.05)
        assert not list((storage / "results").glob("ilt-fold1-*")), "fold 1 finished before the kill"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _wait_killed(proc)
    assert not (tmp_path / "killed" / "ilt" / "metrics.json").exists()
    fold0_before = _persisted(storage, 0)

    def run(results: Path, storage_dir: Path) -> dict:
        return run_cross_validation(
            "ilt", manifest_path=cv["manifest_path"], folds_dir=cv["folds_dir"], features_dir=cv["features_dir"],
            results_dir=results, storage_dir=storage_dir, runs_dir=tmp_path / "runs",
            params={"models": {"ilt": tiny_config("ilt")}, "train": CV_TRAIN, "dataset": {"name": "demo"}})

    resumed = run(tmp_path / "resumed", storage)
    assert resumed["run"]["cached_folds"] == [0]  # fold 0 not retrained
    assert _persisted(storage, 0) == fold0_before
    fold1 = _persisted(storage, 1)
    assert 1 <= fold1["resumed_from_epoch"] < CV_TRAIN["epochs"]  # fold 1 continued from its checkpoint
    clean = run(tmp_path / "clean", tmp_path / "storage-clean")
    assert clean["run"]["cached_folds"] == []
    for k in ("wa", "ua", "macro_f1", "per_class_recall"):
        assert resumed[k] == clean[k], k
    for f, m in clean["folds"].items():
        for k in ("wa", "ua", "macro_f1", "per_class_recall", "val_wa", "best_epoch", "epochs_run"):
            assert resumed["folds"][f][k] == m[k], (f, k)
