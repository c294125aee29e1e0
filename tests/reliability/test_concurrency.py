"""Concurrency: many readers (DataLoader workers, another process) on one feature file; two writers on one
feature file are refused with :class:`StoreLockedError` (and a one-line CLI error) instead of corrupting it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _rel import ROOT, assert_one_line_error, manifest_rows, run_cli, sha256_file, tone, write_wav

from features import get_extractor
from features.store import FeatureReader, FeatureWriter, FileMeta, StoreLockedError, verify
from pipeline.corpus.manifest import read_manifest, write_manifest
from pipeline.extraction.extract import extract_features, source_checksums

HERE = Path(__file__).resolve().parent


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes() + str(a.shape).encode()).hexdigest()


# The DataLoader part runs in a clean interpreter: in a process where Prefect's background services run (as in
# this test session), forked workers die at exit (exit code 1) — which is why training uses forkserver workers.
_LOADER_SCRIPT = """
import sys, os, hashlib, json
sys.path[:0] = [{root!r}]
import numpy as np, torch
from features.store import FeatureReader

def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes() + str(a.shape).encode()).hexdigest()

class Utts(torch.utils.data.Dataset):
    def __init__(self, reader, keys):
        self.reader, self.keys = reader, keys
    def __len__(self):
        return len(self.keys)
    def __getitem__(self, i):
        return self.keys[i], digest(self.reader[self.keys[i]]), os.getpid()

def collate(b):
    return b

if __name__ == "__main__":
    reader = FeatureReader({path!r})
    keys = sorted(reader.keys())
    first = {{k: digest(reader[k]) for k in keys}}  # the parent's handle is open before the workers fork
    seen, pids = {{}}, set()
    for _ in range(3):
        loader = torch.utils.data.DataLoader(Utts(reader, keys * 4), batch_size=2, num_workers=2,
                                             multiprocessing_context="fork", collate_fn=collate)
        for batch in loader:
            for k, d, pid in batch:
                assert seen.setdefault(k, d) == d
                pids.add(pid)
    after = reader[keys[0]].shape[1]  # the parent's handle still works after the workers
    print(json.dumps({{"first": first, "seen": seen, "pids": sorted(pids), "me": os.getpid(), "dim": after}}))
"""


_READER_SCRIPT = """
import sys, time, hashlib, json
sys.path[:0] = [{root!r}]
import numpy as np
from features.store import FeatureReader
r = FeatureReader({path!r})
out, t0 = {{}}, time.time()
while time.time() - t0 < 1.0:  # keep reading while the DataLoader workers read too
    for k in r.keys():
        a = r[k]
        out[k] = hashlib.sha256(np.ascontiguousarray(a).tobytes() + str(a.shape).encode()).hexdigest()
print(json.dumps(out))
"""


def test_dataloader_workers_and_another_process_read_one_file(good_store):
    import json

    path = good_store["h5"]
    expected = {k: _digest(v) for k, v in ((k, FeatureReader(path)[k]) for k in FeatureReader(path).keys())}
    other = subprocess.Popen([sys.executable, "-c", _READER_SCRIPT.format(root=str(ROOT), path=str(path))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    loader = subprocess.run([sys.executable, "-c", _LOADER_SCRIPT.format(root=str(ROOT), path=str(path))],
                            capture_output=True, text=True, timeout=300)
    try:
        out, err = other.communicate(timeout=60)
    finally:
        if other.poll() is None:
            other.kill()
    assert loader.returncode == 0, loader.stderr[-2000:]
    assert other.returncode == 0, err[-2000:]
    got = json.loads(loader.stdout)
    assert got["first"] == expected and got["seen"] == expected and json.loads(out) == expected
    assert len(got["pids"]) >= 2 and got["me"] not in got["pids"]  # read in worker processes, each its own handle
    assert got["dim"] == 40
    assert sha256_file(path) == good_store["sha"]  # readers never modify the file


_WRITER_SCRIPT = """
import sys
sys.path[:0] = [{root!r}, {here!r}]
import _rel
from pipeline.extraction.extract import extract_features
from pipeline.corpus.manifest import read_manifest
ex = _rel.counting_logmel({count!r}, sleep=0.4)  # a 3 s window for the checks, even on a loaded box
r = extract_features(ex, read_manifest({manifest!r}), {out!r}, audio_root={audio!r}, jobs=1, batch_size=2,
                     progress=False)
