"""Shared fixtures of the integration tests: a small real git+DVC project built once per session.

The project is a scratch copy of this repository's packages with the real ``dvc.yaml`` stages
(demo_data → manifest → folds → extract) and ``params.yaml`` shrunk to a tiny demo corpus and one feature, so
every test can clone it, push it, pull it and train on it in seconds. Real git, real DVC, no mocks.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

#: what the tiny project computes
FEATURE = "logmel40"
PLAN = "random_55_25_20"  # the fold plan of the logmel40 models (ilt, cat, cnn_transformer, ...)
MODEL = "ilt"


def env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this venv first on PATH, analytics off, offline hub, git identity."""
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
             DO_NOT_TRACK="1", GIT_AUTHOR_NAME="emoflow-test", GIT_AUTHOR_EMAIL="test@example.invalid",
             GIT_COMMITTER_NAME="emoflow-test", GIT_COMMITTER_EMAIL="test@example.invalid",
             OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    e.update(extra)
    return e


def sh(cwd: Path, *cmd: str | os.PathLike, check: bool = True, timeout: float = 300, **extra_env: str) -> str:
    """Run a command the way a user would; fail with its full output."""
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env(**extra_env), capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({p.returncode}) in {cwd}:\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: training settings small enough for CI (2 epochs on a 40-utterance corpus)
TINY_TRAIN = {"epochs": 2, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1}


def tiny_params() -> dict:
    """The repository's params.yaml with the smallest demo corpus every stage accepts, one feature, one fold
    plan, and a tiny configuration of :data:`MODEL`."""
    from models import tiny_config

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(utts_per_speaker=4, min_duration=1.0, max_duration=1.6)
    params["folds"]["plans"] = [PLAN]
    params["extract"]["features"] = [FEATURE]
    params["extract"]["jobs"] = 1
    params.setdefault("models", {})[MODEL] = {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in tiny_config(MODEL).items()}
    params["train"] = {**(params.get("train") or {}), **TINY_TRAIN,
                       "storage_dir": ".emoflow/prefect", "runs_dir": "runs"}
    if "models" in params["train"]:  # the train stage's foreach list
        params["train"]["models"] = [MODEL]
    return params


def _train_stage() -> dict:
    """The real ``train`` stage for :data:`MODEL` under :func:`tiny_params`, as `emoflow stage dvc-yaml` writes it
    (its own feature, plan and result-changing params)."""
    from pipeline.orchestration.dvc_stages import train_stage_yaml

    return yaml.safe_load("stages:\n" + train_stage_yaml(tiny_params()))["stages"]["train"]


def _tiny_dvc_yaml() -> dict:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = {k: v for k, v in dvc["stages"].items() if k in ("demo_data", "manifest", "folds", "extract")}
    demo = stages.get("demo_data")
    if demo:  # logmel40 needs no pretrained encoders: skip building the tiny random-weight models
        demo["cmd"] = demo["cmd"].replace(" --models-out data/models", "")
        demo["outs"] = [o for o in demo.get("outs", []) if o != "data/models"]
    stages["train"] = _train_stage()
    dvc["stages"] = stages
    return dvc


@pytest.fixture(scope="session")
def dvc_project(tmp_path_factory) -> Path:
    """A committed git+DVC project with ``dvc repro`` done up to the features (manifest, one fold plan, one
    feature file); its ``train@<MODEL>`` stage has not run.

    Session-scoped and treated as read-only: tests copy it (:func:`copy_project`) before changing it.
    """
    proj = tmp_path_factory.mktemp("dvcproj") / "proj"
    proj.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("features", "models", "pipeline"):
        shutil.copytree(ROOT / pkg, proj / pkg, ignore=ignore)
    (proj / "dvc.yaml").write_text(yaml.safe_dump(_tiny_dvc_yaml(), sort_keys=False))
    (proj / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    shutil.copy(ROOT / ".gitignore", proj / ".gitignore")
    sh(proj, "git", "init", "-q", "-b", "main")
    sh(proj, "dvc", "init", "-q")
    sh(proj, "dvc", "config", "core.analytics", "false")
    # everything up to the features; training is what the tests (the teammate) do
    out = sh(proj, "dvc", "repro", f"extract@{FEATURE}", f"folds@{PLAN}", timeout=600)
    assert (proj / f"data/features/{FEATURE}.h5").is_file(), out
    sh(proj, "git", "add", "-A")
    sh(proj, "git", "commit", "-q", "-m", "tiny emoflow project")
    return proj


def copy_project(src: Path, dst: Path) -> Path:
    """A full copy (git history, DVC cache, workspace data) that a test may change freely."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def it():
    """The helpers above for test modules (``--import-mode=importlib`` cannot import conftest by name)."""
    import types

    return types.SimpleNamespace(sh=sh, env=env, free_port=free_port, copy_project=copy_project,
                                 tiny_params=tiny_params, ROOT=ROOT, BIN=BIN, FEATURE=FEATURE, PLAN=PLAN,
                                 MODEL=MODEL, TINY_TRAIN=TINY_TRAIN)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real ``prefect server`` (subprocess, 127.0.0.1, free port, its own PREFECT_HOME) for the session."""
    from pipeline.orchestration.server import start_server

    home = tmp_path_factory.mktemp("prefect-server")
    srv = start_server("127.0.0.1", None, home=home, timeout=120)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def pushed_project(dvc_project, tmp_path_factory):
    """Clone #1 (whoever computed the features) with a shared-disk remote as default, everything pushed."""
    from pipeline.team import remote as rm

    base = tmp_path_factory.mktemp("shared")
    store = base / "team-remote"
    clone1 = copy_project(dvc_project, base / "clone1")
    remotes = rm.add_remote("team", str(store), repo=clone1, default=True)
    assert remotes["team"]["url"] == str(store) and remotes["team"]["scope"] == "project"
    sh(clone1, "git", "commit", "-q", "-m", "team remote", ".dvc/config")
    rm.push_targets([], repo=clone1)
    assert any((store / "files" / "md5").rglob("*")), "push wrote nothing to the remote"
    return clone1, store
