"""Helpers for the reliability suite (imported by its test modules as ``_rel``): seeded WAV writers, corpus and
params writers, file checksums, and runners for the ``emoflow`` CLI (in-process and as a real subprocess)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

ROOT = Path(__file__).resolve().parents[2]
SR = 16000
LABELS = ("ang", "hap", "neu", "sad")


def sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tone(seconds: float, sr: int = SR, freq: float = 220.0, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """A seeded sine + a little white noise, float32 ``(round(seconds*sr),)``."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    noise = np.random.default_rng(seed).standard_normal(n) * 0.01
    return (amp * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_wav(path: Path, data: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def write_corpus(root: Path, n: int = 4, transcripts: list | None = None) -> Path:
    """``root/wav/g<i>.wav`` (0.3–0.45 s tones) + ``root/corpus.csv`` (utt_id,path,label,speaker,session,transcript)."""
    rows = ["utt_id,path,label,speaker,session,transcript"]
    for i in range(n):
        write_wav(root / "wav" / f"g{i}.wav", tone(0.3 + 0.05 * i, freq=200 + 40 * i, seed=i))
        text = transcripts[i] if transcripts else f"hello number {i}"
        rows.append(f"g{i},wav/g{i}.wav,{LABELS[i % 4]},spk{i % 2},Ses0{1 + i % 2},{text}")
    (root / "corpus.csv").write_text("\n".join(rows) + "\n")
    return root / "corpus.csv"


def write_params(path: Path, dataset_root: Path | str, **sections) -> Path:
    """A minimal params.yaml for the manifest adapter; ``sections`` override/extend (e.g. ``extract={...}``)."""
    params = {
        "dataset": {"name": "manifest", "root": str(dataset_root), "options": {}},
        "folds": {"seed": 0, "options": {}},
        "extract": {"jobs": 1, "batch_size": 2},
        "features": {"logmel40": {}},
    }
    params.update(sections)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def tone_manifest(root: Path, n: int, seconds, freq: float, step: float):
    """``n`` tones ``root/wav/u<i>.wav`` (``seconds``: a number or ``f(i)``; frequency ``freq + step * i``) and their
    manifest DataFrame (:func:`manifest_rows`, duration 1 s as recorded there)."""
    rows = []
    for i in range(n):
        dur = seconds(i) if callable(seconds) else seconds
        write_wav(root / "wav" / f"u{i:02d}.wav", tone(dur, freq=freq + step * i, seed=i))
        rows.append({"utt_id": f"u{i:02d}", "path": f"wav/u{i:02d}.wav"})
    return manifest_rows(root, rows)


def manifest_rows(root: Path, rows: list[dict]):
    """A manifest DataFrame for files under ``root`` written directly (bypassing the corpus adapter, as a stale or
    hand-edited manifest would): checksum from the bytes when the file exists, duration 1 s unless given."""
    import pandas as pd

    from pipeline.corpus.manifest import audio_checksum

    out = []
    for r in rows:
        p = root / r["path"]
        sha = audio_checksum(p) if p.is_file() else hashlib.sha256(r["path"].encode()).hexdigest()
        out.append({
            "utt_id": r["utt_id"], "path": r["path"], "start": np.nan, "end": np.nan,
            "duration": r.get("duration", 1.0), "label": r.get("label", "neu"), "speaker": "s1",
            "session": "Ses01", "gender": "", "subset": "", "transcript": r.get("transcript", ""),
            "audio_sha256": sha,
        })
    return pd.DataFrame(out)


# --- the CLI ----------------------------------------------------------------------------------------------------
def cli_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               DVC_NO_ANALYTICS="1", DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    return env


def run_cli_subprocess(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m pipeline.cli.main <args>`` as a user runs ``emoflow <args>`` (a fresh interpreter)."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli.main", *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def run_cli(args: list[str]):
    """The CLI in-process (typer's CliRunner): ``(exit_code, stdout, stderr, exception)``."""
    from typer.testing import CliRunner

    from pipeline.cli.main import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    exc = None if res.exception is None or isinstance(res.exception, SystemExit) else res.exception
    return res.exit_code, res.stdout, res.stderr, exc


def assert_one_line_error(code: int, stderr: str, exc, *needles: str) -> str:
    """Exit 2, no traceback, exactly one non-empty stderr line starting with ``error:`` that contains every
    needle (a file/key name and what to do)."""
    assert exc is None, f"uncaught {type(exc).__name__}: {exc}"
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --- an instrumented extractor (same numbers and content key as logmel40) -------------------------------------
def counting_logmel(count_file: str | None = None, kill_at: int = 0, sleep: float = 0.0):
    """A ``logmel40`` extractor (same name, version and config, hence the same content key and arrays) that
    counts its calls (``.calls``, and one line per call appended to ``count_file``), sleeps ``sleep`` seconds per
    utterance, and SIGKILLs its own process at call number ``kill_at`` (0: never)."""
    import signal
    import time

    from features.acoustic import LogMel

    class CountingLogMel(LogMel):
        calls = 0

        def extract(self, waveform, sample_rate):
            type(self).calls += 1
            if count_file:
                with open(count_file, "a") as f:
                    f.write("1\n")
            if kill_at and type(self).calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if sleep:
                time.sleep(sleep)
            return super().extract(waveform, sample_rate)

    CountingLogMel.name = "logmel40"
    return CountingLogMel()


def kill_on_replace(match: str, nth: int = 1) -> None:
    """Make the ``nth`` ``os.replace`` whose destination path contains ``match`` (or, for a ``match`` starting
    with ``/``, ends with it) SIGKILL the process instead (the temp file is complete, the rename never happens):
    a power cut at the worst moment of a write."""
    import signal

    real = os.replace
    seen = {"n": 0}

    def replace(src, dst, *a, **kw):
        d = os.fspath(dst)
        if d.endswith(match) if match.startswith("/") else match in d:
            seen["n"] += 1
            if seen["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **kw)

    os.replace = replace
