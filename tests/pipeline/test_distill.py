"""train.distill: a cross-fitted probe on stored encoder states as the teacher of a model trained on its own inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import tiny_config
from models.baselines import ProbeConfig
from pipeline.training.data import DataError
from pipeline.training.distill import crossfit_probabilities, distill_loss, soften, speaker_groups
from pipeline.training.train import (
    TrainError,
    extra_features,
    prepare_fold,
    resolve_train_config,
    teacher_targets,
    train_fold,
)

FAST = {"epochs": 2, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1}
FEATURES = {"logmel40": (40, 0.01), "whisper": (16, 0.02)}


def _separable(n=60, d=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, d))
    x[np.arange(n), y] += 3.0
    return x, y


def test_crossfit_scores_each_group_with_a_teacher_that_never_saw_it():
    x, y = _separable()
    xv, yv = _separable(30, seed=1)
    groups = (np.arange(len(y)) // 3) % 3  # every group holds every class
    cfg = ProbeConfig(c_grid=(0.1, 1.0))
    probs, chosen = crossfit_probabilities(x, y, groups, xv, yv, 3, cfg)
    assert probs.shape == (60, 3) and np.allclose(probs.sum(axis=1), 1.0) and len(chosen) == 3
    assert (probs.argmax(axis=1) == y).mean() > 0.8  # a real teacher on separable data
    # relabel group 0 at random: its own rows come from a teacher fitted on groups 1-2 only, so they do not move;
    # the other groups' teachers were fitted on group 0, so theirs do
    y2 = y.copy()
    y2[groups == 0] = np.random.default_rng(2).permutation(y[groups == 0])
    probs2, _ = crossfit_probabilities(x, y2, groups, xv, yv, 3, cfg)
    assert np.allclose(probs2[groups == 0], probs[groups == 0])
    assert not np.allclose(probs2[groups != 0], probs[groups != 0])


def test_speaker_groups_keep_each_speaker_in_one_group():
    speakers = ["s3", "s1", "s2", "s1", "s4", "s3"]
    g = speaker_groups(speakers, 2)
    assert {s: g[i] for i, s in enumerate(speakers)} == {"s1": 0, "s2": 1, "s3": 0, "s4": 1}
    assert len(set(speaker_groups(["a", "a"], 4))) == 1  # fewer speakers than groups: one group per speaker


def test_distill_loss_is_the_tempered_kl_divergence_times_t_squared():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = soften(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), 2.0)
    q = torch.softmax(logits / 2.0, dim=-1).numpy()
    expected = 4.0 * np.mean(np.sum(teacher * np.log(teacher / q), axis=1))
    assert float(distill_loss(logits, torch.tensor(teacher, dtype=torch.float32), 2.0)) == pytest.approx(expected, rel=1e-5)


def test_distill_settings_are_checked_and_absent_unless_set():
    assert "distill" not in resolve_train_config({})  # off: configs and cache keys as before
    cfg = resolve_train_config({}, {"distill": {"feature": "whisper", "weight": 0.7}})
    assert cfg["distill"] == {"feature": "whisper", "pooling": "meanstd", "weight": 0.7, "temperature": 2.0, "groups": 4}
    assert extra_features(cfg) == ["whisper"] and extra_features(resolve_train_config({})) == []
    for bad, match in (({"weight": 0.5}, "distill.feature"), ({"feature": "whisper", "temp": 2}, "unknown"),
                       ({"feature": "whisper", "weight": 0}, "weight"), ({"feature": "whisper", "groups": 1}, "groups")):
        with pytest.raises(TrainError, match=match):
            resolve_train_config({}, {"distill": bad})
    for other in ({"mixup": 0.2}, {"fit": "sklearn", "select_on": "val_ua"}):
        with pytest.raises(TrainError, match="distill"):
            resolve_train_config({}, {"distill": {"feature": "whisper"}, **other})


def test_teacher_targets_are_the_crossfitted_probe_on_pooled_stored_states(synthetic_cv):
    from features.store import FeatureReader

    cv = synthetic_cv(features=FEATURES)
    cfg = resolve_train_config({}, {**FAST, "distill": {"feature": "whisper", "groups": 2, "temperature": 3.0}})
    data = prepare_fold("ilt", 0, manifest=cv["manifest"], folds=cv["folds"], features_dir=cv["features_dir"],
                        model_params=tiny_config("ilt"), train_cfg=cfg)
    lines = []
    soft = teacher_targets(data, cv["manifest"], cv["folds"], cv["features_dir"], cfg, torch.device("cpu"), "t",
                           lines.append)
    # independently: mean and std over frames of each stored array, the same cross-fitting, then temperature 3
    r = FeatureReader(cv["features_dir"] / "whisper.h5")
    pooled = {u: np.concatenate([r[u].mean(axis=0), r[u].std(axis=0)]) for s in ("train", "val") for u in data.splits[s]}
    x = np.stack([pooled[u] for u in data.splits["train"]])
    xv = np.stack([pooled[u] for u in data.splits["val"]])
    spk = cv["manifest"].set_index("utt_id")["speaker"]
    groups = speaker_groups([spk[u] for u in data.splits["train"]], 2)
    probs, _ = crossfit_probabilities(x, np.array(data.label_of["train"]), groups, xv, np.array(data.label_of["val"]),
                                      len(data.labels), ProbeConfig())
    assert np.allclose(soft, soften(probs, 3.0), atol=1e-4)
    assert "cross-fitted training UA" in lines[0]


def test_a_distilled_fold_trains_against_the_teacher_and_declares_the_teacher_feature(synthetic_cv):
    from models import requirements
    from pipeline.orchestration.dvc_stages import train_items

    cv = synthetic_cv(features=FEATURES)

    def run(**train):
        return train_fold("ilt", 0, manifest=cv["manifest"], folds=cv["folds"], features_dir=cv["features_dir"],
                          model_params=tiny_config("ilt"), train_params={**FAST, **train}, log=lambda s: None)

    plain, taught = run(), run(distill={"feature": "whisper", "groups": 2})
    assert [h["train_loss"] for h in taught.history] != [h["train_loss"] for h in plain.history]
    assert set(taught.predictions) == set(plain.predictions)  # the student alone predicts
    with pytest.raises(DataError, match="wav2vec2.h5: feature file not found"):  # a teacher feature not in the store
        run(distill={"feature": "wav2vec2"})
    assert requirements("ilt", {"train": {"distill": {"feature": "whisper"}}}).features == ["logmel40", "whisper"]
    params = {"train": {"models": ["ilt"], "distill": {"feature": "whisper"}}, "models": {"ilt": {}}}
    assert train_items(params)["ilt"]["features"] == ["logmel40", "whisper"]  # a dvc.yaml dependency of train@ilt