print("computed", r.computed)
"""


def test_second_writer_is_refused_while_the_first_writes_and_nothing_is_corrupted(good_store, store_copy, tmp_path):
    rows = []
    for i in range(8):
        write_wav(tmp_path / "new" / f"n{i}.wav", tone(0.3, freq=250 + 30 * i, seed=10 + i))
        rows.append({"utt_id": f"n{i}", "path": str(tmp_path / "new" / f"n{i}.wav")})
    import pandas as pd

    df = pd.concat([good_store["manifest_df"], manifest_rows(tmp_path, rows)])
    write_manifest(df, tmp_path / "m.parquet")
    count = tmp_path / "calls.txt"
    script = _WRITER_SCRIPT.format(root=str(ROOT), here=str(HERE), count=str(count), manifest=str(tmp_path / "m.parquet"),
                                   out=str(store_copy), audio=str(good_store["root"]))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not count.exists():  # the first writer holds the lock and computes
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() < deadline
            time.sleep(0.02)
        # a second writer in this process: refused at once, with the file and the reason
        ex = get_extractor("logmel40")
        with pytest.raises(StoreLockedError, match="another process is writing this feature file"):
            extract_features(ex, read_manifest(tmp_path / "m.parquet"), store_copy, audio_root=good_store["root"],
                             jobs=1, progress=False)
        # a second writer through the CLI: one red line, exit 2
        code, _, err, exc = run_cli(["stage", "extract", "--feature", "logmel40", "--manifest", tmp_path / "m.parquet",
                                     "--out", store_copy, "--params", good_store["params"], "--no-progress"])
        assert_one_line_error(code, err, exc, str(store_copy), "another process is writing", "wait for it")
        # readers meanwhile see the committed file, complete
        with FeatureReader(store_copy) as r:
            assert sorted(r.keys()) == sorted(good_store["manifest_df"]["utt_id"])
        assert proc.poll() is None, "the first writer finished during the checks; they proved nothing"
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "computed 8" in out  # the refused writers did not take over or duplicate any work
    assert verify(store_copy, source_checksums(get_extractor("logmel40"), read_manifest(tmp_path / "m.parquet"))) == []
    assert sorted(p.name for p in store_copy.parent.iterdir()) == ["logmel40.h5"]


def test_lock_taken_on_a_lock_file_unlinked_by_the_previous_writer_is_retaken(tmp_path, monkeypatch):
    """The previous holder unlinks the lock file on exit: a writer that locked the old (now unlinked) inode must
    retry on the current file, or two writers could each hold 'the' lock."""
    import fcntl

    import features.store as store

    out = tmp_path / "f.h5"
    lock = out.with_name(out.name + ".lock")
    real_flock = fcntl.flock
    calls = {"n": 0}

    def flock_then_previous_holder_unlinks(fd, op):
        real_flock(fd, op)
        calls["n"] += 1
        if calls["n"] == 1:
            os.unlink(lock)  # what the previous writer's __exit__ does, between our open() and our check

    monkeypatch.setattr(store.fcntl, "flock", flock_then_previous_holder_unlinks)
    meta = FileMeta("demo", "1", {}, "h", 2, 0.01, "audio")
    with FeatureWriter(out, meta) as w:
        assert calls["n"] >= 2  # retried
        assert os.fstat(w._lock_fd).st_ino == os.stat(lock).st_ino  # holds the lock of the file others will open
        monkeypatch.setattr(store.fcntl, "flock", real_flock)
        with pytest.raises(StoreLockedError):
            with FeatureWriter(out, meta):
                pass
    assert not lock.exists()


def test_concurrent_writers_to_different_feature_files_do_not_interfere(good_store, tmp_path):
    """One lock per feature file: logmel40 and mfcc13 extract side by side (DVC runs stages in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    m = good_store["manifest_df"]

    def run(name: str):
        return extract_features(get_extractor(name), m, tmp_path / f"{name}.h5", audio_root=good_store["root"],
                                jobs=1, progress=False)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, ["logmel40", "mfcc13"]))
    assert [r.computed for r in results] == [len(m), len(m)]
    for name in ("logmel40", "mfcc13"):
        assert verify(tmp_path / f"{name}.h5", source_checksums(get_extractor(name), m)) == []


