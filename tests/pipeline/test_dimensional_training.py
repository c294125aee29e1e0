"""Dimensional targets in training: task heads, CCC/MSE losses, V/A/D through the fold loop and the flow to
metrics.json, run.json, predictions.parquet, the report and the Prefect artifact — and classification runs
without any of the new keys."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from features.errors import ConfigError
from models import create_model, example_batch, list_models, tiny_config
from models.registry import set_task_head
from pipeline.training.data import DataError
from pipeline.training.metrics import ccc
from pipeline.training.train import TrainError, ccc_loss, dimensional_loss, fold_targets, resolve_train_config

torch.set_num_threads(1)
TRAIN = {"epochs": 2, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1}


@pytest.mark.parametrize("name", list_models())
def test_task_heads_widen_the_output_layer(name):
    kw = tiny_config(name)
    batch = example_batch(name, **kw)
    model = create_model(name, num_classes=4, **kw)
    assert set_task_head(model, name, "classification", 3) is model and model.eval()(**batch).shape == (2, 4)
    if name == "classical":  # fitted in closed form: no output layer to widen
        with pytest.raises(ConfigError, match="classical: task 'regression' needs a model whose final Linear"):
            set_task_head(model, name, "regression", 3)
        return
    torch.manual_seed(0)
    assert set_task_head(create_model(name, num_classes=4, **kw), name, "regression", 3).eval()(**batch).shape == (2, 3)
    assert set_task_head(create_model(name, num_classes=4, **kw), name, "multitask", 2).eval()(**batch).shape == (2, 6)


def test_losses_by_hand():
    t = torch.tensor([[1.0, 1.0], [2.0, float("nan")], [3.0, 3.0]])
    assert float(ccc_loss(t.nan_to_num(2.0), t)) == pytest.approx(0.0, abs=1e-6)  # perfect on annotated values
    # dimension 0 shifted by 1: CCC 4/7 (tests/pipeline/test_dimensional.py); dimension 1: [1, 3] vs [2, 4], the
    # same shift on 2 points: cov 1, variances 1 and 1, gap 1 → 2/3; the loss is the mean of 1 − CCC
    got = float(ccc_loss(torch.nan_to_num(t, 2.0) + 1, t))
    assert got == pytest.approx(((1 - 4 / 7) + (1 - 2 / 3)) / 2, rel=1e-5)
    one = torch.tensor([[1.0, float("nan")], [2.0, 5.0]])  # dimension 1 has one value: left out
    assert float(ccc_loss(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), one)) == pytest.approx(0.0, abs=1e-6)
    assert float(dimensional_loss(torch.zeros(3, 2), t, "mse")) == pytest.approx((1 + 4 + 9 + 1 + 9) / 5)


def test_train_settings_for_dimensional_tasks():
    plain = resolve_train_config({}, {"epochs": 1})
    assert not {"task", "dim_loss", "dim_weight"} & set(plain)  # classification configs are as before
    reg = resolve_train_config({"select_on": "val_ua"}, {"task": "regression", "dim_loss": "mse"})
    assert reg["select_on"] == "val_ccc"  # no logits: selection on the validation CCC
    assert resolve_train_config({}, {"task": "multitask"})["select_on"] == "val_wa"
    assert resolve_train_config({}, {"task": "multitask", "select_on": "val_ccc"})["select_on"] == "val_ccc"
    for bad, msg in (({"select_on": "val_ccc"}, "needs dimensional targets"), ({"task": "ordinal"}, "task must be"),
                     ({"task": "regression", "dim_loss": "l1"}, "dim_loss must be"),
                     ({"task": "multitask", "dim_weight": "high"}, "dim_weight must be a number"),
                     ({"task": "regression", "fit": "sklearn"}, "needs fit: gradient")):
        with pytest.raises(TrainError, match=msg):
            resolve_train_config({}, bad)


def test_fold_targets_mask_or_refuse():
    m = pd.DataFrame({"utt_id": list("abcde"), "valence": [1.0, 2.0, np.nan, 4.0, 5.5]})
    names, t = fold_targets("x", m, {"train": ["a", "b", "c"], "test": ["d", "e"]}, "regression")
    assert names == ("valence",) and np.isnan(t["train"][2, 0]) and t["test"][:, 0].tolist() == [4.0, 5.5]
    with pytest.raises(DataError, match=r"only 1 of the 2 test utterances have a valence value"):
        fold_targets("x", m, {"train": ["a", "b"], "test": ["c", "d"]}, "regression")
    with pytest.raises(DataError, match="needs valence/arousal/dominance columns"):
        fold_targets("x", m.drop(columns="valence"), {"train": ["a"]}, "multitask")
    assert fold_targets("x", m, {"train": ["a"]}, "classification") == ((), None)


def _with_vad(cv) -> pd.DataFrame:
    """The synthetic corpus with class-related V/A ratings (no dominance), one gap and one 5.5 (IEMOCAP's quirk)."""
    from pipeline.corpus.manifest import write_manifest

    m = cv["manifest"].copy()
    k = m["label"].map({"ang": 0, "hap": 1, "neu": 2, "sad": 3}).astype(float)
    rng = np.random.default_rng(1)
    m["valence"] = 1.5 + k + rng.normal(0, 0.3, len(m))
    m["arousal"] = 4.5 - k + rng.normal(0, 0.3, len(m))
    m.loc[3, "valence"], m.loc[5, "arousal"] = np.nan, 5.5
    write_manifest(m, cv["manifest_path"])
    return m


def _pooled_ccc_by_hand(t: np.ndarray, p: np.ndarray) -> float:
    ok = ~np.isnan(t)
    t, p = t[ok], p[ok]
    cov = np.mean((t - t.mean()) * (p - p.mean()))
    return 2 * cov / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)


