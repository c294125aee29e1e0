"""The training-code version: one sha256 over the files that decide what a trained fold computes.

Kept apart from pipeline/orchestration/flows.py (which re-exports it) so that `emoflow predict` can check a model's code version
without importing Prefect (seconds of a cold start).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: source files whose content is part of every fold's cache key
CODE_FILES = ("pipeline/training/data.py", "pipeline/training/train.py", "pipeline/training/metrics.py",
              "pipeline/training/distill.py")


def code_version() -> str:
    """sha256 over the training code and every model module (content, not the git revision: an unrelated
    commit does not invalidate finished folds, any change to the code that trains them does)."""
    h = hashlib.sha256()
    files = [ROOT / f for f in CODE_FILES] + sorted((ROOT / "models").glob("*.py"))
    for p in files:
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()
