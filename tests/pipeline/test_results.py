"""metrics.json holds numbers only and stays readable in `dvc metrics show`; run.json carries the provenance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.corpus.demo_corpus import CLASSES
from pipeline.orchestration.report import load_results
from pipeline.orchestration.results import join_result, load_result, split_result

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _result(model: str, labels=CLASSES) -> dict:
    """A cross_validate result as the flow returns it (the values are arbitrary, the shape is the flow's)."""
    stat = {"mean": 61.234567891, "std": 7.65432198, "pooled": 60.123456789}
    return {
        "model": model, "corpus": "demo", "comparable_to_paper": False,
        "not_comparable_because": ["corpus is 'demo', the papers used IEMOCAP"],
        "fold_plan": "loso", "plan_hash": "ab" * 32, "label_map": {c: c for c in labels}, "protocol": "LOSO",
        "select_on": "val_ua", "features": {"logmel40": {"random_weights": False, "config_hash": "cd" * 32}},
        "random_weights_features": [], "paper": {"wa": 67.56, "ua": 68.63, "row": "Table 2", "title": "t"},
        "wa": dict(stat), "ua": dict(stat), "macro_f1": dict(stat),
        "per_class_recall": {c: dict(stat) for c in labels},
        "folds": {"0": {"wa": 60.0, "ua": 59.0, "val_ua": 55.0, "best_epoch": 1, "runtime_s": 3.5}}, "n_folds": 1,
        "labels": list(labels), "pooled_confusion": [[1]], "pooled_confusion_normalized": [[1.0]],
        "train_samples_per_s": 100.0, "fold_runtime_s": 3.5, "runtime_s": 9.0,
        "train": {"epochs": 2}, "model_params": {"n_mels": 40}, "code_version": "ef" * 32,
        "run": {"flow_run_id": "1234", "git": {"revision": "abc"}, "parameters": {"model": model}},
    }


def _leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], obj


def test_metrics_are_numbers_only_and_run_json_keeps_the_provenance():
    full = _result("ilt")
    metrics, record = split_result(full)
    assert set(metrics) == {"wa", "ua", "f1", "recall"}
    for key, value in _leaves(metrics):
        assert isinstance(value, float), key  # no strings, hashes, lists: nothing DVC cannot tabulate
    assert metrics["f1"] == full["macro_f1"] and metrics["recall"]["ang"] == full["per_class_recall"]["ang"]["pooled"]
    for key in ("model", "corpus", "not_comparable_because", "plan_hash", "protocol", "features", "paper",
                "labels", "folds", "runtime_s", "train", "model_params", "code_version"):
        assert record[key] == full[key], key
    assert record["flow_run_id"] == "1234" and "run" not in record  # run.json's established top level
    assert not set(record) & {"wa", "ua", "macro_f1", "pooled_confusion"}  # each number lives in one file
    joined = join_result(metrics, record)
    assert {k: joined[k] for k in ("wa", "ua", "macro_f1", "per_class_recall", "corpus")} == {
        k: full[k] for k in ("wa", "ua", "macro_f1", "per_class_recall", "corpus")}


def test_load_result_reads_both_layouts(tmp_path):
    metrics, record = split_result(_result("cat"))
    new, old = tmp_path / "results" / "cat", tmp_path / "results" / "ilt"
    new.mkdir(parents=True)
    old.mkdir(parents=True)
    (new / "metrics.json").write_text(json.dumps(metrics))
    (new / "run.json").write_text(json.dumps(record))
    legacy = {k: v for k, v in _result("ilt").items() if k != "run"}  # one file with everything, as before
    (old / "metrics.json").write_text(json.dumps(legacy))
    got = {m["model"]: m for m in load_results(tmp_path / "results")}
    assert got["cat"]["macro_f1"]["pooled"] == metrics["f1"]["pooled"] and got["cat"]["corpus"] == "demo"
    assert got["ilt"]["macro_f1"] == legacy["macro_f1"] and got["ilt"]["paper"]["wa"] == 67.56
    (new / "run.json").unlink()
    assert load_result(new)["wa"] == metrics["wa"]  # scores alone still load


