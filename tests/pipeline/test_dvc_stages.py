"""Each train@<model> stage of dvc.yaml declares exactly what it reads (pipeline/orchestration/dvc_stages.py), checked through
DVC's own resolution of the committed dvc.yaml, and `dvc status` ignores runtime-only settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import models
from pipeline.core.params import ParamsError, load_params
from pipeline.orchestration.dvc_stages import CODE, NOT_DEPS, train_stage_yaml, update_dvc_yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PARAMS = load_params(ROOT / "params.yaml")


def _dvc(proj: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    p = subprocess.run(args, cwd=proj, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


@pytest.fixture
def proj(tmp_path):
    """A DVC project holding the committed dvc.yaml and params.yaml (no data)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, proj / name)
    _dvc(proj, "git", "init", "-q")
    _dvc(proj, "dvc", "init", "-q")
    return proj


def test_committed_dvc_yaml_is_the_generated_one():
    text = (ROOT / "dvc.yaml").read_text()
    assert update_dvc_yaml(text, PARAMS) == text, "dvc.yaml is stale: run `emoflow stage dvc-yaml`"
    for name in PARAMS["train"]["models"]:  # every input is some stage's output: `dvc repro` can make it
        req = models.requirements(name, PARAMS["models"][name])
        assert set(req.features) <= set(PARAMS["extract"]["features"]), name
        assert req.fold_plan in PARAMS["folds"]["plans"], name


def test_train_stages_depend_on_their_own_features_plan_and_result_params(proj):
    from dvc.repo import Repo

    with Repo(str(proj)) as repo:
        stages = {s.name: s for s in repo.index.stages if s.name.startswith("train@")}
        assert sorted(stages) == sorted(f"train@{m}" for m in PARAMS["train"]["models"])
        for name, stage in stages.items():
            model = name.split("@", 1)[1]
            req = models.requirements(model, PARAMS["models"][model])
            files = {d.def_path for d in stage.deps if not hasattr(d, "params")}
            params = {k for d in stage.deps if hasattr(d, "params") for k in d.params}
            want = {"data/manifest.parquet", f"data/folds/{req.fold_plan}.parquet", *CODE,
                    *(f"data/features/{f}.h5" for f in req.features)}
            assert files == want, name
            assert f"models.{model}" in params and "train.seed" in params and "train.epochs" in params, params
            assert not params & {f"train.{k}" for k in NOT_DEPS}, params  # device, workers, runner, model list
    # ks_transformer reads Whisper in the demo (an input swap): its stage must not depend on wav2vec2
    assert "whisper" in models.requirements("ks_transformer", PARAMS["models"]["ks_transformer"]).features


def test_runtime_settings_and_other_features_leave_a_train_stage_up_to_date(proj):
    """`dvc commit` records train@ilt as if it had run; then only what ilt reads makes it stale."""
    req = models.requirements("ilt", PARAMS["models"]["ilt"])
    for path in ["data/manifest.parquet", f"data/folds/{req.fold_plan}.parquet", "data/features/mfcc13.h5",
                 *(f"data/features/{f}.h5" for f in req.features), *(f"{c}/x.py" if "." not in c else c
                                                                     for c in CODE),
                 *(f"results/ilt/{o}" for o in ("predictions.parquet", "confusion.png", "run.json",
                                                 "metrics.json", "confusion.csv"))]:
        (proj / path).parent.mkdir(parents=True, exist_ok=True)
        (proj / path).write_text(path)
    (proj / "results/ilt/metrics.json").write_text('{"wa": {"mean": 1.0}}')
    (proj / "results/ilt/confusion.csv").write_text("actual,predicted\nang,ang\n")
    _dvc(proj, "dvc", "commit", "-f", "-q", "train@ilt")
    assert "up to date" in _dvc(proj, "dvc", "status", "train@ilt")

    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["train"].update(device="cuda", max_workers=4, num_workers=2, task_runner="dask")
    params["train"]["models"] = ["ilt"]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (proj / "data/features/mfcc13.h5").write_text("re-extracted")  # another model's feature
    assert "up to date" in _dvc(proj, "dvc", "status", "train@ilt")

    params["train"]["epochs"] += 1
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(proj, "dvc", "status", "train@ilt")
    assert "train.epochs" in out and "modified" in out, out
    params["train"]["epochs"] -= 1
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (proj / f"data/features/{req.features[0]}.h5").write_text("re-extracted")  # ilt's own feature
    assert f"data/features/{req.features[0]}.h5" in _dvc(proj, "dvc", "status", "train@ilt")


def test_runtime_only_keys_cover_the_training_loops():
    from pipeline.orchestration.dvc_stages import RUNTIME_ONLY
    from pipeline.training.train import RUNTIME_KEYS

    assert set(RUNTIME_KEYS) <= set(RUNTIME_ONLY)  # a new runtime key of the loop must not become a DVC param


def test_generator_follows_overrides_and_names_a_missing_section():
    p = {**PARAMS, "models": {**PARAMS["models"], "rlc": {**PARAMS["models"]["rlc"], "use_text": True,
                                                           "fold_plan": "loso"}},
         "train": {"models": ["rlc"], "seed": 1, "device": "cpu", "max_workers": 2}}
    block = yaml.safe_load("stages:\n" + train_stage_yaml(p))["stages"]["train"]
    assert block["foreach"] == {"rlc": {"plan": "loso", "features": ["lld17", "word2vec"]}}
    assert block["do"]["params"] == ["models.${key}", "train.seed", "dataset.name"]
    with pytest.raises(ParamsError, match="models.nope missing"):
        train_stage_yaml({**p, "train": {"models": ["nope"]}})
