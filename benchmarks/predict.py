"""Latency and throughput of ``emoflow predict`` on CPU.

    python -m benchmarks.predict [--workspace .emoflow/predict-demo] [--model ilt] [--warm-repeats 10]
                                 [--n-files 100] [--out benchmarks/results/predict.json]

* Model: the fold ensemble of a cross-validation run in ``<workspace>/results/<model>``. When there is none, a small
  demo workspace is built first (outside the timings): 40 synthetic demo utterances (4 speakers), ``logmel40``,
  the model at its ``params.yaml`` demo size trained 2 epochs on the 5 folds of its paper plan through the real
  Prefect flow. The demo model's accuracy is meaningless; its cost per file is what is measured.
* ``--force`` throughout: a workspace built before a code change is still fine for timing (predict refuses it
  otherwise, rightly, for results).
* Audio: 5-s clips cut from the demo corpus' concatenated speech at distinct offsets (distinct bytes, so no clip
  reuses another's features).
* ``cold_5s``: the whole command in a new process (``python -m pipeline.cli.main predict --model M FILE``: interpreter,
  imports, model load, feature extraction into a temporary store, the fold ensemble, printing), median of 3.
* ``warm_5s``: in-process, model loaded, after one warm-up call (numba compilation, lazy imports): one
  :func:`pipeline.orchestration.predict.predict` call per repeat with a fresh temporary store (extraction included), median.
* ``throughput``: one call on ``--n-files`` distinct 5-s files (a fresh store): files/s and audio-s per wall-s.
* CPU only (``CUDA_VISIBLE_DEVICES=""``), torch on one thread. Wall-clock is the headline; the process CPU time
  (``cpu_*``) is the better estimate of a dedicated core when neighbours share the machine (the load average is
  recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ["CUDA_VISIBLE_DEVICES"] = ""
for _k, _v in {"OMP_NUM_THREADS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
               "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import _machine  # noqa: E402


def build_workspace(ws: Path, model: str) -> None:
    """A small real run (see the module docstring) under ``ws``; untimed."""
    os.environ.setdefault("PREFECT_HOME", str((ws / "prefect-home").resolve()))
    from features import get_extractor
    from features.audio import AudioConfig
    from pipeline.core.params import load_params
    from pipeline.corpus.corpora import build_manifest
    from pipeline.corpus.demo_corpus import generate_demo_corpus
    from pipeline.corpus.folds import make_folds, write_folds
    from pipeline.corpus.manifest import write_manifest
    from pipeline.extraction.extract import extract_features
    from pipeline.orchestration.flows import run_cross_validation

    corpus = ws / "corpus"
    generate_demo_corpus(corpus, n_speakers=4, n_sessions=2, utts_per_speaker=10)
    manifest = build_manifest("demo", corpus)
    write_manifest(manifest, ws / "manifest.parquet")
    params = load_params(ROOT / "params.yaml")
    from models import requirements

    req = requirements(model, (params.get("models") or {}).get(model) or {})
    write_folds(make_folds(req.fold_plan, manifest, seed=0), ws / "folds" / f"{req.fold_plan}.parquet")
    for feature in sorted(set(req.features)):
        cfg = (params.get("features") or {}).get(feature) or {}
        extract_features(get_extractor(feature, **cfg), manifest, ws / "features" / f"{feature}.h5",
                         audio_root=corpus, audio=AudioConfig(), jobs=1, progress=False)
    params["train"] = {**params["train"], "epochs": 2, "num_threads": 1}  # train.models: dropped by the flow
    run_cross_validation(model, manifest_path=ws / "manifest.parquet", folds_dir=ws / "folds",
                         features_dir=(ws / "features").resolve(), results_dir=ws / "results", params=params,
                         storage_dir=(ws / "storage").resolve(), runs_dir=ws / "runs")


def make_clips(ws: Path, n: int, seconds: float = 5.0) -> list[Path]:
    """``n`` distinct ``seconds``-long clips of the corpus' speech (16 kHz WAV) under ``<ws>/clips``."""
    import numpy as np
    import soundfile as sf

    out = ws / "clips"
    out.mkdir(parents=True, exist_ok=True)
    wavs = sorted((ws / "corpus" / "wav").rglob("*.wav"))
    audio = np.concatenate([sf.read(w, dtype="float32")[0] for w in wavs])
    sr, length = 16000, int(seconds * 16000)
    step = max(1, (len(audio) - length) // max(n, 1))
    paths = []
    for i in range(n):
        p = out / f"clip{i:03d}.wav"
        if not p.is_file():
            sf.write(p, audio[i * step : i * step + length], sr, subtype="PCM_16")
        paths.append(p)
    return paths


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_cold(ws: Path, model: str, clip: Path, repeats: int = 3) -> tuple[list[float], list[float]]:
    """(wall s, CPU s) of the whole command in a new process, ``repeats`` times."""
    cmd = [sys.executable, "-m", "pipeline.cli.main", "predict", "--model", model, "--results", str(ws / "results"),
           str(clip), "--force"]
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), _children_cpu()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        wall.append(time.perf_counter() - t0)
        cpu.append(_children_cpu() - c0)
    return wall, cpu


