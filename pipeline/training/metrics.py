"""Classification metrics for speech emotion recognition (pure functions, scikit-learn underneath).

* **WA** (weighted accuracy) = overall accuracy;
* **UA** (unweighted accuracy) = mean per-class recall = scikit-learn's balanced accuracy;
* macro-F1, per-class recall, confusion matrix (counts, and row-normalised: row = actual class).

All percentages: every scalar metric is reported in **percent** (0–100), the unit the papers publish, so our
numbers and the papers' sit side by side in ``metrics.json`` without conversion.

>>> m = compute_metrics(["a", "a", "a", "b"], ["a", "a", "a", "a"], labels=["a", "b"])
>>> m["wa"], m["ua"]  # WA rewards the majority class; UA does not
(75.0, 50.0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
)

SCALARS = ("wa", "ua", "macro_f1")


def compute_metrics(y_true: Sequence, y_pred: Sequence, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics of one set of predictions.

    ``y_true``/``y_pred``: 1-D sequences of class labels (strings or ints, same type as ``labels``);
    ``labels``: every class, in the order used for the confusion matrix and per-class recall.
    Returns ``{"n", "wa", "ua", "macro_f1", "per_class_recall": {label: %}, "confusion": [[int]],
    "confusion_normalized": [[float]]}`` (confusion rows = actual, columns = predicted). A class absent from
    ``y_true`` has recall NaN and is left out of UA (scikit-learn's balanced accuracy does the same, with a
    warning we silence: a small test fold can lack a class).
    """
    y_true = np.asarray(list(y_true))
    y_pred = np.asarray(list(y_pred))
    labels = list(labels)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {y_true.shape} and {y_pred.shape}")
    if len(y_true) == 0:
        raise ValueError("no predictions to score (empty test split?)")
    unknown = sorted(set(y_true.tolist()) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} in y_true are not in the class list {labels}")
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(support[:, None] > 0, cm / np.maximum(support[:, None], 1), 0.0)
    present = [lab for lab, s in zip(labels, support, strict=True) if s > 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        ua = balanced_accuracy_score(y_true, y_pred)
        f1 = f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        # a class absent from y_true has no recall: NaN, not 0
        recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    return {
        "n": int(len(y_true)),
        "wa": 100.0 * float(accuracy_score(y_true, y_pred)),
        "ua": 100.0 * float(ua),
        "macro_f1": 100.0 * float(f1),
        "per_class_recall": {str(lab): 100.0 * float(r) for lab, r in zip(labels, recall, strict=True)},
        "support": {str(lab): int(s) for lab, s in zip(labels, support, strict=True)},
        "confusion": cm.astype(int).tolist(),
        "confusion_normalized": norm.astype(float).tolist(),
    }


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) ignoring NaN."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def aggregate_folds(fold_metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over folds of WA, UA, macro-F1 and each class's recall.

    ``fold_metrics``: one :func:`compute_metrics` dict per fold.
    Returns ``{"wa": {"mean", "std"}, "ua": ..., "macro_f1": ..., "per_class_recall": {label: {"mean", "std"}},
    "n_folds"}``. The std is the sample standard deviation over folds (ddof=1), the usual "± std" of papers.

    >>> agg = aggregate_folds([{"wa": 60.0, "ua": 50.0, "macro_f1": 40.0, "per_class_recall": {}},
    ...                        {"wa": 70.0, "ua": 60.0, "macro_f1": 50.0, "per_class_recall": {}}])
    >>> agg["wa"]["mean"], round(agg["wa"]["std"], 4)
    (65.0, 7.0711)
    """
    if not fold_metrics:
        raise ValueError("no folds to aggregate")
    out: dict[str, Any] = {k: _mean_std([m[k] for m in fold_metrics]) for k in SCALARS}
    labels = list(dict.fromkeys(lab for m in fold_metrics for lab in m.get("per_class_recall", {})))
    out["per_class_recall"] = {
        lab: _mean_std([m["per_class_recall"].get(lab, float("nan")) for m in fold_metrics]) for lab in labels
    }
    out["n_folds"] = len(fold_metrics)
    return out


def confusion_markdown(confusion: Sequence[Sequence[float]], labels: Sequence[str], normalized: bool = False) -> str:
    """A confusion matrix as a Markdown table (rows = actual, columns = predicted)."""
    head = "| actual \\ predicted | " + " | ".join(labels) + " |"
    sep = "|---|" + "---|" * len(labels)
    rows = []
    for lab, row in zip(labels, confusion, strict=True):
        cells = [f"{v:.2f}" if normalized else str(int(v)) for v in row]
        rows.append(f"| **{lab}** | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *rows])


# --- dimensional targets (valence/arousal/dominance) ---------------------------------------------------------


def ccc(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Lin's concordance correlation coefficient, the score of dimensional SER (MSP-Podcast, the SER challenges):
    ``2 cov(t, p) / (var t + var p + (mean t - mean p)²)`` with population (ddof=0) moments, as Lin (1989)
    defines it. Unlike Pearson's r it punishes a shift or a scale error: predictions ``t + 1`` give r = 1 but
    CCC < 1. Pairs with a NaN are left out; NaN when nothing is left or both sides are constant and equal.

    >>> ccc([1, 2, 3], [1, 2, 3]), round(ccc([1, 2, 3], [2, 3, 4]), 4)  # 2·(2/3) / (2/3 + 2/3 + 1) = 4/7
    (1.0, 0.5714)
    """
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {t.shape} and {p.shape}")
    ok = ~(np.isnan(t) | np.isnan(p))
    t, p = t[ok], p[ok]
    if t.size == 0:
        return float("nan")
    denom = t.var() + p.var() + (t.mean() - p.mean()) ** 2
    if denom == 0:
        return float("nan")
    return float(2 * np.mean((t - t.mean()) * (p - p.mean())) / denom)


