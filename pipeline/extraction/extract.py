"""The extract stage: manifest rows → one HDF5 feature file, incrementally, in parallel, resumably.

This is the I/O edge around a pure extractor: it reads audio (or transcripts) named by the manifest, hands them to
the extractor in batches (across ``jobs`` processes for CPU extractors, one batched process for model-based ones),
and writes each finished batch through :class:`features.store.FeatureWriter`.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.audio import AudioConfig, AudioError, load_audio
from features.base import Extractor, get_extractor
from features.errors import ConfigError, EmoflowError, free_bytes, human_bytes
from features.store import FeatureWriter, FileMeta, StoreError, text_sha256
from pipeline.corpus.manifest import audio_root_of

log = logging.getLogger("emoflow.extract")


class ExtractionError(EmoflowError, RuntimeError):
    """An utterance could not be extracted; finished batches are kept for the rerun."""


@dataclass
class ExtractResult:
    path: Path
    total: int
    computed: int
    reused: int
    resumed: int
    seconds: float


def source_checksums(extractor: Extractor, manifest: pd.DataFrame) -> dict[str, str]:
    """Per-utterance content key of the extractor's input: the audio checksum, or the transcript's sha256."""
    if extractor.input == "text":
        return {u: text_sha256(t) for u, t in zip(manifest["utt_id"], manifest["transcript"].fillna(""), strict=True)}
    return dict(zip(manifest["utt_id"], manifest["audio_sha256"], strict=True))


def estimate_output_bytes(extractor: Extractor, rows: list[dict]) -> int | None:
    """Bytes the feature arrays of ``rows`` take, about (float32, ``duration / frame_shift`` frames × ``dim``);
    None when the extractor's output size is not known in advance (text, variable dims)."""
    dim, shift = extractor.dim, extractor.frame_shift
    if dim is None or extractor.input == "text":
        return None
    if shift is None:  # one vector per utterance
        return 4 * dim * len(rows)
    seconds = sum(float(r.get("duration") or 0.0) for r in rows)
    return int(4 * dim * (seconds / shift + len(rows)))


def disk_space_warning(out_path: Path, needed: int | None, free: int | None) -> str | None:
    """A warning when ``free`` bytes are clearly too few: the shards and the merged file coexist until the
    commit, so a run needs about twice the arrays' size."""
    if needed is None or free is None or free >= 2 * needed:
        return None
    return (f"{out_path}: this extraction needs about {human_bytes(2 * needed)} while it runs (shards + the merged "
            f"file), only {human_bytes(free)} free; it will stop with 'no space left' unless you free some space "
            "(finished batches are kept either way)")


def load_utterance_audio(row: dict, audio_root: Path, audio_cfg: AudioConfig) -> np.ndarray:
    """The waveform of one manifest row: its file (relative to ``audio_root`` unless absolute), cut to the row's
    ``start``/``end`` when set (NaN or absent = the whole file), at ``audio_cfg``'s rate (mono float32)."""
    path = Path(row["path"])
    if not path.is_absolute():
        path = Path(audio_root) / path
    return load_audio(path, row.get("start"), row.get("end"), audio_cfg)


def _load_input(extractor: Extractor, row: dict, audio_root: Path, audio_cfg: AudioConfig) -> Any:
    if extractor.input == "text":
        return row.get("transcript") or ""
    return load_utterance_audio(row, audio_root, audio_cfg)


def _compute(extractor: Extractor, rows: list[dict], audio_root: Path, audio_cfg: AudioConfig) -> dict[str, np.ndarray]:
    inputs = []
    for row in rows:
        inputs.append(_load_input(extractor, row, audio_root, audio_cfg))
    try:
        outputs = extractor.extract_batch(inputs, audio_cfg.sample_rate)
    except Exception as e:
        raise ExtractionError(
            f"{extractor.name}: failed on a batch starting at {rows[0]['utt_id']} ({type(e).__name__}: {e})"
        ) from e
    if len(outputs) != len(rows):
        raise ExtractionError(f"{extractor.name}: returned {len(outputs)} arrays for a batch of {len(rows)} "
                              f"(starting at {rows[0]['utt_id']}); report the extractor bug")
    result = {}
    for row, arr in zip(rows, outputs, strict=True):
        arr = np.asarray(arr)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ExtractionError(
                f"{extractor.name}: non-finite values for {row['utt_id']} ({row.get('path')}); "
                "check the audio (clipping/NaN) or report the extractor bug"
            )
        result[row["utt_id"]] = arr
    return result


# Worker-process state: each worker builds its extractor once (lazy models load once per process).
_WORKER: dict[str, Any] = {}


def _worker_init(name: str, config: dict, audio_root: str, audio_cfg: AudioConfig) -> None:
    _WORKER["extractor"] = get_extractor(name, **config)
    _WORKER["audio_root"] = Path(audio_root)
    _WORKER["audio_cfg"] = audio_cfg
    try:
        import torch

        torch.set_num_threads(1)  # one core per worker; the pool provides the parallelism
    except ImportError:
        pass


def _worker_compute(rows: list[dict]) -> dict[str, np.ndarray]:
    return _compute(_WORKER["extractor"], rows, _WORKER["audio_root"], _WORKER["audio_cfg"])


