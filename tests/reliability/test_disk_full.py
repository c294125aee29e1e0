"""A full disk, for real: the extract stage runs as a user runs it (``python -m pipeline.cli.main stage extract``) in a
child process whose file-size limit (RLIMIT_FSIZE, what ``ulimit -f`` sets) is below the size of a shard or of the
merged file. SIGXFSZ is ignored in the child, so a write past the limit fails with EFBIG exactly as a full
filesystem fails with ENOSPC: the kernel refuses the write, nothing is mocked.

Before the fix this printed ~130 lines of HDF5 tracebacks, left a ``*.tmp<pid>`` shard, and the interpreter died
with SIGSEGV at exit (HDF5 kept a file handle it could neither flush nor close). Now: exit 2, one line naming the
file, the space needed and free; the committed file is byte-identical; finished shards are kept; the rerun with
the limit lifted resumes and writes the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import logging
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _rel import (
    ROOT,
    assert_one_line_error,
    cli_env,
    sha256_file,
    tone_manifest,
    write_params,
)

from features import get_extractor
from features.store import FeatureReader, verify
from pipeline.cli import stages
from pipeline.corpus.manifest import read_manifest, write_manifest
from pipeline.extraction.extract import disk_space_warning, estimate_output_bytes, extract_features

N_UTTS, N_OLD = 10, 4
# logmel40 of 1 s: 101 frames x 40 x 4 B = 16 KB. A shard (batch 2) is ~36 KB, the merged file ~170 KB.
SHARD_LIMIT, COMMIT_LIMIT = 20_000, 100_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("diskfull")
    full = tone_manifest(root, N_UTTS, 1.0, freq=170, step=30)
    write_manifest(full, root / "full.parquet")
    write_manifest(full.iloc[:N_OLD], root / "old.parquet")
    params = write_params(root / "params.yaml", root, extract={"jobs": 1, "batch_size": 2})
    return {"root": root, "params": params, "full": root / "full.parquet", "old": root / "old.parquet"}


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def assert_same_bytes_as_an_uninterrupted_run(corpus, out: Path, head_before: str, tmp_path: Path) -> None:
    """``out`` equals, byte for byte, what one uninterrupted run of the same command writes now. The file records
    the git revision (provenance): when another commit landed meanwhile, all but that attribute must match."""
    ref = tmp_path / "reference" / "logmel40.h5"
    stages.extract(corpus["params"], "logmel40", corpus["full"], ref, progress=False)
    if _head() == head_before:
        assert sha256_file(out) == sha256_file(ref)
        return
    import h5py
    import numpy as np

    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        assert {k: v for k, v in a.attrs.items() if k != "code_version"}.keys() == b.attrs.keys() - {"code_version"}
        assert list(a["utts"]) == list(b["utts"])
        for k in a["utts"]:
            assert np.array_equal(a["utts"][k][()], b["utts"][k][()])


def _limit(nbytes: int):
    def preexec():
        # ignored signals stay ignored across exec: a write past the limit then fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return preexec


def _cli(args, cwd: Path, limit: int | None = None, check: bool = False) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.main", *map(str, args)], cwd=cwd, env=cli_env(),
                       capture_output=True, text=True, timeout=120, preexec_fn=_limit(limit) if limit else None)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def _extract_args(corpus, manifest: Path, out: Path) -> list:
    return ["stage", "extract", "--feature", "logmel40", "--manifest", manifest, "--out", out, "--no-progress",
            "--params", corpus["params"]]


@pytest.mark.parametrize("where, limit", [("shard", SHARD_LIMIT), ("commit", COMMIT_LIMIT)])
def test_disk_full_is_one_line_keeps_everything_and_the_rerun_resumes_to_the_same_bytes(where, limit, corpus,
                                                                                      tmp_path, capsys):
    out = tmp_path / "features" / "logmel40.h5"
    stages.extract(corpus["params"], "logmel40", corpus["old"], out, progress=False)  # the committed file
    committed = sha256_file(out)

    p = _cli(_extract_args(corpus, corpus["full"], out), cwd=corpus["root"], limit=limit)
    assert p.returncode != -signal.SIGSEGV and p.returncode != 139, p.stderr[-2000:]
    target = f"{out}.parts/000000.h5" if where == "shard" else str(out)
    line = assert_one_line_error(p.returncode, p.stderr, None, target, "file size limit reached", "needs about",
                                 "free", "rerun")
    assert "unchanged" in line if where == "commit" else "kept in" in line
    assert sha256_file(out) == committed  # the committed file is untouched
    leftovers = [q.name for q in out.parent.rglob("*") if ".tmp" in q.name or q.name.endswith(".lock")]
    assert leftovers == []  # no half-written temp file, no stale lock
    shards = sorted((out.parent / "logmel40.h5.parts").glob("*.h5"))
    if where == "commit":
        assert len(shards) == (N_UTTS - N_OLD) // 2  # every finished batch kept
    else:
        assert shards == []  # the first shard was the one that failed

    head = _head()
    capsys.readouterr()
    stages.extract(corpus["params"], "logmel40", corpus["full"], out, progress=False)  # space freed: no limit
    said = capsys.readouterr().out
    assert (f"{N_UTTS - N_OLD} resumed" if where == "commit" else f"{N_UTTS - N_OLD} computed") in said, said
    assert_same_bytes_as_an_uninterrupted_run(corpus, out, head, tmp_path)
    assert verify(out) == []
    assert not (out.parent / "logmel40.h5.parts").exists()


def test_disk_full_in_the_library_leaves_no_temp_file_and_no_open_hdf5_handle(corpus, tmp_path):
    """The same fault through the library API in a child that then opens, reads and exits normally: no crash
    at exit (the HDF5 handle of the failed file is closed), the error is a DiskFullError (an OSError, EFBIG)."""
    out = tmp_path / "lib" / "logmel40.h5"
    script = f"""
