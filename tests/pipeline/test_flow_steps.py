"""The steps ``flows.cross_validate`` orchestrates, as plain functions (no Prefect flow run): resolving a run,
its fold cache keys, comparability with the paper, and the run record."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from models import tiny_config
from pipeline.orchestration import flows


def _spec(cv, **kw):
    args = dict(manifest_path=cv["manifest_path"], folds_dir=cv["folds_dir"], features_dir=cv["features_dir"],
                model_params=tiny_config("ilt"), train_params={"epochs": 1}, folds=None, label_map=None)
    return flows.resolve_run("ilt", cv["plan"], **{**args, **kw})


def test_resolve_run_reads_plan_store_and_config(synthetic_cv):
    cv = synthetic_cv()
    spec = _spec(cv, model_params={**tiny_config("ilt"), "fold_plan": "ignored_when_plan_given"})
    assert spec.plan == cv["plan"] and spec.folds == sorted(cv["folds"]["fold"].unique().tolist())
    assert "fold_plan" not in spec.model_params and spec.resolved_params["n_mels"] == 40  # dim from the store
    assert spec.labels == ["ang", "hap", "neu", "sad"] and spec.train_cfg["epochs"] == 1
    assert set(spec.features) == {"logmel40"} and spec.code == flows.code_version()
    assert _spec(cv, folds=[1]).folds == [1]
    with pytest.raises(flows.FlowError, match="no folds to run"):
        _spec(cv, folds=[99])


def test_fold_cache_keys_match_fold_cache_key(synthetic_cv):
    cv = synthetic_cv()
    spec = _spec(cv)
    keys = flows.fold_cache_keys(spec, cv["features_dir"])
    assert list(keys) == spec.folds and len(set(keys.values())) == len(keys)
    assert keys[0] == flows.fold_cache_key("ilt", 0, manifest=spec.manifest, folds=spec.plan_df,
                                           features_dir=cv["features_dir"], model_params=spec.resolved_params,
                                           train_cfg=spec.train_cfg, labels=spec.labels, code=spec.code)


def test_comparability_and_run_record(synthetic_cv):
    cv = synthetic_cv()
    spec = _spec(cv)
    reasons, run_map = flows.comparability(spec, "demo")
    assert any("corpus is 'demo'" in r for r in reasons)
    assert not any("fold plan" in r for r in reasons)  # ilt's own plan
    other, _ = flows.comparability(dataclasses.replace(spec, plan="loso"), "iemocap")
    assert any("fold plan 'loso' differs" in r for r in other) and not any("corpus is" in r for r in other)
    assert run_map == {lab: lab for lab in ("ang", "hap", "neu", "sad")}
    assert not any("augment" in r or "selects epochs" in r for r in reasons)
    small = dataclasses.replace(spec, train_cfg={**spec.train_cfg, "select_on": "val_loss",
                                                 "augment": {"time_masks": 2, "time_width": 8}})
    flagged, _ = flows.comparability(small, "iemocap")
    assert any(r.startswith("augment") for r in flagged)
    assert "selects epochs on val_loss, the paper on val_wa" in flagged
    for change, flag in (({"mixup": 0.2}, "mixup"), ({"swa_start": 2, "select_on": "last"}, "swa_start"),
                         ({"label_smoothing": 0.1}, "label_smoothing"), ({"seed_ensemble": 3}, "seed_ensemble"),
                         ({"noise_snr_db": "none"}, "input noise"), ({"noise_prob": 0.5}, "input noise"),
                         ({"distill": {"feature": "whisper"}}, "distill"),
                         ({"train_on_val": True, "select_on": "last"}, "train_on_val")):
        assert not any(r.startswith(flag) for r in reasons)
        changed, _ = flows.comparability(dataclasses.replace(spec, train_cfg={**spec.train_cfg, **change}), "iemocap")
        assert any(r.startswith(flag) for r in changed), (change, changed)
    one, _ = flows.comparability(dataclasses.replace(spec, train_cfg={**spec.train_cfg, "seed_ensemble": 1}), "demo")
    assert one == reasons  # one model per fold is the paper's
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rec = flows.run_record(spec, {"wa": {"mean": 50.0}}, corpus="demo", t0=t0, t1=t0 + dt.timedelta(seconds=3),
                           run={"flow_run_id": None})
    assert rec["comparable_to_paper"] is False and rec["not_comparable_because"] == reasons
    assert rec["runtime_s"] == 3.0 and rec["wa"] == {"mean": 50.0} and rec["fold_plan"] == cv["plan"]
    assert list(rec)[-1] == "run" and rec["model_params"] == spec.resolved_params


def test_summary_line():
    out = {"model": "m", "wa": {"mean": 60.0, "std": 1.0}, "ua": {"mean": 55.5, "std": 2.25},
           "comparable_to_paper": False, "not_comparable_because": ["a", "b"]}
    assert flows.summary_line(out, 5) == ("m: WA 60.00 ± 1.00, UA 55.50 ± 2.25 over 5 folds "
                                          "(NOT comparable to the paper: a; b)")
    dims = {"model": "m", "dimensional": {"valence": {"ccc": {"mean": 0.5, "std": 0.1}}},
            "comparable_to_paper": True, "not_comparable_because": []}
    assert flows.summary_line(dims, 2) == "m: CCC valence 0.500 ± 0.100 over 2 folds"
