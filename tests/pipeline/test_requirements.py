"""One answer to "what does model X need": ``models.requirements`` and every consumer that reads it — the DVC
train-stage generator, ``emoflow pull --model``, the flow's input resolution and its plan-file check — agree for
every registered model and the variants a section can select (text on, inputs swapped, plan overridden)."""

from __future__ import annotations

import pytest

import models
from models import list_models, requirements
from pipeline.orchestration import dvc_stages, flows
from pipeline.team import remote

SECTIONS = [(name, {}) for name in list_models()] + [
    ("rlc", {"use_text": True}),
    ("rlc", {"use_text": True, "fold_plan": "loso"}),
    ("ks_transformer", {"inputs": {"audio": "whisper"}}),
    ("cat", {"cnn_to_lstm_only": True}),
    ("multilevel_transformer", {"combine": "concat", "fold_plan": "group_kfold"}),
    ("probe", {"feature": "wav2vec2"}),
    ("ilt", {"fold_plan": "loso", "train": {"epochs": 3}, "label_map": {"exc": "hap"}}),
]


@pytest.mark.parametrize(("name", "section"), SECTIONS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SECTIONS)])
def test_every_consumer_agrees_with_the_resolver(name, section):
    req = requirements(name, section)
    params = {"train": {"models": [name]}, "models": {name: section}}
    assert req.fold_plan == section.get("fold_plan", models.get_model_info(name).fold_plan)
    assert remote.model_features(name, params) == (req.features, req.fold_plan)  # emoflow pull --model
    assert dvc_stages.train_items(params)[name] == {"plan": req.fold_plan, "features": req.features}
    flow_section = {k: v for k, v in section.items() if k not in ("train", "fold_plan", "label_map")}
    specs = models.get_model_info(name).input_specs(**flow_section)  # what resolve_run opens
    assert {k: s.feature for k, s in specs.items()} == req.inputs
    assert sorted(set(req.inputs.values())) == req.features


def test_rlc_with_text_needs_word2vec():
    assert remote.model_features("rlc", {"models": {"rlc": {"use_text": True}}})[0] == ["lld17", "word2vec"]


def test_a_plan_override_is_the_only_plan_file_the_flow_asks_for(tmp_path):
    """models.<name>.fold_plan: the paper's plan file is not required; the missing override's file is named."""
    (tmp_path / "manifest.parquet").write_bytes(b"")
    (tmp_path / "folds").mkdir()
    params = {"models": {"ilt": {"fold_plan": "loso"}}, "train": {}}
    with pytest.raises(FileNotFoundError, match=r"loso\.parquet") as err:
        flows.run_cross_validation("ilt", manifest_path=tmp_path / "manifest.parquet", folds_dir=tmp_path / "folds",
                                   features_dir=tmp_path / "features", results_dir=tmp_path / "results",
                                   params=params)
    assert models.get_model_info("ilt").fold_plan not in str(err.value)
