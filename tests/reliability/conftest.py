"""Fixtures for the reliability suite. Helpers live in ``_rel.py`` (this folder is put on ``sys.path`` so test
modules can ``import _rel`` under ``--import-mode=importlib``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _rel  # noqa: E402
from _rel import sha256_file, write_corpus, write_params  # noqa: E402

try:
    import torch

    torch.set_num_threads(1)  # the box is shared: 2 cores for several engineers
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    """A 4-utterance corpus, its manifest and an extracted ``logmel40.h5`` (the thing no failure may touch).

    Returns a dict: root (corpus folder), params, manifest (path), manifest_df, h5, sha (of the h5 bytes).
    """
    from pipeline.cli import stages
    from pipeline.corpus.manifest import read_manifest

    root = tmp_path_factory.mktemp("good")
    write_corpus(root / "corpus")
    params = write_params(root / "params.yaml", root / "corpus" / "corpus.csv")
    stages.manifest(params, root / "manifest.parquet")
    h5 = root / "features" / "logmel40.h5"
    stages.extract(params, "logmel40", root / "manifest.parquet", h5, progress=False)
    return {
        "root": root / "corpus",
        "params": params,
        "manifest": root / "manifest.parquet",
        "manifest_df": read_manifest(root / "manifest.parquet"),
        "h5": h5,
        "sha": sha256_file(h5),
    }


@pytest.fixture
def store_copy(good_store, tmp_path):
    """A private copy of the good feature file (a failing case must leave it byte-identical)."""
    dst = tmp_path / "features" / "logmel40.h5"
    dst.parent.mkdir(parents=True)
    shutil.copy2(good_store["h5"], dst)
    return dst



@pytest.fixture
def rel():
    """The helper module (for tests that prefer a fixture to an import)."""
    return _rel
