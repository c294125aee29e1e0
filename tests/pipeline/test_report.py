"""The comparison report: our numbers beside the papers' only when comparable."""

from __future__ import annotations

import json

import pytest

from pipeline.orchestration.report import write_report


def test_report_flags_demo_and_random_weight_results(tmp_path):
    res = tmp_path / "results"
    for model, corpus, rw in (("ilt", "demo", []), ("ks_transformer", "iemocap", ["wav2vec2"]),
                              ("cat", "iemocap", [])):
        (res / model).mkdir(parents=True)
        (res / model / "metrics.json").write_text(json.dumps({
            "model": model, "corpus": corpus, "random_weights_features": rw,
            "features": {"logmel40": {"random_weights": False}},
            "wa": {"mean": 55.5, "std": 1.25}, "ua": {"mean": 50.0, "std": 2.0}, "macro_f1": {"mean": 49.0, "std": 1.0},
            "paper": {"wa": 67.56, "ua": 68.63, "protocol": "p"}, "fold_plan": "x", "n_folds": 5, "runtime_s": 12.0,
        }))
    text = write_report(res, tmp_path / "report.md").read_text()
    main_table = text.split("\n\n## ")[0]  # the comparison table (a reference table of paper numbers follows)
    rows = {line.split("|")[1].strip(): line for line in main_table.splitlines() if line.startswith("| ")}
    assert "55.50 ± 1.25" in rows["cat"] and "67.56" in rows["cat"] and "⚠" not in rows["cat"]
    for m in ("ilt", "ks_transformer"):
        assert "⚠ not comparable" in rows[m] and "67.56" not in rows[m]  # paper numbers never beside demo ones
    assert "corpus is 'demo'" in text and "random-weight encoders: wav2vec2" in text


    reference = text.split("## Published numbers")[1]
    assert "| ilt | 67.56 | 68.63 |" in reference  # the paper's numbers are still shown, apart from ours


def test_report_without_results_and_with_a_broken_file(tmp_path):
    assert "No results yet" in write_report(tmp_path / "none", tmp_path / "r.md").read_text()
    (tmp_path / "res" / "ilt").mkdir(parents=True)
    (tmp_path / "res" / "ilt" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json"):
        write_report(tmp_path / "res", tmp_path / "r.md")
