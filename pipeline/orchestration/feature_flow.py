"""Prefect flow ``extract``: one feature set into the HDF5 store, startable from the Prefect UI.

A thin wrapper over :func:`pipeline.extraction.extract.extract_feature` (the library call the DVC stage makes too), or over
``dvc repro extract@<feature>`` with ``use_dvc=True`` so that ``dvc.lock`` records the result and
``emoflow push`` can share it. Served as deployments ``extract/<feature>`` by ``emoflow serve``
(:func:`pipeline.orchestration.server.serve_deployments`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact


@flow(name="extract", log_prints=True, description="Extract one feature set into the HDF5 feature store")
def extract_flow(
    feature: str,
    params_path: str = "params.yaml",
    manifest_path: str = "data/manifest.parquet",
    out: str | None = None,
    jobs: int | None = None,
    use_dvc: bool = False,
) -> dict[str, Any]:
    """Extract ``feature`` for every utterance of the manifest into ``out`` (default
    ``data/features/<feature>.h5``); incremental, so a rerun computes only new or changed utterances.

    Returns (and publishes as a Markdown artifact) the file's extractor, utterance count, dimension, config
    hash, random-weight flag, size and the seconds taken.
    """
    logger = get_run_logger()
    out = out or f"data/features/{feature}.h5"
    t0 = time.perf_counter()
    if use_dvc:
        # DVC decides whether the stage must run and records the output in dvc.lock (ready for `dvc push`)
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro", f"extract@{feature}"], text=True,
                              capture_output=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
        logger.info(proc.stdout[-4000:])
        if proc.returncode != 0:
            raise RuntimeError(f"dvc repro extract@{feature} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    else:
        from pipeline.core.params import load_params
        from pipeline.extraction.extract import extract_feature

        extract_feature(load_params(params_path), feature, manifest_path, out, jobs=jobs, progress=False)
    from features.store import info

    meta = info(out)
    summary = {k: meta.get(k) for k in ("extractor", "n_utts", "dim", "config_hash", "random_weights", "size_bytes")}
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["path"] = str(out)
    create_markdown_artifact(
        key=f"features-{feature}".lower().replace("_", "-"),
        markdown="\n".join([f"# Feature `{feature}`", "", "| field | value |", "|---|---|",
                            *(f"| {k} | {v} |" for k, v in summary.items())]),
        description=f"feature file {out}",
    )
    logger.info(f"extract {feature}: {summary}")
    return summary