_STAGE_SCRIPT = """
import os, sys, time
sys.path[:0] = [{root!r}, {here!r}]
import _rel
from pipeline.extraction.extract import extract_features
from pipeline.corpus.manifest import read_manifest
ex = _rel.counting_logmel("calls.txt")
compute, t0 = ex.extract, time.time()

def extract(waveform, sample_rate):  # after the first utterance, hold the store lock until the test is done
    out = compute(waveform, sample_rate)
    while not os.path.exists("release") and time.time() - t0 < 60:
        time.sleep(0.05)
    return out

ex.extract = extract
r = extract_features(ex, read_manifest({manifest!r}), "features/logmel40.h5", audio_root={audio!r}, jobs=1,
                     batch_size=2, progress=False)
print("computed", r.computed)
"""


def test_two_dvc_repro_at_once_the_second_is_refused_and_the_first_finishes(good_store, tmp_path):
    """Two real ``dvc repro`` of one extract stage in one tiny DVC project, the second started while the first's
    stage holds the feature file: DVC's own lock refuses it (one ``ERROR:`` line naming the busy output, no
    traceback), and an extraction of the same feature outside DVC (the CLI, as ``emoflow serve`` would run it)
    is refused by the store's lock with one line, exit 2. The first run finishes: all utterances, verify clean,
    and dvc.lock records the bytes it wrote."""
    import yaml
    from _rel import cli_env

    proj = tmp_path / "proj"
    proj.mkdir()
    env = cli_env()
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=proj, env=env, check=True, timeout=60)
    (proj / "slow_extract.py").write_text(_STAGE_SCRIPT.format(
        root=str(ROOT), here=str(HERE), manifest=str(good_store["manifest"]), audio=str(good_store["root"])))
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"extract": {
        "cmd": f"{sys.executable} slow_extract.py", "deps": ["slow_extract.py"], "outs": ["features/logmel40.h5"]}}}))
    out = proj / "features" / "logmel40.h5"
    first = subprocess.Popen([dvc, "repro", "extract"], cwd=proj, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not (proj / "calls.txt").exists():  # the first run's stage is extracting (store lock held)
            assert first.poll() is None, first.communicate()[0][-2000:]
            assert time.time() < deadline
            time.sleep(0.05)
        second = subprocess.run([dvc, "repro", "extract"], cwd=proj, env=env, capture_output=True, text=True,
                                timeout=60)
        said = second.stdout + second.stderr
        assert second.returncode != 0 and "Traceback" not in said, said
        errors = [ln for ln in said.splitlines() if ln.startswith("ERROR")]
        assert len(errors) == 1, said
        assert "failed to reproduce 'extract'" in errors[0] and "is busy" in errors[0], errors  # DVC's rwlock
        assert "features/logmel40.h5" in errors[0] and "rwlock" in said, said
        code, _, err, exc = run_cli(["stage", "extract", "--feature", "logmel40", "--manifest",
                                     good_store["manifest"], "--out", out, "--params", good_store["params"],
                                     "--no-progress"])
        assert_one_line_error(code, err, exc, str(out), "another process is writing", "wait for it")
        assert first.poll() is None, "the first run finished during the checks; they proved nothing"
        (proj / "release").touch()
        log, _ = first.communicate(timeout=90)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, log[-2000:]
    assert "computed 4" in log, log
    assert verify(out, source_checksums(get_extractor("logmel40"), good_store["manifest_df"])) == []
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    md5 = hashlib.md5(out.read_bytes()).hexdigest()
    assert lock["stages"]["extract"]["outs"][0]["md5"] == md5
    assert sorted(p.name for p in out.parent.iterdir()) == ["logmel40.h5"]  # no shard, temp or lock file left