def test_dvc_metrics_show_fits_210_columns_per_run(tmp_path):
    """The real dvc.yaml's metrics declarations, one metrics.json per run as the flow writes it (the demo's four
    classes, its longest run names), through the real `dvc metrics show`."""
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, proj / name)
    from pipeline.orchestration.dvc_stages import all_items

    models = list(all_items(yaml.safe_load((ROOT / "params.yaml").read_text())))  # baselines' other plans too
    for m in models:
        (proj / "results" / m).mkdir(parents=True)
        (proj / "results" / m / "metrics.json").write_text(json.dumps(split_result(_result(m))[0]))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "COLUMNS": "1000"}  # no terminal to wrap or truncate the table
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "metrics", "show"]):
        p = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (cmd, p.stdout, p.stderr)
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert sorted(rows) == sorted(f"results/{m}/metrics.json" for m in models), p.stdout
    assert "recall.ang" in lines[0] and "f1.pooled" in lines[0], lines[0]
    widest = max(len(ln.rstrip()) for ln in lines)
    assert widest <= 210, f"{widest} columns:\n{p.stdout}"  # 200 before the baselines' longer run names


def test_accuracy_benchmark_reads_a_finished_run_from_the_two_files(tmp_path):
    """benchmarks/accuracy.py --collect: a row from results/<model>/ as the flow now writes it."""
    from benchmarks.accuracy import collect_results, summarise

    full = _result("cat")
    full["features"]["logmel40"]["weights"] = "none"
    metrics, record = split_result(full)
    out = tmp_path / "cat"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "run.json").write_text(json.dumps(record))
    row = summarise("cat", collect_results(out), baseline_ua=0.5)
    assert row["ua"]["pooled"] == pytest.approx(full["ua"]["pooled"] / 100)
    assert row["per_class_recall_pooled"] == {c: v["pooled"] for c, v in full["per_class_recall"].items()}
    assert row["fold_plan"] == "loso" and row["best_epochs"] == [1] and row["train_s"] == 3.5
    assert row["ua_minus_classical"] == pytest.approx(full["ua"]["pooled"] / 100 - 0.5)
    assert row["val_ua_mean"] == pytest.approx(0.55)  # the validation actors' UA, to choose settings by
    assert row["plan_hash"] == full["plan_hash"] and row["plan_hash"]  # which plan the row ran on