def extract_features(
    extractor: Extractor,
    manifest: pd.DataFrame,
    out_path: str | Path,
    *,
    audio_root: str | Path = ".",
    audio: AudioConfig = AudioConfig(),  # noqa: B008 (frozen, immutable)
    jobs: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> ExtractResult:
    """Bring ``out_path`` up to date with ``manifest`` for ``extractor``; return what was done.

    Only utterances that are new or whose source checksum changed are computed (all of them if the config
    changed). On an error the batches already finished stay on disk and the next call resumes from them.
    """
    import time

    t0 = time.perf_counter()
    out_path = Path(out_path)
    # dataset.root may be the corpus table itself (the `manifest` adapter): its paths are relative to its folder
    audio_root = audio_root_of(audio_root)
    wanted = source_checksums(extractor, manifest)
    meta = FileMeta.from_extractor(extractor, audio=audio.to_dict())
    rows_by_id = {r["utt_id"]: r for r in manifest.to_dict("records")}
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"extract.batch_size must be an integer >= 1, got {batch_size!r} (fix params.yaml: "
                         "extract.batch_size)")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int)):
        raise ConfigError(f"extract.jobs must be an integer (0 = all cores), got {jobs!r} (fix params.yaml: extract.jobs)")
    jobs = (os.cpu_count() or 1) if jobs is None or jobs <= 0 else jobs
    if not extractor.parallel_safe:
        jobs = 1

    with FeatureWriter(out_path, meta) as writer:
        todo = writer.plan(wanted)
        resumed, reused = writer.n_resumed, writer.n_reused
        warning = disk_space_warning(out_path, estimate_output_bytes(extractor, [rows_by_id[u] for u in todo]),
                                     free_bytes(out_path.parent))
        if warning:
            log.warning(warning)  # logging's last-resort handler prints it on stderr when nothing is configured
        log.info("%s: %d utterances, %d to compute (%d reused, %d resumed from a killed run)",
                 extractor.name, len(wanted), len(todo), reused, resumed)
        batches = [[rows_by_id[u] for u in todo[i : i + batch_size]] for i in range(0, len(todo), batch_size)]
        bar = _progress(len(todo), extractor.name, progress)
        try:
            if jobs == 1 or len(batches) <= 1:
                for rows in batches:
                    arrays = _compute(extractor, rows, audio_root, audio)
                    writer.write_batch(arrays, {u: wanted[u] for u in arrays})
                    bar.update(len(rows))
            else:
                _run_pool(extractor, batches, writer, wanted, audio_root, audio, jobs, bar)
        finally:
            bar.close()
        stats = writer.commit(wanted)
    return ExtractResult(out_path, stats["total"], len(todo), reused, resumed, time.perf_counter() - t0)


def extract_feature(
    params: dict[str, Any],
    feature: str,
    manifest_path: str | Path,
    out: str | Path,
    *,
    jobs: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> tuple[ExtractResult, Extractor]:
    """One feature set as ``params`` (a loaded params.yaml) configures it: ``features.<feature>`` builds the
    extractor, ``extract`` gives audio settings, jobs and batch size, ``dataset.root`` the audio. ``jobs`` and
    ``device`` override params (the device is not part of the cache key). The DVC stage and the Prefect flow
    both call this; returns what :func:`extract_features` did and the extractor (for its provenance)."""
    from pipeline.core.params import ParamsError, expect, section
    from pipeline.corpus.manifest import read_manifest

    cfg = section(params, f"features.{feature}", default=None) or {}
    expect(cfg, dict, f"features.{feature}")
    ex_cfg = section(params, "extract", default={}) or {}
    audio = AudioConfig(**(ex_cfg.get("audio") or {}))
    if jobs is None:
        jobs = expect(ex_cfg.get("jobs", 0), int, "extract.jobs")
    batch_size = expect(ex_cfg.get("batch_size", 32), int, "extract.batch_size")
    root = section(params, "dataset.root")
    if device is not None:
        import dataclasses

        from features import extractor_class

        if "device" not in {f.name for f in dataclasses.fields(extractor_class(feature).Config)}:
            raise ParamsError(f"--device: feature {feature!r} has no device setting (it runs on the CPU)")
        cfg = {**cfg, "device": device}
    extractor = get_extractor(feature, **cfg)
    res = extract_features(extractor, read_manifest(manifest_path), out, audio_root=root, audio=audio,
                           jobs=jobs, batch_size=batch_size, progress=progress)
    return res, extractor


def _run_pool(extractor, batches, writer, wanted, audio_root, audio, jobs, bar) -> None:
    # Keep at most 2 batches per worker in flight so a kill loses little, and write in completion order.
    import multiprocessing as mp

    ctx = mp.get_context("spawn" if os.environ.get("EMOFLOW_MP_START") == "spawn" else "forkserver")
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(extractor.name, extractor.config.to_dict(), str(audio_root), audio),
    ) as pool:
        pending = set()
        it = iter(batches)
        for rows in it:
            pending.add(pool.submit(_worker_compute, rows))
            if len(pending) >= 2 * jobs:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                arrays = fut.result()  # re-raises the worker's ExtractionError/AudioError with its message
                writer.write_batch(arrays, {u: wanted[u] for u in arrays})
                bar.update(len(arrays))
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(pool.submit(_worker_compute, nxt))


def _progress(total: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"extract {name}", unit="utt", dynamic_ncols=True, disable=not enabled or total == 0)


__all__ = ["extract_features", "ExtractResult", "ExtractionError", "AudioError", "StoreError", "source_checksums",
           "audio_root_of", "load_utterance_audio"]
