"""params.yaml (demo) and params.iemocap.yaml (the papers' settings) are complete and valid, and dvc.yaml agrees."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import models
from features import extractor_class, list_extractors
from pipeline.core.params import ParamsError, expect, load_params, section
from pipeline.orchestration.dvc_stages import all_items

ROOT = Path(__file__).resolve().parents[2]
PARAM_FILES = ["params.yaml", "params.iemocap.yaml"]


@pytest.mark.parametrize("fname", PARAM_FILES)
def test_every_feature_and_model_section_is_a_valid_config(fname):
    p = load_params(ROOT / fname)
    assert set(p["features"]) == set(list_extractors())
    for name, cfg in p["features"].items():
        extractor_class(name).Config.from_dict(cfg, name=name)  # unknown keys / wrong shapes raise
    assert set(p["models"]) == set(models.list_models())
    for name, cfg in p["models"].items():
        arch = {k: v for k, v in cfg.items() if k not in ("train", "fold_plan", "label_map")}  # flow-level keys
        models.make_config(name, **arch)
        if "train" in cfg:
            from pipeline.training.train import resolve_train_config

            flow_keys = ("models", "baselines", "task_runner", "max_workers", "dask_address", "storage_dir", "runs_dir",
                         "refresh_cache")  # read by the flow, not the loop
            loop = {k: v for k, v in p["train"].items() if k not in flow_keys}
            resolve_train_config(models.get_model_info(name).train, loop, cfg["train"])
    assert set(p["train"]["models"]) <= set(models.list_models())
    assert set(p["extract"]["features"]) <= set(list_extractors())
    assert p["folds"]["plans"] == ["loso", "session_3_1_1", "random_55_25_20", "random_811_10fold",
                                   "random_80_20_seeds"]


def test_iemocap_params_carry_the_papers_model_sizes():
    p = load_params(ROOT / "params.iemocap.yaml")
    flow_keys = ("train", "fold_plan", "label_map", "inputs")  # read by the flow, not model configs
    for name in models.list_models():
        arch = {k: v for k, v in p["models"][name].items() if k not in flow_keys}
        assert arch == models.default_config(name), name
    assert p["models"]["head_fusion"]["label_map"] == models.get_model_info("head_fusion").paper["label_map"]
    assert p["dataset"]["name"] == "iemocap"
    assert p["features"]["wav2vec2"]["model"] == "facebook/wav2vec2-base"


def test_report_depends_on_every_trained_model():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    deps = [d for d in dvc["stages"]["report"]["deps"] if d.endswith("metrics.json")]
    params = load_params(ROOT / "params.yaml")
    runs = all_items(params)  # every model, and the baselines on the other models' fold plans
    assert set(params["train"]["models"]) < set(runs)
    assert sorted(deps) == sorted(f"results/{r}/metrics.json" for r in runs)


def test_params_errors_name_the_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="'dataset.root' not found"):
        section({"dataset": {"name": "demo"}}, "dataset.root")
    with pytest.raises(ParamsError, match="extract.jobs must be int"):
        expect("two", int, "extract.jobs")
    with pytest.raises(ParamsError, match="must be int"):
        expect(True, int, "extract.jobs")  # YAML's `yes` is not a number


def test_ravdess_params_are_valid_and_speaker_independent():
    """params.ravdess.yaml: every section it has is a valid config, its models' features are extracted, and its
    fold plan is grouped by actor (the corpus itself is not needed)."""
    from pipeline.training.train import resolve_train_config

    p = load_params(ROOT / "params.ravdess.yaml")
    assert p["dataset"]["name"] == "manifest" and p["dataset"]["corpus"] == "ravdess"
    assert p["folds"]["plans"] == ["group_kfold"] and p["folds"]["options"]["group_kfold"]["group"] == "speaker"
    for name, cfg in p["features"].items():
        extractor_class(name).Config.from_dict(cfg, name=name)
    loop = {k: v for k, v in p["train"].items() if k not in ("models", "task_runner", "max_workers")}
    for name in p["train"]["models"]:
        req = models.requirements(name, p["models"].get(name))
        assert req.fold_plan == "group_kfold", name
        assert set(req.features) <= set(p["extract"]["features"]), name
        resolve_train_config(models.get_model_info(name).train, loop, req.train)


def test_one_hour_profile_trains_one_model_per_fold_for_every_ensemble_but_the_kept_ones():
    """`make bench-accuracy-1h` overrides seed_ensemble to 1 for exactly the models params.ravdess.yaml makes
    ensembles of, less the Makefile's KEEP_SEEDS (rlc): a model given an ensemble later must not silently push the
    profile past its hour."""
    import re
    import subprocess

    p = load_params(ROOT / "params.ravdess.yaml")
    ensembles = {m for m, cfg in p["models"].items()
                 if m in p["train"]["models"] and ((cfg or {}).get("train") or {}).get("seed_ensemble", 1) > 1}
    dry = subprocess.run(["make", "-n", "-s", "bench-accuracy-1h", "STAMP="], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    kept = set(subprocess.run(["make", "-s", "--eval=print-kept: ; @echo $(KEEP_SEEDS)", "print-kept", "STAMP="],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())
    assert kept == {"rlc"}
    assert set(re.findall(r"models\.(\w+)\.train\.seed_ensemble=1", dry)) == ensembles - kept
    assert "--jobs 2" in dry and "--ablate" not in dry


def test_the_ravdess_file_as_a_template_builds_another_corpus_manifest_and_folds(tmp_path):
    """benchmarks/template_check.py: the README's edits to params.ravdess.yaml for another corpus (own label names,
    no gender column) give a valid params file whose manifest and speaker-independent folds build."""
    from benchmarks.template_check import write_corpus, write_params
    from pipeline.corpus.corpora import build_manifest
    from pipeline.corpus.folds import make_folds
    from tests.conftest import RAVDESS

    if not (RAVDESS / "manifest.csv").is_file():
        pytest.skip(f"RAVDESS not found at {RAVDESS} (set EMOFLOW_RAVDESS to the folder holding manifest.csv)")
    csv_path = write_corpus(RAVDESS, 4, tmp_path / "corpus")
    p = load_params(write_params(ROOT / "params.ravdess.yaml", csv_path))
    assert p["dataset"]["root"] == str(csv_path.parent) and p["folds"]["options"]["group_kfold"]["balance"] is None
    ds = p["dataset"]
    m = build_manifest(ds["name"], ds["root"], **{k: v for k, v in ds["options"].items() if k != "jobs"}, jobs=1)
    assert len(m) == 4 * 28 and sorted(m["label"].unique()) == ["ang", "hap", "neu", "sad"]
    folds = make_folds("group_kfold", m, n_splits=3, val_groups=1, **{k: v for k, v in p["folds"]["options"][
        "group_kfold"].items() if k not in ("n_splits", "val_groups")})
    for f in range(3):
        part = folds[folds["fold"] == f].merge(m[["utt_id", "speaker"]], on="utt_id")
        spk = {s: set(part.loc[part["split"] == s, "speaker"]) for s in ("train", "val", "test")}
        assert not (spk["train"] & spk["test"]) and not (spk["val"] & spk["test"]) and not (spk["train"] & spk["val"])