def time_warm(ws: Path, model: str, clips: list[Path], repeats: int, n_files: int) -> dict:
    import torch

    from pipeline.orchestration.predict import collect_inputs, load_predictor, predict

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    p = load_predictor(model, results_dir=ws / "results", force=True)
    load_s = time.perf_counter() - t0
    warnings.simplefilter("ignore")  # the --force warnings, once per call
    predict(p, collect_inputs([clips[-1]]))  # warm-up: numba, lazy imports, filterbanks
    warm, warm_cpu = [], []
    for i in range(repeats):
        one = collect_inputs([clips[i % len(clips)]])
        t0, c0 = time.perf_counter(), time.process_time()
        predict(p, one)
        warm.append(time.perf_counter() - t0)
        warm_cpu.append(time.process_time() - c0)
    many = collect_inputs(clips[:n_files])
    t0, c0 = time.perf_counter(), time.process_time()
    predict(p, many, batch_size=32)
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"load_model_s": load_s, "warm_s": warm, "warm_cpu_s": warm_cpu, "n_folds": len(p.folds),
            "throughput_total_s": total, "throughput_cpu_s": total_cpu, "n_files": n_files}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=ROOT / ".emoflow" / "predict-demo")
    ap.add_argument("--model", default="ilt")
    ap.add_argument("--warm-repeats", type=int, default=10)
    ap.add_argument("--n-files", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict.json")
    a = ap.parse_args(argv)
    ws = a.workspace.resolve()
    built = False
    if not (ws / "results" / a.model / "run.json").is_file():
        t0 = time.perf_counter()
        build_workspace(ws, a.model)
        built = time.perf_counter() - t0
    clips = make_clips(ws, max(a.n_files, a.warm_repeats))
    load_start = os.getloadavg()[0]
    cold, cold_cpu = time_cold(ws, a.model, clips[0])
    w = time_warm(ws, a.model, clips, a.warm_repeats, a.n_files)
    result = {
        "benchmark": "predict", "model": a.model, "n_folds_ensemble": w["n_folds"], "clip_seconds": 5.0,
        "device": "cpu", "torch_threads": 1,
        "cold_5s_s": {"median": statistics.median(cold), "all": cold, "cpu_median": statistics.median(cold_cpu),
                      "what": "new process: python -m pipeline.cli.main predict --model M one 5-s file"},
        "warm_5s_s": {"median": statistics.median(w["warm_s"]), "all": w["warm_s"],
                      "cpu_median": statistics.median(w["warm_cpu_s"]),
                      "what": "in-process predict() after warm-up, extraction into a fresh store included"},
        "load_model_s": w["load_model_s"],
        "throughput": {"n_files": w["n_files"], "total_s": w["throughput_total_s"],
                       "files_per_s": w["n_files"] / w["throughput_total_s"], "cpu_s": w["throughput_cpu_s"],
                       "files_per_cpu_s": w["n_files"] / w["throughput_cpu_s"],
                       "audio_s_per_s": 5.0 * w["n_files"] / w["throughput_total_s"]},
        "workspace": str(ws.relative_to(ROOT)) if ws.is_relative_to(ROOT) else str(ws),
        "workspace_built_s": built or None,
        "machine": {"cpu": _machine.cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_1m_at_start": load_start,
                    "loadavg_1m_at_end": os.getloadavg()[0]},
        "note": "demo model (synthetic corpus, 2 epochs): the timings are real, its predictions are not meaningful",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("cold_5s_s", "warm_5s_s", "throughput")}, indent=2))


if __name__ == "__main__":
    main()
