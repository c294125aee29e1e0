"""benchmarks/pilot.py: every fold of one model on a benchmark-style workspace, rows appended to a JSON list."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from models import tiny_config
from tests.conftest import build_synthetic_cv


def test_pilot_pools_its_folds_and_appends_rows(tmp_path):
    from benchmarks.pilot import main

    work = tmp_path / "work"
    cv = build_synthetic_cv(work / "data")
    train = {"epochs": 1, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1}
    params = {"folds": {"plans": [cv["plan"]]}, "train": {"models": ["ilt"], "seed": 0},
              "models": {"ilt": {"fold_plan": cv["plan"], **tiny_config("ilt"), "train": train}}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "pilots.json"
    args = ["ilt", "--tag", "one fold", "--folds", "0", "--workdir", str(work), "--out", str(out),
            "--set", '{"train": {"select_on": "last"}}']
    row = main(args)
    assert row["overrides"] == {"train": {"select_on": "last"}} and [f["fold"] for f in row["folds"]] == [0]
    assert row["folds"][0]["best_epoch"] == 1  # the override reached the fold's training
    assert row["folds"][0]["val_ua_last"] == row["folds"][0]["val_ua"]  # select_on: last picks the final epoch
    assert row["val_ua_last_mean"] * 100 == pytest.approx(row["folds"][0]["val_ua_last"])
    assert row["ua_pooled"] * 100 == pytest.approx(row["folds"][0]["test_ua"])  # one fold: pooled = fold
    main(args)
    assert [r["tag"] for r in json.loads(out.read_text())] == ["one fold", "one fold"]


def test_workspace_plan_resolves_as_the_flow_does(tmp_path):
    """The model's section, else the paper's plan (not the first plan of the params file); --plan wins."""
    from benchmarks.diagnose_fold import load_workspace
    from models import get_model_info

    work = tmp_path / "work"
    (work / "data" / "folds").mkdir(parents=True)
    paper_plan = get_model_info("ilt").fold_plan
    pd.DataFrame({"utt_id": ["a"], "label": ["neu"]}).to_parquet(work / "data" / "manifest.parquet")
    for plan in ("loso", paper_plan, "other"):
        pd.DataFrame({"utt_id": ["a"], "fold": [0], "split": ["test"]}).to_parquet(
            work / "data" / "folds" / f"{plan}.parquet")
    params = {"folds": {"plans": ["loso", paper_plan]}, "train": {}, "models": {"ilt": {}, "rlc": {"fold_plan": "other"}}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert paper_plan != "loso"
    assert load_workspace(work, "ilt", {}).plan == paper_plan
    assert load_workspace(work, "rlc", {}).plan == "other"
    assert load_workspace(work, "ilt", {}, "other").plan == "other"


def test_pilot_seeds_give_an_ensemble_row_and_resume_from_saved_predictions(tmp_path):
    from benchmarks.pilot import main, seed_ensemble

    work = tmp_path / "work"
    cv = build_synthetic_cv(work / "data")
    train = {"epochs": 1, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1, "select_on": "last"}
    params = {"folds": {"plans": [cv["plan"]]}, "train": {"models": ["ilt"], "seed": 0},
              "models": {"ilt": {"fold_plan": cv["plan"], **tiny_config("ilt"), "train": train}}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    out, preds = tmp_path / "pilots.json", tmp_path / "preds"
    args = ["ilt", "--tag", "s", "--folds", "0", "--workdir", str(work), "--out", str(out),
            "--seeds", "0", "1", "--predictions", str(preds)]
    ens = main(args)
    rows = json.loads(out.read_text())
    assert [r.get("seed") for r in rows] == [0, 1, None] and ens["kind"] == "seed_ensemble"
    assert [r["overrides"]["train"]["seed"] for r in rows[:2]] == [0, 1]
    tables = [pd.read_parquet(preds / f"ilt-s-seed{s}.parquet") for s in (0, 1)]
    assert not tables[0].filter(like="prob_").equals(tables[1].filter(like="prob_"))  # the seed reached training
    mean = seed_ensemble(tables)  # the ensemble row scores the averaged probabilities
    assert set(mean["utt_id"]) == set(tables[0]["utt_id"]) and ens["ua_pooled"] == pytest.approx(
        (mean["pred"] == mean["label"]).groupby(mean["label"]).mean().mean())
    assert ens["seed_ua_pooled"] == [rows[0]["ua_pooled"], rows[1]["ua_pooled"]]

    # every fold is read back from the saved predictions, nothing retrained; --against pairs each row with seed 0
    again = main([*args, "--against", str(preds / "ilt-s-seed0.parquet")])
    rows = json.loads(out.read_text())
    assert all(f.get("reused") for r in rows[3:5] for f in r["folds"]) and again["ua_pooled"] == ens["ua_pooled"]
    assert rows[3]["against"]["ua_diff"]["point"] == 0 and rows[3]["against"]["n"] == len(tables[0])
    assert again["against"]["ua_diff"]["point"] == pytest.approx(ens["ua_pooled"] - rows[0]["ua_pooled"])

    # --ensemble-with: seed 1 (read back) averaged with seed 0's saved predictions is the same two-seed ensemble
    seed1 = ["ilt", "--tag", "s", "--folds", "0", "--workdir", str(work), "--out", str(out),
             "--seeds", "1", "--predictions", str(preds)]
    joined = main([*seed1, "--ensemble-with", str(preds / "ilt-s-seed0.parquet")])
    assert joined["kind"] == "seed_ensemble" and joined["ua_pooled"] == pytest.approx(ens["ua_pooled"])
    assert joined["ensemble_with"] == [{"predictions": "ilt-s-seed0.parquet", "ua_pooled": rows[0]["ua_pooled"]}]
    assert joined["seed_ua_pooled"] == [rows[1]["ua_pooled"], rows[0]["ua_pooled"]]
    with pytest.raises(SystemExit, match="nothere.parquet does not exist"):
        main([*seed1, "--ensemble-with", str(tmp_path / "nothere.parquet")])


def test_seed_ensemble_refuses_runs_of_other_utterances():
    from benchmarks.pilot import seed_ensemble

    a = pd.DataFrame({"utt_id": ["u"], "fold": [0], "label": ["x"], "prob_x": [1.0]})
    with pytest.raises(ValueError, match="differ in their utterances"):
        seed_ensemble([a, a.assign(utt_id=["v"])])


def test_pilot_table_keeps_each_models_last_ensemble_row_of_the_tag(tmp_path):
    """benchmarks/pilot_table.py prints the README's pilot tables from the committed rows, nothing recomputed."""
    from benchmarks.pilot_table import main

    def ens(model, tag, ua, resolved):
        diff = {"point": ua - 0.6, "lo": ua - 0.65, "hi": ua - 0.55, "resolved": resolved}
        return {"model": model, "tag": tag, "kind": "seed_ensemble", "seed_ua_pooled": [ua - 0.01, ua - 0.02],
                "seed_ua_mean": ua - 0.015, "ua_pooled": ua, "wa_pooled": ua, "against": {"ua_diff": diff,
                                                                                         "mcnemar_p": 0.04}}

    rows = [ens("rlc", "t4", 0.61, False), {"model": "rlc", "tag": "t4", "seed": 0, "ua_pooled": 0.1},
            ens("ilt", "t2", 0.99, True), ens("ilt", "t4", 0.70, True), ens("rlc", "t4", 0.64, False)]
    f = tmp_path / "pilots.json"
    f.write_text(json.dumps(rows))
    lines = main(["--tag", "t4", "--file", str(f), "--models", "ilt", "cat", "rlc"]).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| `ilt` | 2 | 0.690 / 0.680 |") and "**0.700**" in lines[2]
    assert "0.990" not in lines[2] and "+0.100 [+0.050, +0.150] | yes" in lines[2]
    assert "**0.640**" in lines[3] and "| **no** |" in lines[3] and "0.610" not in lines[3]  # the last rlc row
    with pytest.raises(SystemExit, match="no seed_ensemble rows tagged 'none'"):
        main(["--tag", "none", "--file", str(f)])