def test_accuracy_benchmark_merge_keeps_a_reproduced_baseline_once_and_refuses_a_different_one(tmp_path):
    from benchmarks.accuracy import merge_results

    def row(model, ua, kind="paper model"):
        score = {"pooled": ua, "mean": ua, "std": 0.0}
        return {"model": model, "kind": kind, "ua": score, "wa": score, "macro_f1": score, "train_s": 1.0}

    def sig(rows, classical_ci=(0.55, 0.65)):
        return {"method": "bootstrap", "n_boot": 10, "seed": 0, "level": 0.95, "baseline": "classical",
                "rows": [{"model": r["model"], "kind": r["kind"], "n": 8, "ua": r["ua"]["pooled"],
                          "ua_ci": list(classical_ci if r["model"] == "classical" else (0.5, 0.7))} for r in rows]}

    def write(name, rows, params_set=(), **sig_kw):
        path = tmp_path / name
        machine = {"cpu": "x", "cores": 2, "torch": "2"}
        path.write_text(json.dumps({"corpus_root": "/c", "params_file": "p.yaml", "total_wall_s": 1.0,
                                    "machine": machine, "rows": rows, "significance": sig(rows, **sig_kw),
                                    "params_set": list(params_set)}))
        return path

    main = write("main.json", [row("classical", 0.6, "baseline"), row("ilt", 0.62)])
    with pytest.raises(SystemExit, match="--set"):  # another task (8 classes) is never merged in
        merge_results(main, write("x.json", [row("classical", 0.6, "baseline")], ["dataset.options.label_map=null"]))
    # one torch thread (a runtime-only key, not in any cache key) is the same run
    merged = merge_results(main, write("extra.json", [row("classical", 0.6, "baseline"), row("cat", 0.65)],
                                       ["train.num_threads=1"]))
    assert [r["model"] for r in merged["rows"]] == ["classical", "ilt", "cat"]
    assert merged["rows"][2]["ua_minus_classical"] == pytest.approx(0.05)
    assert merged["runs"][0]["reproduced_rows"] == ["classical"]
    # the verdicts of both runs, the shared baseline once
    assert [r["model"] for r in merged["significance"]["rows"]] == ["classical", "ilt", "cat"]
    # a baseline with the same scores but another bootstrap interval: the verdicts are not comparable, block dropped
    again = merge_results(main, write("extra2.json", [row("classical", 0.6, "baseline"), row("rlc", 0.5)],
                                      classical_ci=(0.5, 0.66)))
    assert again["significance"] is None and [r["model"] for r in again["rows"]][-1] == "rlc"
    with pytest.raises(SystemExit, match="not the same folds"):
        merge_results(main, write("other.json", [row("classical", 0.58, "baseline")]))
    assert len(json.loads(main.read_text())["rows"]) == 4  # the refused merge wrote nothing
    with pytest.raises(SystemExit, match="--replace"):  # a retrained model is refused unless named
        merge_results(main, write("retrained.json", [row("classical", 0.6, "baseline"), row("ilt", 0.66)]))
    swapped = merge_results(main, write("retrained.json", [row("classical", 0.6, "baseline"), row("ilt", 0.66)]),
                            replace=["ilt"])
    assert [r["model"] for r in swapped["rows"]] == ["classical", "ilt", "cat", "rlc"]
    assert swapped["rows"][1]["ua"]["pooled"] == 0.66 and swapped["rows"][1]["ua_minus_classical"] == pytest.approx(0.06)
    assert swapped["runs"][-1]["replaced_rows"] == ["ilt"] and swapped["runs"][-1]["reproduced_rows"] == ["classical"]
    fresh = merge_results(write("main2.json", [row("classical", 0.6, "baseline"), row("ilt", 0.62)]),
                          write("retrained2.json", [row("classical", 0.6, "baseline"), row("ilt", 0.66)]), replace=["ilt"])
    assert [(r["model"], r["ua"]) for r in fresh["significance"]["rows"]] == [("classical", 0.6), ("ilt", 0.66)]
    # a variant the params adopted: its rows go once the model is retrained with it, and the file says so
    kind = "distilled"
    adopted = write("main3.json", [row("classical", 0.6, "baseline"), row("ilt", 0.62), row("cat", 0.63),
                                   row("ilt", 0.66, kind), row("cat", 0.64, kind)])
    with pytest.raises(SystemExit, match="no rows of that kind"):
        merge_results(adopted, write("r3.json", [row("classical", 0.6, "baseline"), row("ilt", 0.66)]),
                      replace=["ilt"], retire="other kind")
    out = merge_results(adopted, write("r3.json", [row("classical", 0.6, "baseline"), row("ilt", 0.66)]),
                        replace=["ilt"], retire=kind)
    assert [(r["model"], r["kind"]) for r in out["rows"]] == [
        ("classical", "baseline"), ("ilt", "paper model"), ("cat", "paper model"), ("cat", kind)]
    assert out["runs"][-1]["retired_rows"] == [
        {"model": "ilt", "kind": kind, "ua_pooled": 0.66, "reproduced_by_new_row": True}]
    assert ("ilt", kind) not in {(r["model"], r["kind"]) for r in out["significance"]["rows"]}


