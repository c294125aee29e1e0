"""The real DVC pipeline on a small demo: end-to-end repro, a no-op second repro, and a param change that reruns
only the affected stage. Runs `dvc` and `emoflow` as a user would, in a scratch copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    return env


def sh(cwd: Path, *cmd: str, check: bool = True) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def small_params(features: list[str]) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(utts_per_speaker=6, max_duration=3.0)
    params["extract"]["features"] = features
    params["extract"]["jobs"] = 1
    return params


def make_project(tmp: Path, params: dict, stages: tuple[str, ...] = ("demo_data", "manifest", "folds", "extract")) -> Path:
    proj = tmp / "proj"
    proj.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("features", "models", "pipeline"):
        shutil.copytree(ROOT / pkg, proj / pkg, ignore=ignore)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc["stages"] = {k: v for k, v in dvc["stages"].items() if k in stages}
    (proj / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(proj, "git", "init", "-q")
    sh(proj, "dvc", "init", "-q")
    sh(proj, "dvc", "config", "core.analytics", "false")
    return proj


def test_repro_noop_and_param_change_reruns_one_feature(tmp_path):
    proj = make_project(tmp_path, small_params(["logmel40", "mfcc13"]))
    out = sh(proj, "dvc", "repro")
    assert (proj / "data/manifest.parquet").is_file()
    for plan in small_params([])["folds"]["plans"]:
        assert (proj / f"data/folds/{plan}.parquet").is_file(), out
    for feat in ("logmel40", "mfcc13"):
        assert (proj / f"data/features/{feat}.h5").is_file(), out
    assert "extract logmel40" in out  # the one-line stage summary

    again = sh(proj, "dvc", "repro")
    assert "Running stage" not in again, again  # second repro is a no-op
    sh(proj, "dvc", "status")

    mfcc_before = (proj / "data/features/mfcc13.h5").read_bytes()
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["features"]["logmel40"]["n_mels"] = 32
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = sh(proj, "dvc", "repro")
    ran = [line for line in changed.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'extract@logmel40':"], changed
    assert (proj / "data/features/mfcc13.h5").read_bytes() == mfcc_before
    verify = sh(proj, "emoflow", "features", "verify", "logmel40")
    assert "OK" in verify
    info = sh(proj, "emoflow", "features", "info", "logmel40")
    assert '"n_mels": 32' in info