def test_pilot_table_by_tag_puts_two_arms_side_by_side_with_their_validation_means(tmp_path):
    """--by-tag: one row per (tag, model) in --tag's order, with the mean over the ensemble's seeds of each seed
    row's validation UA — the figure a declared rule compares; "—" when a seed has none (read back)."""
    from benchmarks.pilot_table import main

    def seed(tag, s, val):
        return {"model": "hf", "tag": tag, "seed": s, "ua_pooled": 0.5, "val_ua_mean": val}

    def ens(tag, ua, seeds):
        diff = {"point": ua - 0.6, "lo": ua - 0.65, "hi": ua - 0.55, "resolved": False}
        return {"model": "hf", "tag": tag, "kind": "seed_ensemble", "seeds": seeds, "seed_ua_pooled": [0.5] * 2,
                "seed_ua_mean": 0.5, "ua_pooled": ua, "wa_pooled": ua, "against": {"ua_diff": diff, "mcnemar_p": 0.5}}

    rows = [seed("a", 6, 0.70), seed("a", 7, 0.60), seed("a", 7, 0.80), ens("a", 0.64, [6, 7]),
            seed("b", 6, 0.90), ens("b", 0.66, [6])]
    f = tmp_path / "pilots.json"
    f.write_text(json.dumps(rows))
    lines = main(["--by-tag", "--tag", "b", "a", "--file", str(f)]).splitlines()
    assert len(lines) == 4 and "mean validation UA of the seeds" in lines[0]
    assert lines[2].startswith("| `hf` | `b` | — | 2 |") and "**0.660**" in lines[2]
    assert lines[3].startswith("| `hf` | `a` | 75.00 | 2 |") and "**0.640**" in lines[3]  # seed 7's last row
    # without --by-tag the two tags collapse to the model's last row, as before
    assert len(main(["--tag", "a", "b", "--file", str(f)]).splitlines()) == 3
