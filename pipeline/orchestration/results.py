"""The two files of a finished cross-validation, ``results/<model>/metrics.json`` and ``run.json``.

``metrics.json`` is what DVC compares (``dvc metrics show/diff``, ``dvc exp show``): numbers only, short keys,
so the table has one readable row per run (under 210 columns on the demo)::

    {"wa": {"mean", "std", "pooled"}, "ua": {...}, "f1": {...}, "recall": {label: pooled recall}}

``f1`` is macro-F1; ``mean``/``std`` are over the folds, ``pooled`` is over every fold's test predictions
together; all in percent. A run with V/A/D targets (``task: regression | multitask``) adds
``{"ccc": {dim: {"mean", "std", "pooled"}}, "pearson": {...}, "mae": {...}}`` (coefficients, and MAE in the
targets' unit); a regression run has no ``wa``/``ua``/``f1``/``recall``. ``run.json`` holds everything else the flow knows: model, corpus, whether it is
comparable to the paper and why not, fold plan and its hash, protocol, features and their provenance, the
paper's row, labels, per-fold scores and runtimes, the resolved configs, git revision and flow run.

:func:`split_result` turns the flow's result dict into the two; :func:`load_result` joins them back (and reads
the older single-file ``metrics.json`` that carried provenance too). Pure apart from :func:`load_result`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCORES = ("wa", "ua", "macro_f1")
#: per-dimension scores of dimensional runs (pipeline/training/metrics.py DIM_SCORES), keyed score → dimension
DIM_SCORES = ("ccc", "pearson", "mae")
#: short names in metrics.json: DVC's table is as wide as the sum of the flattened key names
FILE_NAMES = {"wa": "wa", "ua": "ua", "macro_f1": "f1"}
#: too big for either file (confusion.csv and confusion.png carry them)
_LEFT_OUT = ("pooled_confusion", "pooled_confusion_normalized")


def run_label(record: dict[str, Any]) -> str:
    """A run's name: its ``run_name`` (a baseline on another model's fold plan, ``classical-loso``), else its
    model — the name of its ``results/<name>/`` directory."""
    return str(record.get("run_name") or record["model"])


def split_result(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics.json content, run.json content)`` of a ``cross_validate`` result.

    run.json keeps the record's established top level (``flow_run_id``, ``git``, ``parameters``, ... from
    ``result["run"]``) beside the provenance keys; the per-class recall's fold mean/std stay there too."""
    metrics: dict[str, Any] = {
        FILE_NAMES[k]: {s: result[k][s] for s in ("mean", "std", "pooled")} for k in SCORES if k in result
    }
    if "per_class_recall" in result:
        metrics["recall"] = {c: v["pooled"] for c, v in result["per_class_recall"].items()}
    for score in DIM_SCORES if "dimensional" in result else ():
        metrics[score] = {d: v[score] for d, v in result["dimensional"].items()}
    record = {k: v for k, v in result.items() if k not in (*SCORES, "run", "dimensional", *_LEFT_OUT)}
    return metrics, {**(result.get("run") or {}), **record}


def join_result(metrics: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`split_result` (less the ``run`` nesting): one dict with the flow's key names."""
    if "f1" not in metrics and "ccc" not in metrics:  # an older metrics.json: scores and provenance in one file
        return {**record, **metrics}
    out = {**record, **{k: metrics[FILE_NAMES[k]] for k in SCORES if FILE_NAMES[k] in metrics}}
    if "per_class_recall" not in out and "recall" in metrics:
        out["per_class_recall"] = {c: {"pooled": v} for c, v in metrics["recall"].items()}
    if "ccc" in metrics:
        out["dimensional"] = {d: {s: metrics[s][d] for s in DIM_SCORES if d in metrics.get(s, {})}
                              for d in metrics["ccc"]}
    return out


def load_result(out_dir: str | Path) -> dict[str, Any]:
    """``<out_dir>/metrics.json`` joined with ``<out_dir>/run.json`` (absent: scores only); an unreadable file
    raises ValueError naming it and the stage that rewrites it."""
    out = Path(out_dir)
    parts = []
    for name in ("metrics.json", "run.json"):
        path = out / name
        if name == "run.json" and not path.exists():
            parts.append({})
            continue
        try:
            parts.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable {name} ({e}); rerun `dvc repro train@{out.name}`") from None
    return join_result(*parts)