def _cross_validate(cv, manifest, model, section, train, out) -> dict:
    """Every fold of the plan through ``train_fold``, then the flow's own summary and writers (no Prefect)."""
    from pipeline.orchestration.flows import summarise, write_results
    from pipeline.training.train import train_fold

    results = [train_fold(model, int(f), manifest=manifest, folds=cv["folds"], features_dir=cv["features_dir"],
                          model_params=section, train_params={**TRAIN, **train}, log=lambda _: None).to_dict()
               for f in sorted(cv["folds"]["fold"].unique())]
    metrics, preds = summarise(model, results)
    metrics = {"model": model, "corpus": "demo", "fold_plan": cv["plan"], "comparable_to_paper": False,
               "not_comparable_because": ["synthetic"], "train": {**TRAIN, **train}, **metrics}
    write_results(out, metrics, preds)
    return metrics


def test_regression_multitask_and_classification_runs(synthetic_cv, tmp_path):
    from pipeline.orchestration.flows import artifact_markdown, metrics_rows
    from pipeline.orchestration.report import render_report
    from pipeline.orchestration.results import load_result

    cv = synthetic_cv()
    manifest = _with_vad(cv)
    reg_dir, multi, cls = tmp_path / "reg" / "ilt", tmp_path / "multi" / "probe", tmp_path / "cls" / "ilt"
    reg = _cross_validate(cv, manifest, "ilt", tiny_config("ilt"), {"task": "regression"}, reg_dir)
    _cross_validate(cv, manifest, "probe", {"feature": "logmel40"},
                    {"task": "multitask", "dim_loss": "mse", "dim_weight": 0.5}, multi)
    _cross_validate(cv, manifest, "ilt", tiny_config("ilt"), {}, cls)

    # regression: CCC/Pearson/MAE only, recomputable from predictions.parquet
    metrics = json.loads((reg_dir / "metrics.json").read_text())
    assert set(metrics) == {"ccc", "pearson", "mae"} and set(metrics["ccc"]) == {"valence", "arousal"}
    preds = pd.read_parquet(reg_dir / "predictions.parquet")
    assert list(preds.columns) == ["utt_id", "fold", "label", "valence", "arousal", "pred_valence", "pred_arousal"]
    for dim in ("valence", "arousal"):
        t, p = preds[dim].to_numpy(float), preds[f"pred_{dim}"].to_numpy(float)
        want = _pooled_ccc_by_hand(t, p)
        assert metrics["ccc"][dim]["pooled"] == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert ccc(t, p) == pytest.approx(want, rel=1e-9, abs=1e-12)
        per_fold = [_pooled_ccc_by_hand(g[dim].to_numpy(float), g[f"pred_{dim}"].to_numpy(float))
                    for _, g in preds.groupby("fold")]
        assert metrics["ccc"][dim]["mean"] == pytest.approx(np.mean(per_fold), abs=1e-9)
        assert metrics["ccc"][dim]["std"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-9)
        ok = ~np.isnan(t)
        assert metrics["mae"][dim]["pooled"] == pytest.approx(np.mean(np.abs(t[ok] - p[ok])))
        assert not math.isnan(metrics["pearson"][dim]["pooled"])
    in_test = manifest.set_index("utt_id").loc[preds["utt_id"]]
    assert np.allclose(preds["valence"], in_test["valence"], equal_nan=True)  # true values as in the manifest
    rec = load_result(reg_dir)
    assert "wa" not in rec and all("val_ccc" in f and "wa" not in f for f in rec["folds"].values())
    masked = sum(f["unannotated"]["test"] for f in rec["folds"].values())  # the one blank valence, if tested
    assert masked == int(preds["valence"].isna().sum()) and metrics["ccc"]["valence"]["pooled"] is not None
    assert rec["dimensional"]["valence"]["ccc"] == metrics["ccc"]["valence"]  # metrics.json ↔ flow keys
    assert (reg_dir / "confusion.png").stat().st_size > 0
    assert (reg_dir / "confusion.csv").read_text() == "actual,predicted\n"

    # multitask: both sets of scores and columns
    mm = json.loads((multi / "metrics.json").read_text())
    assert set(mm) == {"wa", "ua", "f1", "recall", "ccc", "pearson", "mae"}
    mp = pd.read_parquet(multi / "predictions.parquet")
    assert {"pred", "prob_ang", "pred_valence", "arousal"} <= set(mp.columns)
    assert mm["ccc"]["arousal"]["pooled"] == pytest.approx(
        _pooled_ccc_by_hand(mp["arousal"].to_numpy(float), mp["pred_arousal"].to_numpy(float)), abs=1e-12)

    # classification: nothing new anywhere
    assert set(json.loads((cls / "metrics.json").read_text())) == {"wa", "ua", "f1", "recall"}
    cp = pd.read_parquet(cls / "predictions.parquet")
    assert list(cp.columns) == ["utt_id", "fold", "label", "pred", "prob_ang", "prob_hap", "prob_neu", "prob_sad"]
    crec = load_result(cls)
    assert "dimensional" not in crec and "dims" not in crec["folds"]["0"] and "val_ccc" not in crec["folds"]["0"]
    assert "Dimensional" not in render_report([crec]) and "Dimensional" not in artifact_markdown("ilt", crec)[1]

    # the report, the table artifact and the Markdown artifact show the dimensional scores
    section = render_report([rec, load_result(multi), crec]).split("## Dimensional targets")[1]
    assert f"| ilt | demo | regression | valence | {metrics['ccc']['valence']['mean']:.3f} ± " in section
    assert f"| {mm['mae']['arousal']['pooled']:.3f} |" in section and "| ilt | demo | |" not in section
    what, md = artifact_markdown("ilt", reg)
    assert what == "dimensional" and f"| valence | {metrics['ccc']['valence']['mean']:.3f} ± " in md
    rows = metrics_rows(reg)
    assert rows[-1]["fold"] == "pooled" and rows[-1]["CCC arousal"] == round(metrics["ccc"]["arousal"]["pooled"], 3)
    assert "WA" not in rows[0] and "val CCC" in rows[0]


