"""train.distill.unlabeled: training utterances outside the model's label map as teacher-only items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import tiny_config
from models.baselines import ProbeConfig, fit_logistic
from pipeline.orchestration.flows import FlowError, apply_label_map, label_mapping
from pipeline.training.data import UNLABELED, DataError, class_labels
from pipeline.training.distill import soften, speaker_groups
from pipeline.training.train import (
    TrainError,
    class_loss,
    loss_weights,
    prepare_fold,
    resolve_train_config,
    teacher_targets,
    train_fold,
)
from tests.pipeline.test_distill import (  # the distillation tests' fast loop and stored features
    FAST,
    FEATURES,
)

FOUR = {"ang": "ang", "hap": "hap", "neu": "neu", "sad": "sad"}  # the corpus has a fifth class, cal
UNLAB = {"feature": "whisper", "groups": 2, "unlabeled": True}


@pytest.fixture
def five_class_cv(synthetic_cv):
    return synthetic_cv(features=FEATURES, n_utts=50, corpus_labels=("ang", "cal", "hap", "neu", "sad"))


def test_outside_the_map_only_training_rows_stay_and_without_a_label(five_class_cv):
    m, f = five_class_cv["manifest"], five_class_cv["folds"]
    m2, f2 = apply_label_map(m, f, FOUR, unlabeled=True)
    cal = set(m.loc[m["label"] == "cal", "utt_id"])
    assert set(m2.loc[m2["label"] == "", "utt_id"]) == cal and class_labels(m2) == sorted(FOUR)
    kept = f2[f2["utt_id"].isin(cal)]
    assert set(kept["split"]) == {"train"}  # cal never reaches validation or test
    assert len(kept) == ((f["utt_id"].isin(cal)) & (f["split"] == "train")).sum()
    # every labelled row of the plan is as the plain label map leaves it
    _, plain = apply_label_map(m, f, FOUR)
    assert f2[~f2["utt_id"].isin(cal)].reset_index(drop=True).equals(plain)
    assert label_mapping(m2) == FOUR  # the run's recorded map has no entry for the unlabeled items
    with pytest.raises(FlowError, match="set models.<name>.label_map"):
        apply_label_map(m, f, None, unlabeled=True)


def test_unlabeled_items_carry_no_task_loss_and_no_class_weight():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0]], requires_grad=True)
    y = torch.tensor([0, UNLABELED, 2])
    cfg = resolve_train_config({})
    assert float(class_loss(logits, y, cfg, None).detach()) == pytest.approx(
        float(F.cross_entropy(logits[[0, 2]], y[[0, 2]]).detach()))
    none = class_loss(logits, torch.full((3,), UNLABELED), cfg, None)
    none.backward()
    assert float(none.detach()) == 0.0 and logits.grad is not None and float(logits.grad.abs().sum()) == 0.0
    w = loss_weights({"class_weights": "balanced"}, [0, 0, 1, UNLABELED, UNLABELED, UNLABELED], 2, torch.device("cpu"))
    assert w.tolist() == pytest.approx([0.75, 1.5])  # 3 labelled items: 3 / (2 · 2) and 3 / (2 · 1)


def test_unlabeled_setting_is_checked_and_refused_where_it_does_not_apply(five_class_cv):
    with pytest.raises(TrainError, match="distill.unlabeled must be true or false"):
        resolve_train_config({}, {"distill": {"feature": "whisper", "unlabeled": "yes"}})
    assert resolve_train_config({}, {"distill": UNLAB})["distill"]["unlabeled"] is True
    m2, f2 = apply_label_map(five_class_cv["manifest"], five_class_cv["folds"], FOUR, unlabeled=True)
    with pytest.raises(DataError, match="unless train.distill.unlabeled is set"):  # unlabeled rows, setting off
        prepare_fold("ilt", 0, manifest=m2, folds=f2, features_dir=five_class_cv["features_dir"],
                     model_params=tiny_config("ilt"), train_cfg=resolve_train_config({}, FAST))
    leaked = f2.copy()
    leaked.loc[leaked["utt_id"].isin(m2.loc[m2["label"] == "", "utt_id"]) & (leaked["fold"] == 0), "split"] = "test"
    with pytest.raises(DataError, match="unlabeled utterances in the validation/test"):
        prepare_fold("ilt", 0, manifest=m2, folds=leaked, features_dir=five_class_cv["features_dir"],
                     model_params=tiny_config("ilt"), train_cfg=resolve_train_config({}, {**FAST, "distill": UNLAB}))


def test_the_teacher_scores_unlabeled_items_but_fits_only_labelled_ones(five_class_cv):
    from features.store import FeatureReader

    cv = five_class_cv
    m2, f2 = apply_label_map(cv["manifest"], cv["folds"], FOUR, unlabeled=True)
    cfg = resolve_train_config({}, {**FAST, "distill": UNLAB})
    data = prepare_fold("ilt", 0, manifest=m2, folds=f2, features_dir=cv["features_dir"],
                        model_params=tiny_config("ilt"), train_cfg=cfg)
    y = np.array(data.label_of["train"])
    assert (y == UNLABELED).sum() > 0 and data.labels == sorted(FOUR)
    assert all(v != UNLABELED for s in ("val", "test") for v in data.label_of[s])
    soft = teacher_targets(data, m2, f2, cv["features_dir"], cfg, torch.device("cpu"), "t", lambda s: None)
    assert soft.shape == (len(y), 4) and np.allclose(soft.sum(axis=1), 1.0)
    # independently: each speaker group's rows from a logistic regression on the OTHER groups' labelled rows
    r = FeatureReader(cv["features_dir"] / "whisper.h5")
    pool = {u: np.concatenate([r[u].mean(axis=0), r[u].std(axis=0)]) for s in ("train", "val") for u in data.splits[s]}
    x = np.stack([pool[u] for u in data.splits["train"]])
    xv, yv = np.stack([pool[u] for u in data.splits["val"]]), np.array(data.label_of["val"])
    spk = m2.set_index("utt_id")["speaker"]
    groups = speaker_groups([spk[u] for u in data.splits["train"]], 2)
    lab = y != UNLABELED
    expected = np.zeros_like(soft)
    for g in np.unique(groups):
        fit = (groups != g) & lab
        w, b, mean, scale, _ = fit_logistic(x[fit], y[fit], xv, yv, 4, ProbeConfig(), "ua")
        logits = ((x[groups == g] - mean) / scale) @ w.T + b
        expected[groups == g] = torch.softmax(torch.tensor(logits), dim=1).numpy()
    assert np.abs(soft - soften(expected, 2.0)).max() < 1e-3  # float32 pooling vs float64 here; lbfgs tolerance


def test_a_fold_trains_with_unlabeled_items_and_tests_on_labelled_ones_only(five_class_cv):
    cv = five_class_cv
    m2, f2 = apply_label_map(cv["manifest"], cv["folds"], FOUR, unlabeled=True)
    m1, f1 = apply_label_map(cv["manifest"], cv["folds"], FOUR)

    def run(manifest, folds, distill):
        return train_fold("ilt", 0, manifest=manifest, folds=folds, features_dir=cv["features_dir"],
                          model_params=tiny_config("ilt"), train_params={**FAST, "distill": distill},
                          log=lambda s: None)

    wide, plain = run(m2, f2, UNLAB), run(m1, f1, {**UNLAB, "unlabeled": False})
    n_cal = int(((f2["fold"] == 0) & (f2["split"] == "train") & f2["utt_id"].isin(
        m2.loc[m2["label"] == "", "utt_id"])).sum())
    assert wide.extras["unlabeled_in_train"] == n_cal > 0 and "unlabeled_in_train" not in plain.extras
    assert wide.predictions["utt_id"] == plain.predictions["utt_id"]  # same labelled test utterances
    assert set(wide.predictions["label"]) <= set(FOUR)
    assert [h["train_loss"] for h in wide.history] != [h["train_loss"] for h in plain.history]