def dimensional_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """CCC, Pearson's r and mean absolute error of one dimension (NaN pairs left out; r is NaN for a constant
    side)."""
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    ok = ~(np.isnan(t) | np.isnan(p))
    t, p = t[ok], p[ok]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = float(np.corrcoef(t, p)[0, 1]) if t.size > 1 and t.std() > 0 and p.std() > 0 else float("nan")
    return {"n": int(t.size), "ccc": ccc(t, p), "pearson": r,
            "mae": float(np.mean(np.abs(t - p))) if t.size else float("nan")}


#: the per-dimension scores of :func:`dimensional_metrics` that runs aggregate and report
DIM_SCORES = ("ccc", "pearson", "mae")


def aggregate_dimensional(fold_dims: Sequence[dict[str, dict[str, float]]],
                          pooled_true: dict[str, Sequence[float]],
                          pooled_pred: dict[str, Sequence[float]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{dim: {score: {"mean", "std", "pooled"}}}`` for CCC, Pearson and MAE: mean ± sample std over folds of
    each fold's score, and the score of every fold's test predictions together (``pooled_true/pred``: dim →
    values). Pooled CCC is not the mean of fold CCCs: it also sees offsets between folds.

    >>> agg = aggregate_dimensional([{"v": {"ccc": 1.0, "pearson": 1.0, "mae": 0.0}},
    ...                              {"v": {"ccc": 0.5, "pearson": 1.0, "mae": 1.0}}],
    ...                             {"v": [1, 2, 3]}, {"v": [1, 2, 3]})
    >>> agg["v"]["ccc"]["mean"], agg["v"]["ccc"]["pooled"], agg["v"]["mae"]["std"] > 0
    (0.75, 1.0, True)
    """
    out = {}
    for dim in pooled_true:
        pooled = dimensional_metrics(pooled_true[dim], pooled_pred[dim])
        out[dim] = {s: {**_mean_std([f[dim][s] for f in fold_dims]), "pooled": pooled[s]} for s in DIM_SCORES}
    return out


def dimensional_markdown(dimensional: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per dimension: CCC mean ± std over folds and pooled, pooled Pearson's r and MAE (Markdown)."""

    def f(v, digits=3):
        return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"

    rows = ["| dimension | CCC (mean ± std) | CCC (pooled) | Pearson r (pooled) | MAE (pooled) |",
            "|---|---|---|---|---|"]
    for dim, s in dimensional.items():
        c = s["ccc"]
        rows.append(f"| {dim} | {f(c['mean'])} ± {f(c['std'])} | {f(c['pooled'])} | {f(s['pearson']['pooled'])} "
                    f"| {f(s['mae']['pooled'])} |")
    return "\n".join(rows)
