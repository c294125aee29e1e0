"""Feature-extraction throughput on one CPU core, as a real-time factor (seconds of audio per wall-second).

    python -m benchmarks.extract [--seconds 300] [--features logmel40 lld17 ...] [--audio-dir DIR]
                                 [--utt-seconds 4] [--repeats 5] [--params params.yaml] [--set wav2vec2.model=DIR]
                                 [--offline] [--out benchmarks/results/extract.json]

* Audio: ``--audio-dir`` (every WAV/FLAC/OGG under it, sorted, read with ``features.audio.load_audio`` and
  concatenated, looped if short) or else deterministic synthetic speech-like audio (harmonic syllables with gliding
  F0, noise bursts, pauses, a noise floor). The JSON says which. The audio is cut into utterances of
  ``--utt-seconds`` (IEMOCAP's mean is ~4.5 s) so per-call overhead counts as it does in the pipeline.
* Features: by default every registered extractor whose input is audio (``features.list_extractors()``), so
  extractors added later (pretrained encoders) are included; one that fails to construct or to run is reported
  with the reason and skipped. ``--params`` reads ``features.<name>`` overrides from a params.yaml (e.g. local demo
  model directories), ``--set name.key=value`` overrides single fields (value parsed as YAML).
* Single core: BLAS/OpenMP/numba thread counts are set to 1 before numpy loads, the process is pinned to one CPU
  (``--cpu``), and ``torch.set_num_threads(1)`` once an extractor has loaded torch. ``--offline`` sets
  ``HF_HUB_OFFLINE=1`` so hub models missing from the cache fail at once (machines without a model hub). One warm-up pass (numba compilation, lazy model loading, cached
  filterbanks) is excluded; then ``--repeats`` timed passes over all utterances, and the median is reported.
  ``rtf`` is wall-clock (the headline number); ``rtf_cpu`` uses the process's CPU time, which is the better estimate
  of a dedicated core's speed when other processes share the machine (check ``loadavg_1m_at_start``/``_at_end``;
  on a shared 2-vCPU machine both vary ~3× with the neighbours' load, so compare runs only at similar load).
* Targets (one core): ``logmel40``/``fbank128``/``mfcc13`` ≥ 1000×, ``lld17`` ≥ 100× (openSMILE's published single-core
  figures are ~125× for MFCC and ~27× for the IS11 LLD set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks import _machine
except ImportError:  # run as a file (python benchmarks/x.py) rather than python -m benchmarks.x
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import _machine

SR = 16000
TARGETS: dict[str, float] = {"logmel40": 1000.0, "fbank128": 1000.0, "mfcc13": 1000.0, "lld17": 100.0}
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "BLIS_NUM_THREADS")
_AUDIO_EXT = (".wav", ".flac", ".ogg")


def _single_core(cpu: int | None) -> dict[str, Any]:
    """Limit this process to one thread per library and one CPU. Call before numpy is imported."""
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    pinned = None
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        pinned = cpu if cpu is not None else allowed[0]
        os.sched_setaffinity(0, {pinned})
    return {"threads_env": {v: "1" for v in _THREAD_VARS}, "pinned_cpu": pinned}


def synthetic_speech(seconds: float, sr: int = SR, seed: int = 0):
    """Deterministic speech-like audio ``(round(seconds·sr),)`` float32, peak 0.5.

    Syllables of 120–350 ms: harmonic source (harmonics up to 4 kHz, 1/k tilt) with F0 gliding ±30% around a
    phrase F0 of 90–240 Hz, Hann envelope; 50% are followed by a fricative-like noise burst (50–150 ms, high-passed),
    20% by a pause (100–400 ms); white noise floor 40 dB below the voiced level.
    """
    import numpy as np
    import scipy.signal

    rng = np.random.default_rng(seed)
    n_total = int(round(seconds * sr))
    parts: list[np.ndarray] = []
    n = 0
    hp_b, hp_a = scipy.signal.butter(2, 2000, "highpass", fs=sr)
    phrase_f0 = rng.uniform(90, 240)
    while n < n_total:
        if rng.random() < 0.15:
            phrase_f0 = rng.uniform(90, 240)
        m = int(rng.uniform(0.12, 0.35) * sr)
        f0 = phrase_f0 * np.linspace(rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.3), m)
        phase = 2 * np.pi * np.cumsum(f0) / sr + rng.uniform(0, 2 * np.pi)
        n_harm = max(1, int(4000 // f0.max()))
        voiced = np.zeros(m)
        for k in range(1, n_harm + 1):
            voiced += np.sin(k * phase) / k
        parts.append(0.3 * voiced * np.hanning(m))
        if rng.random() < 0.5:
            burst = rng.standard_normal(int(rng.uniform(0.05, 0.15) * sr))
            parts.append(0.1 * scipy.signal.lfilter(hp_b, hp_a, burst) * np.hanning(burst.size))
        if rng.random() < 0.2:
            parts.append(np.zeros(int(rng.uniform(0.1, 0.4) * sr)))
        n = sum(p.size for p in parts)
    y = np.concatenate(parts)[:n_total]
    y += 0.003 * rng.standard_normal(y.size)
    return (0.5 * y / np.max(np.abs(y))).astype(np.float32)


def _audio_from_dir(audio_dir: Path, seconds: float):
    import numpy as np

    from features.audio import load_audio

    files = sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in _AUDIO_EXT)
    if not files:
        raise SystemExit(f"--audio-dir {audio_dir}: no {'/'.join(_AUDIO_EXT)} files found under it")
    need, chunks, used, total = int(round(seconds * SR)), [], [], 0
    while total < need:
        for f in files:
            y = load_audio(f)
            chunks.append(y)
            used.append(str(f))
            total += y.size
            if total >= need:
                break
    y = np.concatenate(chunks)[:need]
    return y, {"source": "directory", "audio_dir": str(audio_dir), "files_found": len(files), "files_read": len(used)}


def _machine_info() -> dict[str, Any]:
    import librosa
    import numpy as np
    import scipy

    cpu_model = _machine.cpu_model()
    info = {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "librosa": librosa.__version__,
    }
    for mod in ("numba", "torch", "transformers", "soxr"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", "?")
    try:
        info["loadavg_1m_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def _parse_overrides(params_file: str | None, sets: list[str]) -> dict[str, dict[str, Any]]:
    import yaml

    overrides: dict[str, dict[str, Any]] = {}
    if params_file:
        data = yaml.safe_load(Path(params_file).read_text()) or {}
        for name, values in (data.get("features") or {}).items():
            if isinstance(values, dict):
                overrides[name] = dict(values)
    for item in sets:
        key, sep, value = item.partition("=")
        name, dot, field = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {item!r}: expected NAME.FIELD=VALUE, e.g. --set lld17.f0_min=75")
        overrides.setdefault(name, {})[field] = yaml.safe_load(value)
    return overrides


def _default_features() -> list[str]:
    from features.base import extractor_class, list_extractors

    return [n for n in list_extractors() if extractor_class(n).input == "audio"]


def bench_one(name: str, utts: list, overrides: dict[str, Any], repeats: int, batch_size: int) -> dict[str, Any]:
    """Time one extractor over ``utts`` (list of float32 arrays at 16 kHz); never raises."""
    from features.base import Extractor, get_extractor

    seconds = sum(u.size for u in utts) / SR
    rec: dict[str, Any] = {"status": "ok", "overrides": overrides}
    try:
        ex = get_extractor(name, **overrides)
    except Exception as e:  # noqa: BLE001 — report, skip, go on with the next feature
        return {"status": "skipped", "reason": f"construct failed: {type(e).__name__}: {e}", "overrides": overrides}
    if ex.input != "audio":
        return {"status": "skipped", "reason": f"input is {ex.input!r}, not audio", "overrides": overrides}
    batched = type(ex).extract_batch is not Extractor.extract_batch
    _torch_single_thread()

    def one_pass() -> int:
        frames = 0
        if batched:
            for i in range(0, len(utts), batch_size):
                frames += sum(o.shape[0] for o in ex.extract_batch(utts[i : i + batch_size], SR))
        else:
            for u in utts:
                frames += ex.extract(u, SR).shape[0]
        return frames

    try:
        t0 = time.perf_counter()
        ex.extract(utts[0], SR)  # warm-up: numba JIT, lazy model load, cached filterbanks
        rec["warmup_s"] = time.perf_counter() - t0
        _torch_single_thread()
        times, cpu_times = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            frames = one_pass()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    except Exception as e:  # noqa: BLE001
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}", "overrides": overrides}
    med = statistics.median(times)
    rec.update(
        version=ex.version, config=ex.config.to_dict(), config_hash=ex.config_hash, dim=ex.dim,
        frame_shift=ex.frame_shift, batched=batched, frames=frames, times_s=times, median_s=med,
        rtf=seconds / med, rtf_best=seconds / min(times), cpu_times_s=cpu_times,
        rtf_cpu=seconds / statistics.median(cpu_times), provenance=_jsonable(ex.provenance()),
    )
    if name in TARGETS:
        rec["target_rtf"] = TARGETS[name]
        rec["meets_target"] = rec["rtf"] >= TARGETS[name]
    return rec


def _torch_single_thread() -> None:
    """``torch.set_num_threads(1)`` once torch is loaded (pretrained extractors import it lazily)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.extract", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="seconds of audio (default 300)")
    ap.add_argument("--features", nargs="+", default=None, help="feature names (default: every audio extractor)")
    ap.add_argument("--audio-dir", type=Path, default=None, help="read audio from here instead of synthesising it")
    ap.add_argument("--utt-seconds", type=float, default=4.0, help="utterance length the audio is cut into")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8, help="for extractors with their own extract_batch")
    ap.add_argument("--params", default=None, help="params.yaml whose features.<name> sections override configs")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME.FIELD=VALUE")
    ap.add_argument("--offline", action="store_true",
                    help="set HF_HUB_OFFLINE=1: hub models not in the local cache fail at once instead of retrying")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the first allowed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/extract.json"))
    args = ap.parse_args(argv)

    pinning = _single_core(args.cpu)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import numpy as np

    t0 = time.perf_counter()
    if args.audio_dir is not None:
        y, audio_info = _audio_from_dir(args.audio_dir, args.seconds)
    else:
        y = synthetic_speech(args.seconds, SR, args.seed)
        audio_info = {"source": "synthetic", "generator": "benchmarks.extract.synthetic_speech", "seed": args.seed}
    step = max(1, int(round(args.utt_seconds * SR)))
    utts = [np.ascontiguousarray(y[i : i + step]) for i in range(0, y.size, step)]
    audio_info.update(seconds=y.size / SR, sample_rate=SR, utterances=len(utts), utt_seconds=args.utt_seconds,
                      prepare_s=time.perf_counter() - t0)

    names = args.features or _default_features()
    overrides = _parse_overrides(args.params, args.sets)
    results: dict[str, Any] = {}
    for name in names:
        rec = bench_one(name, utts, overrides.get(name, {}), args.repeats, args.batch_size)
        results[name] = rec
        if rec["status"] == "ok":
            flag = ""
            if "meets_target" in rec:
                flag = f"  (target ≥{rec['target_rtf']:g}×: {'met' if rec['meets_target'] else 'MISSED'})"
            print(f"{name:10s} {rec['rtf']:9.1f}× real time  median {rec['median_s']:.3f}s over "
                  f"{audio_info['seconds']:.0f}s (CPU time: {rec['rtf_cpu']:.1f}×){flag}", flush=True)
        else:
            print(f"{name:10s} {rec['status']}: {rec['reason'][:200]}", flush=True)

    report = {
        "benchmark": "feature extraction throughput, one process, one core",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([sys.executable, "-m", "benchmarks.extract", *(argv if argv is not None else sys.argv[1:])]),
        "audio": audio_info,
        "repeats": args.repeats,
        "machine": {**_machine_info(), **pinning},
        "results": results,
    }
    try:
        report["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    except OSError:
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