def test_accuracy_benchmark_set_changes_the_workspace_params_as_dvc_exp_run_s(tmp_path):
    import yaml

    from benchmarks.accuracy import merge_results, prepare_workspace

    params = tmp_path / "params.corpus.yaml"
    params.write_text(yaml.safe_dump({"dataset": {"root": str(tmp_path), "options": {"label_map": {"a": "a"}}},
                                      "train": {"seed": 0}}))
    ws = prepare_workspace(params, tmp_path / "ws", ["dataset.options.label_map=null", "train.seed=2",
                                                     "train.models=[classical, ilt]"])
    got = yaml.safe_load(ws.read_text())
    assert got["dataset"]["options"]["label_map"] is None and got["train"] == {"seed": 2, "models": ["classical", "ilt"]}
    assert yaml.safe_load(params.read_text())["train"] == {"seed": 0}  # the params file itself is untouched
    for bad, says in (("train.seed", "dotted.key=value"), ("train.seed.x=1", "train.seed is not a section"),
                      ("nothing.here=1", "nothing is not a section")):
        with pytest.raises(SystemExit, match=says):
            prepare_workspace(params, tmp_path / "ws", [bad])
    # results of another --set (e.g. 8 classes against 4) are never merged into one table
    rows = [{"model": "classical", "kind": "baseline", "ua": {"pooled": 0.6}}]
    common = {"corpus_root": "/c", "params_file": "p.yaml", "rows": rows, "significance": None}
    (tmp_path / "four.json").write_text(json.dumps(common))
    (tmp_path / "eight.json").write_text(json.dumps({**common, "params_set": ["dataset.options.label_map=null"]}))
    with pytest.raises(SystemExit, match="--set"):
        merge_results(tmp_path / "four.json", tmp_path / "eight.json")


def test_accuracy_benchmark_no_distill_variant_trains_the_params_models_without_their_teacher():
    """params.ravdess.yaml distills every audio paper model; --no-distill measures them without it."""
    import yaml

    from benchmarks.accuracy import VARIANTS, variant_params
    from pipeline.training.train import resolve_train_config

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.ravdess.yaml").read_text())
    paper = ["ilt", "cat", "cnn_transformer", "cnn_lstm_transformer", "rlc", "head_fusion"]
    for m in paper:
        assert params["models"][m]["train"]["distill"]["feature"] == "whisper", m
    off = variant_params(params, ["ilt", "rlc"], "no-distill")
    assert VARIANTS["no-distill"][1] == {"distill": None} and off["train"]["distill"] is None
    for m in paper:
        cfg = resolve_train_config({}, {"distill": off["train"]["distill"]}, off["models"][m]["train"])
        assert (cfg.get("distill") is None) == (m in ("ilt", "rlc")), m
    assert params["models"]["ilt"]["train"]["distill"], "the input params are left as they were"


def test_paired_benchmark_writes_emoflow_compare_for_each_pair(tmp_path):
    """benchmarks/paired.py: one paired comparison per pair, the same figures as compare_runs."""
    import pandas as pd

    from benchmarks.paired import main
    from pipeline.orchestration.compare import compare_runs

    labels = ["ang", "hap", "neu", "sad"] * 10
    runs = {}
    for name, wrong in (("good", 2), ("bad", 15)):
        d = tmp_path / name
        d.mkdir()
        pred = [("neu" if i < wrong else y) for i, y in enumerate(labels)]
        pd.DataFrame({"utt_id": [f"u{i}" for i in range(len(labels))], "fold": 0, "label": labels,
                      "pred": pred}).to_parquet(d / "predictions.parquet")
        runs[name] = str(d)
    out = tmp_path / "paired.json"
    got = main(["--out", str(out), "--n-boot", "50", "--pair", "good vs bad", runs["good"], runs["bad"]])
    (pair,) = json.loads(out.read_text())["pairs"]
    ref, _ = compare_runs(runs["good"], runs["bad"], n_boot=50, seed=0)
    assert pair["label"] == "good vs bad" and pair["run_a"] == runs["good"]
    assert pair["ua_diff"]["point"] == pytest.approx(ref.ua_diff.point) and ref.ua_diff.point > 0
    assert pair["mcnemar_b"] == 9 and pair["mcnemar_c"] == 0 and got["pairs"][0]["n"] == len(labels)
