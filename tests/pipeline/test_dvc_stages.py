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
from pipeline.orchestration.dvc_stages import CODE, NOT_DEPS, all_items, train_stage_yaml, update_dvc_yaml

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
        runs = [*PARAMS["train"]["models"], *(f"classical-{p}" for p in ("random_55_25_20", "session_3_1_1",
                                                                          "random_811_10fold", "random_80_20_seeds"))]
        assert sorted(stages) == sorted(f"train@{r}" for r in runs)
        for name, stage in stages.items():
            run = name.split("@", 1)[1]
            model, plan = (run, None) if run in PARAMS["models"] else run.split("-", 1)
            req = models.requirements(model, PARAMS["models"][model])
            files = {d.def_path for d in stage.deps if not hasattr(d, "params")}
            params = {k for d in stage.deps if hasattr(d, "params") for k in d.params}
            want = {"data/manifest.parquet", f"data/folds/{plan or req.fold_plan}.parquet", *CODE,
                    *(f"data/features/{f}.h5" for f in req.features)}
            assert files == want, name
            assert f"models.{model}" in params and "train.seed" in params and "train.epochs" in params, params
            assert not params & {f"train.{k}" for k in NOT_DEPS}, params  # device, workers, runner, model lists
            assert stage.cmd.split()[3:9] == ["--model", model, "--plan", plan or req.fold_plan, "--name", run]
        # the report reads every run's scores
        report = next(s for s in repo.index.stages if s.name == "report")
        metrics = sorted(d.def_path for d in report.deps if d.def_path.endswith("metrics.json"))
        assert metrics == sorted(f"results/{r}/metrics.json" for r in runs)
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
    assert block["foreach"] == {"rlc": {"model": "rlc", "plan": "loso", "features": ["lld17", "word2vec"]}}
    assert block["do"]["params"] == ["models.${item.model}", "train.seed", "dataset.name"]
    with pytest.raises(ParamsError, match="models.nope missing"):
        train_stage_yaml({**p, "train": {"models": ["nope"]}})


def test_a_baseline_runs_on_every_other_plan_in_use_when_it_is_trained_itself():
    train = {"models": ["ilt", "rlc", "head_fusion", "classical"], "baselines": ["classical"], "seed": 0}
    p = {**PARAMS, "models": {**PARAMS["models"], "rlc": {**PARAMS["models"]["rlc"], "fold_plan": "loso"}},
         "train": train}
    items = all_items(p)
    # rlc moved onto classical's own plan (loso): no second classical run there; ilt's and head_fusion's plans get one
    assert list(items) == ["ilt", "rlc", "head_fusion", "classical", "classical-random_55_25_20",
                           "classical-random_80_20_seeds"]
    assert items["classical-random_80_20_seeds"] == {"model": "classical", "plan": "random_80_20_seeds",
                                                     "features": ["functionals"]}
    assert list(all_items({**p, "train": {**train, "baselines": ["probe"]}})) == train["models"]  # probe not trained
    with pytest.raises(ParamsError, match="train.baselines lists 'clasical', which has no models.clasical section"):
        all_items({**p, "train": {**train, "baselines": ["clasical"]}})
    assert "baselines" in NOT_DEPS  # editing the list reruns nothing that exists
