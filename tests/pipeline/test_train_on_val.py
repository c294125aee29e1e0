"""train.train_on_val: the validation speakers join the training split where nothing is picked on them (a fixed
schedule), and a closed-form fit picks its C on the held-out validation split before refitting on train + val."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import tiny_config
from models.baselines import ProbeConfig, fit_logistic
from pipeline.training.distill import crossfit_probabilities, soften, speaker_groups
from pipeline.training.train import (
    TrainError,
    prepare_fold,
    resolve_train_config,
    teacher_targets,
    train_fold,
)

FAST = {"epochs": 2, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1, "select_on": "last"}
FEATURES = {"logmel40": (40, 0.01), "whisper": (16, 0.02)}


def _pooled(features_dir, ids) -> np.ndarray:
    """Mean and std over frames of each stored Whisper array: the probe's input, computed here independently."""
    from features.store import FeatureReader

    r = FeatureReader(features_dir / "whisper.h5")
    return np.stack([np.concatenate([r[u].mean(axis=0), r[u].std(axis=0)]) for u in ids])


def test_train_on_val_is_refused_where_validation_picks_something():
    assert "train_on_val" not in resolve_train_config({})  # unset: configs and cache keys as before
    assert resolve_train_config({}, {"train_on_val": True, "select_on": "last"})["train_on_val"] is True
    assert resolve_train_config({}, {"train_on_val": True, "fit": "sklearn", "select_on": "val_ua"})["train_on_val"]
    for bad in ({"select_on": "val_ua"}, {"select_on": "last", "patience": 5}):
        with pytest.raises(TrainError, match="select_on: last and patience: null"):
            resolve_train_config({}, {"train_on_val": True, **bad})
    with pytest.raises(TrainError, match="true or false"):
        resolve_train_config({}, {"train_on_val": "yes", "select_on": "last"})
    assert resolve_train_config({}, {"train_on_val": False, "select_on": "val_ua"})["train_on_val"] is False


def test_a_fixed_schedule_fold_trains_on_train_plus_validation_and_says_so(synthetic_cv):
    cv = synthetic_cv(features=FEATURES)

    def fold_data(**train):
        return prepare_fold("ilt", 0, manifest=cv["manifest"], folds=cv["folds"], features_dir=cv["features_dir"],
                            model_params=tiny_config("ilt"), train_cfg=resolve_train_config({}, {**FAST, **train}))

    held, merged = fold_data(), fold_data(train_on_val=True)
    assert merged.splits["train"] == sorted(held.splits["train"] + held.splits["val"])
    assert merged.splits["val"] == held.splits["val"] and merged.splits["test"] == held.splits["test"]
    assert not set(merged.splits["train"]) & set(merged.splits["test"])  # the test fold stays out

    def run(**train):
        return train_fold("ilt", 0, manifest=cv["manifest"], folds=cv["folds"], features_dir=cv["features_dir"],
                          model_params=tiny_config("ilt"), train_params={**FAST, **train}, log=lambda s: None)

    plain, more = run(), run(train_on_val=True)
    assert more.n_train == plain.n_train + plain.n_val and more.n_test == plain.n_test
    assert more.extras["val_in_train"] is True and "val_in_train" not in plain.extras
    assert more.predictions["utt_id"] == plain.predictions["utt_id"]
    with pytest.raises(TrainError, match="select_on: last"):
        run(train_on_val=True, select_on="val_ua")


def test_closed_form_picks_c_on_held_out_validation_then_refits_on_train_plus_val(synthetic_cv):
    cv = synthetic_cv(features=FEATURES)
    grid = [0.001, 0.01, 0.1, 1.0]

    def run(**train):
        return train_fold("probe", 0, manifest=cv["manifest"], folds=cv["folds"], features_dir=cv["features_dir"],
                          model_params={"feature": "whisper", "head": "linear", "c_grid": grid},
                          train_params={"fit": "sklearn", "select_on": "val_ua", "num_threads": 1, **train},
                          log=lambda s: None)

    plain, refit = run(), run(train_on_val=True)
    picked = lambda r: [h["C"] for h in r.history if h["selected"]]  # noqa: E731
    assert picked(refit) == picked(plain)  # the same pick, on the same held-out validation split
    assert refit.n_train == plain.n_train + plain.n_val
    # the refit is the logistic regression on train + val with that C (computed here independently)
    data = prepare_fold("probe", 0, manifest=cv["manifest"], folds=cv["folds"], features_dir=cv["features_dir"],
                        model_params={"feature": "whisper", "head": "linear"},
                        train_cfg=resolve_train_config({}, {"train_on_val": True, "fit": "sklearn"}))
    pool = lambda ids: _pooled(cv["features_dir"], ids)  # noqa: E731
    w, b, mean, scale, _ = fit_logistic(pool(data.splits["train"]), np.array(data.label_of["train"]),
                                        pool(data.splits["val"]), np.array(data.label_of["val"]), len(data.labels),
                                        ProbeConfig(), c_grid=picked(plain))
    logits = ((pool(data.splits["test"]) - mean) / scale) @ w.T + b
    ours = np.stack([refit.predictions[f"prob_{c}"] for c in data.labels], axis=1)
    order = [data.splits["test"].index(u) for u in refit.predictions["utt_id"]]
    expected = torch.softmax(torch.as_tensor(logits[order]), dim=1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-3)
    assert not np.allclose(ours, np.stack([plain.predictions[f"prob_{c}"] for c in data.labels], axis=1), atol=1e-3)


def test_the_distill_teacher_crossfits_over_train_plus_val_with_one_c_picked_on_held_out_validation(synthetic_cv):
    cv = synthetic_cv(features=FEATURES)
    cfg = resolve_train_config({}, {**FAST, "train_on_val": True, "distill": {"feature": "whisper", "groups": 2}})
    data = prepare_fold("ilt", 0, manifest=cv["manifest"], folds=cv["folds"], features_dir=cv["features_dir"],
                        model_params=tiny_config("ilt"), train_cfg=cfg)
    soft = teacher_targets(data, cv["manifest"], cv["folds"], cv["features_dir"], cfg, torch.device("cpu"), "t",
                           lambda s: None)
    assert soft.shape == (len(data.splits["train"]), len(data.labels))
    pool = lambda ids: _pooled(cv["features_dir"], ids)  # noqa: E731
    val = set(data.splits["val"])
    y = np.array(data.label_of["train"])
    yv = np.array(data.label_of["val"])
    mask = np.array([u not in val for u in data.splits["train"]])
    c = fit_logistic(pool(np.array(data.splits["train"])[mask]), y[mask], pool(data.splits["val"]), yv, len(data.labels), ProbeConfig())[4]["C"]
    spk = cv["manifest"].set_index("utt_id")["speaker"]
    groups = speaker_groups([spk[u] for u in data.splits["train"]], 2)
    probs, chosen = crossfit_probabilities(pool(data.splits["train"]), y, groups, pool(data.splits["val"]), yv,
                                           len(data.labels), ProbeConfig(c_grid=(c,)))
    assert set(chosen) == {c}
    np.testing.assert_allclose(soft, soften(probs, 2.0), atol=1e-4)
