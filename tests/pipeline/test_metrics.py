"""Metrics against hand-computed confusion matrices."""

from __future__ import annotations

import math

import pytest

from pipeline.training.metrics import aggregate_folds, compute_metrics, confusion_markdown


def test_imbalanced_wa_and_ua_differ():
    # 8 "neu", 2 "ang"; the classifier always says "neu"
    y_true = ["neu"] * 8 + ["ang"] * 2
    y_pred = ["neu"] * 10
    m = compute_metrics(y_true, y_pred, labels=["ang", "neu"])
    assert m["confusion"] == [[0, 2], [0, 8]]  # rows actual (ang, neu), columns predicted
    assert m["wa"] == pytest.approx(80.0)
    assert m["ua"] == pytest.approx(50.0)  # (0 + 100) / 2
    assert m["per_class_recall"] == {"ang": 0.0, "neu": 100.0}
    # F1(neu) = 2·0.8·1/(1.8) = 0.8889, F1(ang) = 0 → macro 44.44
    assert m["macro_f1"] == pytest.approx(100 * (2 * 0.8 / 1.8) / 2, abs=1e-9)
    assert m["confusion_normalized"] == [[0.0, 1.0], [0.0, 1.0]]


def test_three_classes_hand_computed():
    # confusion (rows actual a,b,c; cols predicted):
    #   a: 3 1 0   b: 1 1 0   c: 0 2 2
    y_true = ["a"] * 4 + ["b"] * 2 + ["c"] * 4
    y_pred = ["a", "a", "a", "b", "a", "b", "b", "b", "c", "c"]
    m = compute_metrics(y_true, y_pred, labels=["a", "b", "c"])
    assert m["confusion"] == [[3, 1, 0], [1, 1, 0], [0, 2, 2]]
    assert m["n"] == 10
    assert m["wa"] == pytest.approx(60.0)  # 6 of 10 on the diagonal
    assert m["ua"] == pytest.approx(100 * (3 / 4 + 1 / 2 + 2 / 4) / 3)
    assert m["per_class_recall"]["a"] == pytest.approx(75.0)
    # precision a = 3/4, b = 1/4, c = 2/2; recall .75, .5, .5
    f1 = [2 * p * r / (p + r) for p, r in ((0.75, 0.75), (0.25, 0.5), (1.0, 0.5))]
    assert m["macro_f1"] == pytest.approx(100 * sum(f1) / 3)
    assert m["confusion_normalized"][2] == pytest.approx([0.0, 0.5, 0.5])
    assert m["support"] == {"a": 4, "b": 2, "c": 4}


def test_absent_class_has_nan_recall_and_is_left_out_of_ua():
    m = compute_metrics(["a", "a", "b"], ["a", "b", "b"], labels=["a", "b", "c"])
    assert math.isnan(m["per_class_recall"]["c"])
    assert m["ua"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert m["confusion"][2] == [0, 0, 0]


def test_integer_labels_work():
    m = compute_metrics([0, 1, 1, 1], [0, 1, 0, 1], labels=[0, 1])
    assert m["wa"] == pytest.approx(75.0)
    assert m["ua"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="equal length"):
        compute_metrics(["a"], ["a", "b"], labels=["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [], labels=["a"])
    with pytest.raises(ValueError, match="not in the class list"):
        compute_metrics(["x"], ["a"], labels=["a"])


def test_aggregate_folds_mean_and_sample_std():
    f1 = compute_metrics(["a", "b"], ["a", "b"], labels=["a", "b"])  # WA 100
    f2 = compute_metrics(["a", "b"], ["a", "a"], labels=["a", "b"])  # WA 50, UA 50
    agg = aggregate_folds([f1, f2])
    assert agg["n_folds"] == 2
    assert agg["wa"]["mean"] == pytest.approx(75.0)
    assert agg["wa"]["std"] == pytest.approx(math.sqrt(((100 - 75) ** 2 + (50 - 75) ** 2) / 1))
    assert agg["per_class_recall"]["b"]["mean"] == pytest.approx(50.0)
    single = aggregate_folds([f2])
    assert single["wa"] == {"mean": 50.0, "std": 0.0}
    with pytest.raises(ValueError):
        aggregate_folds([])


def test_confusion_markdown_lists_counts():
    md = confusion_markdown([[3, 1], [0, 2]], ["ang", "neu"])
    assert "| **ang** | 3 | 1 |" in md and "| **neu** | 0 | 2 |" in md
    assert "0.50" in confusion_markdown([[0.5, 0.5], [0.0, 1.0]], ["a", "b"], normalized=True)