def test_fold_cache_key_sees_ratings_of_dimensional_runs_only(synthetic_cv):
    from pipeline.orchestration.flows import fold_cache_key

    cv = synthetic_cv()
    manifest = _with_vad(cv)

    def key(m, train):
        return fold_cache_key("ilt", 0, manifest=m, folds=cv["folds"], features_dir=cv["features_dir"],
                              model_params={**tiny_config("ilt"), "n_mels": 40}, labels=["ang", "hap", "neu", "sad"],
                              train_cfg=resolve_train_config({}, {**TRAIN, **train}))

    moved = manifest.assign(valence=manifest["valence"] + 1)
    assert key(manifest, {"task": "regression"}) != key(moved, {"task": "regression"})
    assert key(manifest, {}) == key(moved, {}) == key(cv["manifest"], {})  # classification: as before


@pytest.mark.slow  # a Prefect test server (shared by the session's flow tests)
def test_flow_records_a_regression_run(prefect_harness, synthetic_cv, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from pipeline.orchestration.flows import run_cross_validation
    from pipeline.orchestration.results import load_result

    cv = synthetic_cv()
    _with_vad(cv)
    out = run_cross_validation(
        "ilt", manifest_path=cv["manifest_path"], folds_dir=cv["folds_dir"], features_dir=cv["features_dir"],
        results_dir=tmp_path / "results", params={"models": {"ilt": tiny_config("ilt")}, "dataset": {"name": "demo"},
                                                  "train": {**TRAIN, "task": "regression", "epochs": 1}},
        storage_dir=tmp_path / "storage", runs_dir=None)
    rec = load_result(tmp_path / "results" / "ilt")
    assert rec["train"]["task"] == "regression" and rec["select_on"] == "val_ccc" and "wa" not in out
    assert any("task 'regression'" in r for r in rec["not_comparable_because"])
    assert rec["dimensional"]["arousal"]["ccc"]["pooled"] == out["dimensional"]["arousal"]["ccc"]["pooled"]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ilt-dimensional"])))
    assert arts and "| arousal |" in arts[0].data


def test_ccc_loss_learns_the_ratings(synthetic_cv):
    """The targets reach the loss aligned with their utterances: the probe learns class-related ratings (test
    CCC 0.43 / 0.57 after 20 epochs, seeded; a misaligned target would stay near 0)."""
    from pipeline.training.train import train_fold

    cv = synthetic_cv(n_utts=64)
    m = cv["manifest"].copy()
    k = m["label"].map({"ang": 0, "hap": 1, "neu": 2, "sad": 3}).astype(float)
    m["valence"], m["arousal"] = 1 + k, 5 - k
    r = train_fold("probe", 0, manifest=m, folds=cv["folds"], features_dir=cv["features_dir"],
                   model_params={"feature": "logmel40"}, log=lambda _: None,
                   train_params={"epochs": 20, "batch_size": 16, "task": "regression", "lr": 1e-2, "num_threads": 1})
    assert min(d["ccc"] for d in r.test["dims"].values()) > 0.3


def test_subset_keeps_labels_and_targets_aligned(synthetic_cv):
    """``subset`` drops utterances after the split: labels and targets follow (they were built before the filter,
    and every subset run stopped with "utt_ids and labels differ in length")."""
    from pipeline.training.train import train_fold

    cv = synthetic_cv()
    m = _with_vad(cv)
    m.loc[m.index % 2 == 1, "subset"] = "scripted"
    r = train_fold("ilt", 0, manifest=m, folds=cv["folds"], features_dir=cv["features_dir"],
                   model_params=tiny_config("ilt"), log=lambda _: None,
                   train_params={**TRAIN, "epochs": 1, "subset": "improvised", "task": "multitask"})
    kept = m.set_index("utt_id").loc[r.predictions["utt_id"]]
    assert len(kept) and (kept["subset"] == "improvised").all()
    assert r.predictions["label"] == kept["label"].tolist()
    assert np.allclose(np.array(r.predictions["valence"], dtype=float), kept["valence"], equal_nan=True)
