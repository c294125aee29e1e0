"""Session-wide test settings: offline, no telemetry, a private Prefect home; opt-in Prefect fixtures.

The environment is set at import (before any test imports prefect, transformers or dvc), so no test talks to
the network or to a user's ~/.prefect.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="emoflow-prefect-home-")
for _k, _v in {
    "PREFECT_HOME": _PREFECT_HOME,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    # a test must never reach a developer's real Prefect server
    "PREFECT_API_URL": "",
}.items():
    os.environ[_k] = _v
if not os.environ["PREFECT_API_URL"]:
    del os.environ["PREFECT_API_URL"]

# real speech for the tests that read a handful of its files: ../shared/corpora/ravdess beside the checkout, or
# EMOFLOW_RAVDESS; those tests skip, naming this path, where it is absent
RAVDESS = Path(os.environ.get("EMOFLOW_RAVDESS", Path(__file__).resolve().parents[2] / "shared/corpora/ravdess"))


@pytest.fixture(scope="session")
def prefect_harness():
    """One ``prefect_test_harness`` (a temporary Prefect API + database) for the whole session (~20 s once).

    Request it in flow tests; it yields nothing. Tests that need their own server start one in a subprocess.
    """
    from prefect.testing.utilities import prefect_test_harness

    reset_prefect_events()
    with prefect_test_harness(server_startup_timeout=120):
        yield
    reset_prefect_events()


def reset_prefect_events() -> None:
    """Prefect keeps one process-wide events worker per client *type*, not per API URL: after a test ran flows
    against another server (``temporary_settings(PREFECT_API_URL=...)``), task-run events would keep going
    there. Drain it so the next flow's events reach the server it talks to."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()


# --- a tiny synthetic corpus already "extracted": manifest + fold plan + feature store ---------------------


def build_synthetic_cv(
    root,
    *,
    n_utts: int = 32,
    plan: str = "random_55_25_20",
    plan_options: dict | None = None,
    features: dict | None = None,
    seed: int = 0,
    corpus_labels=("ang", "hap", "neu", "sad"),
) -> dict:
    """Write ``root/{manifest.parquet, folds/<plan>.parquet, features/<name>.h5}`` for a synthetic 4-class
    corpus (3 sessions × 2 speakers) whose features carry a class-dependent offset, so models can learn.

    ``features``: ``{name: (dim, frame_shift)}`` (default ``{"logmel40": (40, 0.01)}``); arrays are
    ``(frames, dim)`` float32 with 30–90 frames. Returns the paths and the manifest.
    """
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from features.store import FeatureWriter, FileMeta
    from pipeline.corpus.folds import make_folds, write_folds
    from pipeline.corpus.manifest import write_manifest

    root = Path(root)
    rng = np.random.default_rng(seed)
    utts = [f"syn{i:03d}" for i in range(n_utts)]
    labels = [corpus_labels[i % len(corpus_labels)] for i in range(n_utts)]
    sessions = [f"Ses0{1 + i % 3}" for i in range(n_utts)]
    genders = ["F" if (i // 3) % 2 else "M" for i in range(n_utts)]
    manifest = pd.DataFrame({
        "utt_id": utts,
        "path": [f"wav/{u}.wav" for u in utts],
        "start": np.nan,
        "end": np.nan,
        "duration": [1.0] * n_utts,
        "label": labels,
        "speaker": [s + g for s, g in zip(sessions, genders, strict=True)],
        "session": sessions,
        "gender": genders,
        "subset": ["improvised"] * n_utts,
        "transcript": ["hello there"] * n_utts,
        "audio_sha256": [f"{i:064x}" for i in range(n_utts)],
    })
    write_manifest(manifest, root / "manifest.parquet")
    folds = make_folds(plan, manifest, seed=seed, **(plan_options or {"n_splits": 2}))
    write_folds(folds, root / "folds" / f"{plan}.parquet")
    sha = dict(zip(utts, manifest["audio_sha256"], strict=True))
    for name, (dim, shift) in (features or {"logmel40": (40, 0.01)}).items():
        meta = FileMeta(name, "1", {"synthetic": True, "dim": dim}, f"cfg-{name}", dim, shift, "audio")
        arrays = {}
        for u, lab in zip(utts, labels, strict=True):
            k = corpus_labels.index(lab)
            x = rng.normal(size=(int(rng.integers(30, 90)), dim)).astype(np.float32)
            x[:, k % dim] += 3.0  # class signal in one bin
            arrays[u] = x - 30.0  # dB-like level
        with FeatureWriter(root / "features" / f"{name}.h5", meta) as w:
            w.plan(sha)
            w.write_batch(arrays, sha)
            w.commit(sha)
    return {
        "root": root,
        "manifest_path": root / "manifest.parquet",
        "folds_dir": root / "folds",
        "features_dir": root / "features",
        "manifest": manifest,
        "folds": folds,
        "plan": plan,
    }


@pytest.fixture
def synthetic_cv(tmp_path):
    """Factory: ``synthetic_cv(**kw) -> dict`` (see :func:`build_synthetic_cv`), under a fresh tmp dir."""
    counter = iter(range(1000))

    def make(**kw):
        return build_synthetic_cv(tmp_path / f"cv{next(counter)}", **kw)

    return make