import sys, signal, resource
sys.path[:0] = [{str(ROOT)!r}]
from features import get_extractor
from features.errors import DiskFullError, EmoflowError
from pipeline.extraction.extract import extract_features
from pipeline.corpus.manifest import read_manifest
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({SHARD_LIMIT}, {SHARD_LIMIT}))
try:
    extract_features(get_extractor("logmel40"), read_manifest({str(corpus['full'])!r}), {str(out)!r},
                     audio_root={str(corpus['root'])!r}, jobs=1, batch_size=2, progress=False)
except DiskFullError as e:
    assert isinstance(e, (OSError, EmoflowError)) and e.errno == 27, e
    print("REFUSED", e)
"""
    p = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "REFUSED" in p.stdout and "Traceback" not in p.stderr and "HDF5" not in p.stderr
    assert [q.name for q in out.parent.rglob("*.tmp*")] == []


def test_preflight_warns_before_a_long_extraction_when_free_space_is_clearly_too_small(corpus, tmp_path, caplog):
    """The manifest claims 10 x 30 days of audio (the real files are short): the estimate (~41 GB x 2) exceeds
    what this disk has free, so a warning names the path, the estimate and the free space before any work."""
    huge = read_manifest(corpus["full"]).assign(duration=30 * 86400.0)
    ex = get_extractor("logmel40")
    needed = estimate_output_bytes(ex, huge.to_dict("records"))
    assert needed == pytest.approx(4 * 40 * (N_UTTS * 30 * 86400 / 0.01 + N_UTTS), rel=1e-6)
    assert disk_space_warning(tmp_path, needed, 10 * needed) is None  # plenty: silent
    assert "needs about" in disk_space_warning(tmp_path, needed, needed)
    out = tmp_path / "warn" / "logmel40.h5"
    with caplog.at_level(logging.WARNING, logger="emoflow.extract"):
        extract_features(ex, huge, out, audio_root=corpus["root"], jobs=1, batch_size=4, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(out) in warnings[0] and "free" in warnings[0], warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emoflow.extract"):  # a normal run: no warning
        extract_features(ex, read_manifest(corpus["full"]), tmp_path / "ok" / "logmel40.h5",
                         audio_root=corpus["root"], jobs=1, batch_size=4, progress=False)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    with FeatureReader(out) as r:
        assert len(r) == N_UTTS


_RESULTS_CHILD = """
import signal, resource, sys
sys.path[:0] = [{root!r}]
import numpy as np, pandas as pd, typer
from pipeline.cli.main import _run
from pipeline.orchestration.flows import write_results

def result(wa):
    s = {{"mean": wa, "std": 1.0, "pooled": wa}}
    return {{"model": "ilt", "corpus": "demo", "labels": ["ang", "neu"], "wa": s, "ua": s, "macro_f1": s,
            "per_class_recall": {{"ang": {{"pooled": wa}}, "neu": {{"pooled": wa}}}},
            "pooled_confusion": [[3, 1], [1, 3]], "folds": [{{"fold": 1, "wa": wa}}]}}

preds = pd.DataFrame({{"utt_id": [f"u{{i}}" for i in range(8)], "label": ["ang", "neu"] * 4,
                      "pred": ["ang", "ang", "neu", "neu"] * 2, "fold": 1}})
write_results({out!r}, result(50.0), preds)  # the previous run's results
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    _run(write_results, {out!r}, result(75.0), preds)
except typer.Exit as e:
    sys.exit(e.exit_code)
"""


@pytest.mark.parametrize("limit", [100, 4000], ids=["at-metrics.json", "at-confusion.png"])
def test_disk_full_while_writing_results_is_one_line_no_temp_file_previous_results_whole(limit, tmp_path):
    """``write_results`` (what the train stage's ``write_outputs`` calls) in a child under RLIMIT_FSIZE: the
    limit is hit by the first file (metrics.json) or after the small ones were written (the plot). One line
    naming the file, exit 2; no temp file; the previous run's five files are unchanged (all or none renamed)."""
    out = tmp_path / "results" / "ilt"
    p = subprocess.run([sys.executable, "-c", _RESULTS_CHILD.format(root=str(ROOT), out=str(out), limit=limit)],
                       env=cli_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode != 139, p.stderr[-2000:]
    line = assert_one_line_error(p.returncode, p.stderr, None, str(out), "file size limit reached", "free",
                                 "previous results", "are kept")
    target = "metrics.json" if limit == 100 else "confusion.png"
    assert line.startswith(f"error: {out / target}: "), line
    assert sorted(q.name for q in out.iterdir()) == ["confusion.csv", "confusion.png", "metrics.json",
                                                     "predictions.parquet", "run.json"]  # no temp file
    for name in ("metrics.json", "run.json"):  # the previous results, whole
        text = (out / name).read_text()
        assert "50.0" in text and "75.0" not in text, (name, text)
