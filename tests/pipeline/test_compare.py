"""Paired comparison of two models' pooled test predictions, against hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score
from typer.testing import CliRunner

from pipeline.orchestration import compare as C
from pipeline.orchestration.report import write_report


def _frame(labels, preds, prefix="u"):
    return pd.DataFrame({"utt_id": [f"{prefix}{i:03d}" for i in range(len(labels))], "fold": 0,
                         "label": list(labels), "pred": list(preds)})


def test_ua_by_hand_and_against_sklearn_on_resamples():
    yt, (yp,), classes = C.encode(["a", "a", "a", "b"], ["a", "a", "a", "a"])
    assert classes == ["a", "b"] and C.ua(yt, yp, 2) == 0.5  # recall a = 1, recall b = 0
    rng = np.random.default_rng(1)
    yt, yp = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    idx = C.bootstrap_indices(200, 5, seed=3)
    got = C.ua_of_resamples(yt, yp, idx, 4)
    want = [balanced_accuracy_score(yt[i], yp[i]) for i in idx]
    np.testing.assert_allclose(got, want)


def test_a_class_absent_from_a_resample_is_left_out_of_ua():
    yt, yp = np.array([0, 0, 1]), np.array([0, 1, 1])
    # resample 0 = utterances 0, 1, 0: only class 0, hits 1, 0, 1 → UA 2/3 (no NaN, no 0 for class 1);
    # resample 1 has both classes (recalls 1/2 and 1)
    got = C.ua_of_resamples(yt, yp, np.array([[0, 1, 0], [0, 1, 2]]), 2)
    np.testing.assert_allclose(got, [2 / 3, 0.75])


def test_a_predicted_class_outside_the_labels_counts_as_wrong():
    yt, (yp,), classes = C.encode(["a", "b"], ["a", "zzz"])
    assert classes == ["a", "b"] and yp.tolist() == [0, 2] and C.ua(yt, yp, 2) == 0.5


def test_mcnemar_exact_by_hand():
    # A right & B wrong once, A wrong & B right 5 times, 4 ties: p = 2 * P(X <= 1 | n=6, 1/2) = 2 * 7/64
    a = np.array([1, 0, 0, 0, 0, 0, 1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    assert C.mcnemar(a, b) == (1, 5, pytest.approx(14 / 64))
    assert C.mcnemar(np.zeros(6, bool), np.ones(6, bool)) == (0, 6, pytest.approx(2 / 64))
    assert C.mcnemar(a, a) == (0, 0, 1.0)


def test_identical_predictions_give_zero_difference_not_resolved():
    labels = list("abcd") * 25
    preds = list(np.random.default_rng(0).choice(list("abcd"), 100))
    c = C.compare_frames(_frame(labels, preds), _frame(labels, preds), ("x", "y"))
    assert (c.ua_diff.point, c.ua_diff.lo, c.ua_diff.hi) == (0.0, 0.0, 0.0) and not c.ua_diff.resolved
    assert (c.mcnemar_b, c.mcnemar_c, c.mcnemar_p) == (0, 0, 1.0)
    assert "not resolved" in C.verdict(c)


def test_always_right_vs_always_wrong_has_an_exact_interval():
    labels = list("abc") * 10
    wrong = [{"a": "b", "b": "c", "c": "a"}[x] for x in labels]
    c = C.compare_frames(_frame(labels, labels), _frame(labels, wrong), ("good", "bad"))
    # every resample: UA(good) = 1, UA(bad) = 0, so the difference and both intervals are exact
    assert (c.ua_diff.point, c.ua_diff.lo, c.ua_diff.hi) == (1.0, 1.0, 1.0) and c.ua_diff.resolved
    assert (c.ua_a.lo, c.ua_a.hi, c.ua_b.lo, c.ua_b.hi) == (1.0, 1.0, 0.0, 0.0)
    assert c.wa_diff.lo == 1.0 and C.verdict(c).startswith("**good** is better than **bad**")
    flipped = C.compare_frames(_frame(labels, wrong), _frame(labels, labels), ("bad", "good"))
    assert C.verdict(flipped).startswith("**good** is better than **bad**: +100.0")


def test_bootstrap_distribution_of_a_two_utterance_case():
    # one class, hits [1, 0]: a resample's UA is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4
    samples = C.ua_of_resamples(np.array([0, 0]), np.array([0, 1]), C.bootstrap_indices(2, 4000, seed=5), 1)
    freq = {v: np.mean(samples == v) for v in (0.0, 0.5, 1.0)}
    assert freq[0.5] == pytest.approx(0.5, abs=0.03) and freq[0.0] == pytest.approx(0.25, abs=0.03)
    i = C.ua_interval(np.array([0, 0]), np.array([0, 1]), 1, n_boot=4000, seed=5)
    assert (i.point, i.lo, i.hi) == (0.5, 0.0, 1.0)


def test_seeded_order_free_and_antisymmetric():
    rng = np.random.default_rng(2)
    labels = rng.choice(list("abcd"), 300)
    pa = np.where(rng.random(300) < 0.6, labels, rng.choice(list("abcd"), 300))
    pb = np.where(rng.random(300) < 0.5, labels, rng.choice(list("abcd"), 300))
    fa, fb = _frame(labels, pa), _frame(labels, pb)
    c1 = C.compare_frames(fa, fb, seed=7)
    assert C.compare_frames(fa.sample(frac=1, random_state=1), fb.sample(frac=1, random_state=2), seed=7) == c1
    assert C.compare_frames(fa, fb, seed=8).ua_diff != c1.ua_diff  # the seed is used
    c2 = C.compare_frames(fb, fa, seed=7)
    assert c2.ua_diff.point == pytest.approx(-c1.ua_diff.point)
    assert (c2.ua_diff.lo, c2.ua_diff.hi) == pytest.approx((-c1.ua_diff.hi, -c1.ua_diff.lo))
    assert c1.ua_a.lo < c1.ua_a.point < c1.ua_a.hi and c1.ua_diff.hi - c1.ua_diff.lo < 0.2


def test_runs_over_different_utterances_or_labels_are_refused():
    labels = list("ab") * 5
    with pytest.raises(C.CompareError, match="same utterances"):
        C.compare_frames(_frame(labels, labels), _frame(labels, labels, prefix="v"))
    other = _frame(labels, labels)
    other.loc[0, "label"] = "b"
    with pytest.raises(C.CompareError, match="true label of 1 utterances"):
        C.compare_frames(_frame(labels, labels), other)


def _results(tmp_path, runs):
    res = tmp_path / "results"
    for model, (plan, frame) in runs.items():
        (res / model).mkdir(parents=True)
        frame.to_parquet(res / model / "predictions.parquet")
        (res / model / "metrics.json").write_text(json.dumps({
            "model": model, "corpus": "demo", "plan_hash": plan, "fold_plan": "x", "n_folds": 1,
            "wa": {"mean": 1.0, "std": 0.0}, "ua": {"mean": 1.0, "std": 0.0}, "macro_f1": {"mean": 1.0, "std": 0.0},
        }))
    return res


def test_report_shows_intervals_and_verdicts_for_models_of_one_plan(tmp_path):
    labels = list("abc") * 20
    wrong = [{"a": "b", "b": "c", "c": "a"}[x] for x in labels]
    res = _results(tmp_path, {"good": ("p1", _frame(labels, labels)), "bad": ("p1", _frame(labels, wrong)),
                              "same": ("p1", _frame(labels, labels)), "elsewhere": ("p2", _frame(labels, labels))})
    text = write_report(res, tmp_path / "report.md").read_text()
    section = text.split("## Is A really better than B?")[1]
    assert "| good | 100.0 [100.0, 100.0] | 60 |" in section and "| bad | 0.0 [0.0, 0.0] | 60 |" in section
    assert "**good** is better than **bad**" in section and "**same** is better than **bad**" in section
    assert "**good** vs **same**: +0.0" in section and "not resolved" in section
    assert "elsewhere" not in section  # another fold plan: never paired
    assert "2 of 3 UA differences resolved, 1 not." in section


def test_a_models_second_run_on_the_same_folds_is_paired_once(tmp_path):
    """A baseline run on a plan whose folds equal its own plan's (run_name set, same model, same predictions) is
    listed once; another model with the same predictions is still paired."""
    labels = list("abc") * 20
    wrong = [{"a": "b", "b": "c", "c": "a"}[x] for x in labels]
    res = _results(tmp_path, {"classical": ("p1", _frame(labels, labels)), "other": ("p1", _frame(labels, labels)),
                              "classical-session": ("p1", _frame(labels, labels)), "bad": ("p1", _frame(labels, wrong))})
    meta = json.loads((res / "classical-session" / "metrics.json").read_text())
    (res / "classical-session" / "metrics.json").write_text(json.dumps({**meta, "model": "classical",
                                                                         "run_name": "classical-session"}))
    section = write_report(res, tmp_path / "report.md").read_text().split("## Is A really better than B?")[1]
    assert "| classical-session |" not in section and "**classical-session**" not in section
    assert "- classical-session: the same model, test folds and predictions as classical" in section
    assert "**classical** vs **other**: +0.0" in section  # two models that agree are still compared
    assert "3 of 3 UA differences resolved" not in section and "of 3 UA differences" in section


def test_cli_compare_by_model_name_and_by_directory(tmp_path):
    from pipeline.cli.main import app

    labels = list("abc") * 20
    wrong = [{"a": "b", "b": "c", "c": "a"}[x] for x in labels]
    res = _results(tmp_path, {"good": ("p1", _frame(labels, labels)), "bad": ("p1", _frame(labels, wrong))})
    r = CliRunner().invoke(app, ["compare", "good", str(res / "bad"), "--results", str(res), "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    assert "good: UA 100.0 [100.0, 100.0] %" in r.output and "good is better than bad: +100.0" in r.output
    r = CliRunner().invoke(app, ["compare", "good", "nothere", "--results", str(res)])
    assert r.exit_code == 2 and "nothere" in r.output


def _write_predictions(root, labels, runs):
    """``<root>/<results dir>/<model>/predictions.parquet`` for each ``(results dir, model, predictions)``."""
    for sub, model, preds in runs:
        (root / sub / model).mkdir(parents=True)
        _frame(labels, preds).to_parquet(root / sub / model / "predictions.parquet")


def test_benchmark_significance_block_checks_the_workspace_and_keeps_the_rows(tmp_path):
    from benchmarks.accuracy import significance_block, significance_table

    labels = list("abc") * 20
    wrong = [{"a": "b", "b": "c", "c": "a"}[x] for x in labels]
    half = labels[:30] + wrong[30:]
    _write_predictions(tmp_path, labels, (("results", "classical", half), ("results", "good", labels),
                                          ("results-closed-form", "good", half)))
    yt, (yp,), _ = C.encode(labels, half)
    ua_half = C.ua(yt, yp, 3)
    rows = [{"model": "classical", "kind": "baseline", "ua": {"pooled": ua_half}},
            {"model": "good", "kind": "paper model", "ua": {"pooled": 1.0}},
            {"model": "good", "kind": "closed-form fit (train.fit: sklearn)", "ua": {"pooled": ua_half}}]
    block = significance_block({"rows": rows}, tmp_path)
    by = {(r["model"], r["kind"]): r for r in block["rows"]}
    assert "vs_classical" not in by[("classical", "baseline")]
    good = by[("good", "paper model")]["vs_classical"]
    assert good["resolved"] and good["ua_diff"] == pytest.approx(1 - ua_half) and good["right_only_this"] == 30
    same = by[("good", "closed-form fit (train.fit: sklearn)")]["vs_classical"]
    assert same["ci"] == [0.0, 0.0] and not same["resolved"]  # the variant's predictions equal the baseline's
    table = significance_table({"rows": rows, "significance": block})
    assert "| `good` | paper model | 1.000 [1.000, 1.000] |" in table and "| **no** |" in table
    rows[1]["ua"]["pooled"] = 0.9  # a JSON that these predictions did not produce
    with pytest.raises(SystemExit, match="not the run behind this JSON"):
        significance_block({"rows": rows}, tmp_path)


def test_a_variant_row_is_compared_with_the_baseline_run_the_same_way(tmp_path):
    """speaker normalisation lifts the baseline too: its rows are judged against its own classical row."""
    from benchmarks.accuracy import VARIANTS, set_deltas, significance_block

    kind = VARIANTS["speaker-norm"][0]
    labels = list("abc") * 20
    wrong = [{"a": "b", "b": "c", "c": "a"}[x] for x in labels]
    half = labels[:30] + wrong[30:]
    _write_predictions(tmp_path, labels, (("results", "classical", wrong), ("results-speaker-norm", "classical", half),
                                          ("results-speaker-norm", "ilt", half)))
    yt, (yp,), _ = C.encode(labels, half)
    ua_half = C.ua(yt, yp, 3)
    rows = [{"model": "classical", "kind": "baseline", "ua": {"pooled": 0.0}},
            {"model": "classical", "kind": kind, "ua": {"pooled": ua_half}},
            {"model": "ilt", "kind": kind, "ua": {"pooled": ua_half}}]
    by = {(r["model"], r["kind"]): r for r in significance_block({"rows": rows}, tmp_path)["rows"]}
    ilt = by[("ilt", kind)]
    assert ilt["baseline_kind"] == kind and ilt["vs_classical"]["ua_diff"] == 0.0  # not +ua_half vs the plain one
    assert by[("classical", kind)]["baseline_kind"] == "baseline"
    set_deltas(rows)
    assert rows[2]["ua_minus_classical"] == 0.0 and rows[1]["ua_minus_classical"] == pytest.approx(ua_half)


def test_repeated_splits_pair_each_test_with_its_fold():
    # random_80_20_seeds tests an utterance in several folds: pairs are (utt_id, fold), not utt_id
    a = pd.DataFrame({"utt_id": ["u1", "u1", "u2"], "fold": [0, 1, 0], "label": ["x", "x", "y"],
                      "pred": ["x", "y", "y"]})
    b = a.assign(pred=["y", "x", "y"])
    c = C.compare_frames(a, b, n_boot=50)
    assert c.n == 3 and (c.mcnemar_b, c.mcnemar_c) == (1, 1)
    with pytest.raises(C.CompareError, match="predicted twice"):
        C.compare_frames(a.drop(columns="fold"), b.drop(columns="fold"))
    with pytest.raises(C.CompareError, match="1 only in a, 0 only in b"):
        C.compare_frames(a, b.iloc[:2])


GEN = '''import sys, pandas as pd, yaml
flip = int(yaml.safe_load(open("params.yaml"))["flip"])
labels = list("abc") * 20
preds = [{"a": "b", "b": "c", "c": "a"}[x] if i < flip else x for i, x in enumerate(labels)]
pd.DataFrame({"utt_id": [f"u{i:03d}" for i in range(60)], "fold": 0, "label": labels, "pred": preds}).to_parquet(
    "results/ilt/predictions.parquet", index=False)
'''


def test_cli_compare_git_revisions_and_a_dvc_experiment(tmp_path, monkeypatch):
    """A real git + DVC project: predictions.parquet is the DVC output of a stage; two commits and one
    experiment of it compare exactly as the files themselves do."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.cli.main import app

    repo = tmp_path / "proj"
    (repo / "results" / "ilt").mkdir(parents=True)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    dvc = str(Path(sys.executable).parent / "dvc")

    def sh(*cmd):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)

    (repo / "gen.py").write_text(GEN)
    (repo / "results" / "ilt" / "run.json").write_text(json.dumps({"model": "ilt", "plan_hash": "p1"}))
    (repo / "dvc.yaml").write_text(f"stages:\n  train:\n    cmd: {sys.executable} gen.py\n    deps: [gen.py]\n"
                                   "    params: [flip]\n    outs: [results/ilt/predictions.parquet]\n")
    sh("git", "init", "-q", "-b", "main")
    sh(dvc, "init", "-q")
    files = {}
    for flip in (30, 10):
        (repo / "params.yaml").write_text(f"flip: {flip}\n")
        sh(dvc, "repro", "-q")
        files[flip] = shutil.copy(repo / "results/ilt/predictions.parquet", tmp_path / f"flip{flip}.parquet")
        sh("git", "add", "-A")
        sh("git", "commit", "-q", "-m", f"flip {flip}")
    sh(dvc, "exp", "run", "-q", "-S", "flip=50", "-n", "exp-worse")
    files[50] = shutil.copy(repo / "results/ilt/predictions.parquet", tmp_path / "flip50.parquet")
    monkeypatch.chdir(repo)  # the workspace holds the experiment's file (flip 50): the others are read at revisions

    def direct(fa, fb, na, nb):
        c = C.compare_frames(pd.read_parquet(files[fa]), pd.read_parquet(files[fb]), (na, nb), 200)
        return "\n".join([f"{na}: UA {C._ci(c.ua_a)} %", f"{nb}: UA {C._ci(c.ua_b)} %",
                          C.verdict(c).replace("**", "")])

    r = CliRunner().invoke(app, ["compare", "ilt@HEAD~1", "ilt@HEAD", "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    want = direct(30, 10, "ilt@HEAD~1", "ilt@HEAD")
    assert r.output.strip() == want and "ilt@HEAD is better than ilt@HEAD~1: +33.3" in want
    r = CliRunner().invoke(app, ["compare", "ilt", "--rev-a", "exp-worse", "--rev-b", "main", "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == direct(50, 10, "ilt@exp-worse", "ilt@main")
    r = CliRunner().invoke(app, ["compare", "ilt@nosuchrev", "ilt@HEAD"])
    assert r.exit_code == 2 and "results/ilt/predictions.parquet at revision 'nosuchrev'" in r.output
    assert "dvc exp show" in r.output and "dvc pull" in r.output
    r = CliRunner().invoke(app, ["compare", "other@HEAD", "ilt"])
    assert r.exit_code == 2 and "results/other/predictions.parquet at revision 'HEAD'" in r.output


def test_history_table_puts_runs_side_by_side_and_marks_missing_rows():
    """benchmarks.accuracy --history: the README's summary of earlier runs, read from their JSON only."""
    from benchmarks.accuracy import history_table

    def run(cpu, wall_s, *rows):
        return {"machine": {"cpu": cpu}, "total_wall_s": wall_s,
                "rows": [{"model": m, "kind": k, "ua": {"pooled": ua}, "ua_minus_classical": d} for m, k, ua, d in rows]}

    new = run("Intel(R) Xeon(R) Processor", 3600, ("classical", "baseline", 0.6, 0.0), ("ilt", "paper model", 0.7, 0.1))
    old = run("AMD EPYC 7B13", 1800, ("classical", "baseline", 0.5, 0.0), ("rlc", "paper model", 0.45, -0.05))
    lines = history_table([("new.json", new), ("old.json", old)]).splitlines()
    assert "`new.json` (Intel Xeon, 60 min)" in lines[0] and "`old.json` (AMD EPYC, 30 min)" in lines[0]
    assert lines[2] == "| `classical` | baseline | 0.600 | 0.500 |"
    assert lines[3] == "| `ilt` | paper model | 0.700 (+0.100) | — |"
    assert lines[4] == "| `rlc` | paper model | — | 0.450 (-0.050) |"
