"""Prefect flows: cross-validated training and evaluation of one model over its paper's fold plan.

``cross_validate(model, plan, ...)`` (a Prefect ``@flow``) runs one ``train_fold`` task per fold, then writes
``<results_dir>/<model>/{metrics.json, run.json, confusion.csv, confusion.png, predictions.parquet}`` (scores in
metrics.json, provenance in run.json: pipeline/orchestration/results.py) and the same under ``<runs_dir>/<model>/<time>-<flow
run id>/`` (one record per flow run: parameters, git revision, metrics), and publishes a
metrics table and a confusion-matrix Markdown artifact. It runs with no server (Prefect's ephemeral API), or
against a server when ``PREFECT_API_URL`` is set (``prefect server start``; runs then show in the UI).

Caching (resume of an interrupted CV)
    Each fold task's cache key is a sha256 of *content*: the model name and resolved config, the training
    settings that change results (not device/workers), the fold's rows of the plan (utt_id, split), the labels
    of its utterances, the extractor version/config hash and per-utterance source checksums recorded in every
    feature file it reads, and the source code of ``pipeline/{data,train,metrics}.py`` and ``models/*.py``.
    Paths and timestamps are not in the key. Results are persisted as JSON under ``<storage_dir>/results``, so a
    rerun (after a kill, or of an unchanged configuration) returns finished folds from the cache and retrains
    only the others; a fold killed mid-training resumes from its per-epoch checkpoint under
    ``<storage_dir>/checkpoints/<model>/<cache key>/``. ``refresh_cache=True`` retrains everything.

Task runners (``task_runner`` parameter, also settable from the UI)
    ``threads`` (``ThreadPoolTaskRunner``; folds in one process train one at a time, see pipeline/training/train.py),
    ``processes`` (``ProcessPoolTaskRunner``: parallel folds, one process each), ``dask``
    (``prefect_dask.DaskTaskRunner``: a ``LocalCluster`` of ``max_workers`` single-threaded worker processes,
    or an existing cluster at ``dask_address``).

:func:`run_cross_validation` is what the DVC stage calls; :func:`serve` registers the flow as a deployment so
runs can be started from the Prefect UI with parameters.

The flow body only orchestrates plain functions: :func:`resolve_run` (plan, label map, inputs, configs →
:class:`RunSpec`), :func:`fold_cache_keys`, :func:`run_folds` (the task runner → :class:`FoldRuns`),
:func:`summarise`, :func:`run_record` (with :func:`comparability` and :func:`flow_run_record`),
:func:`write_outputs`, :func:`publish_artifacts` and :func:`summary_line`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from features.errors import EmoflowError
from pipeline.core.codehash import CODE_FILES, code_version  # noqa: F401  (the cache keys' code version; re-exported)
from pipeline.core.params import STAGE_LISTS
from pipeline.orchestration.results import run_label, split_result
from pipeline.training.metrics import (
    DIM_SCORES,
    aggregate_dimensional,
    aggregate_folds,
    compute_metrics,
    confusion_markdown,
    dimensional_markdown,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STORAGE = ".emoflow/prefect"
TASK_RUNNERS = ("threads", "processes", "dask")


class FlowError(EmoflowError, RuntimeError):
    """A cross-validation that cannot run as configured; the message says what to change."""


# ----------------------------------------------------------------------------------------------- helpers


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def git_revision(cwd: str | Path = ROOT) -> dict[str, Any]:
    """``{"revision": sha or None, "dirty": bool or None}`` of the checkout (provenance of a run)."""

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"revision": rev, "dirty": None if status is None else bool(status)}


def _jsonable(obj: Any) -> Any:
    """NaN/inf → None, numpy → Python, tuples → lists (strict JSON for DVC and the UI)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _dump_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def _write_all(writers: Mapping[Path, Any], *, kept: str) -> None:
    """Write each ``path`` by calling ``writers[path](temp)`` on a temp file beside it (same suffix, so
    matplotlib and pandas pick the format), then rename all of them over their paths; nothing is renamed
    unless every write succeeded. On any failure every temp file is removed, and a full disk (or file-size
    limit) is a one-line :class:`~features.errors.DiskFullError` naming the file, the space needed and free."""
    from features.errors import disk_full_error, is_disk_full

    temps: dict[Path, Path] = {}
    try:
        for path, write in writers.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temps[path] = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
            try:
                write(tmp)
            except OSError as e:
                if not is_disk_full(e):
                    raise
                old = sum(p.stat().st_size for p in writers if Path(p).is_file())  # same outputs, similar size
                raise disk_full_error(path, e, old or None, kept) from None
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def corpus_name(params: Mapping[str, Any]) -> str | None:
    """The corpus a run is on: ``dataset.corpus`` (e.g. ``ravdess`` for a ``manifest`` corpus), else ``dataset.name``."""
    ds = params.get("dataset") if isinstance(params, Mapping) else None
    if not isinstance(ds, Mapping):
        return None
    return ds.get("corpus") or ds.get("name")


def split_params(params: Mapping[str, Any] | None, model: str) -> tuple[dict[str, Any], dict[str, Any], dict]:
    """``(model_params, train_params, rest)`` from either a whole ``params.yaml`` dict (``models.<model>`` and
    ``train`` sections) or ``{"model": {...}, "train": {...}}``. A ``train`` key inside the model's section holds
    per-model training overrides, applied over the global ``train`` section."""
    params = dict(params or {})
    if "models" in params or "dataset" in params:
        model_sec = dict((params.get("models") or {}).get(model) or {})
    else:
        model_sec = dict(params.get("model") or {})
    train = dict(params.get("train") or {})
    for key in STAGE_LISTS:  # params.yaml's train.models / train.baselines list DVC stages, not settings
        if isinstance(train.get(key), list):
            train.pop(key)
    per_model = model_sec.pop("train", None) or {}
    train.update({k: v for k, v in per_model.items() if v is not None})
    return model_sec, train, params


# ----------------------------------------------------------------------------------------------- inputs


def load_inputs(manifest_path: str | Path, folds_path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pipeline.corpus.folds import read_folds
    from pipeline.corpus.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    return manifest, read_folds(folds_path)


def apply_label_map(manifest: pd.DataFrame, folds: pd.DataFrame, label_map: Mapping[str, str] | None,
                    unlabeled: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A model's own label map (``models.<name>.label_map``): ``corpus_label`` (the corpus' label before the
    dataset's map, e.g. IEMOCAP's ``exc``) → the model's class; utterances whose corpus label is not in the map
    leave every split of the plan (speaker independence is kept: rows are only removed). No map: unchanged.
    ``unlabeled`` (``train.distill.unlabeled``): those utterances stay in the *training* split of each fold,
    without a label (teacher-only items), and leave its validation and test splits.

    >>> m = pd.DataFrame({"utt_id": ["a", "b", "c"], "label": ["hap", "hap", "neu"],
    ...                   "corpus_label": ["exc", "hap", "neu"]})
    >>> f = pd.DataFrame({"utt_id": ["a", "b", "c"], "fold": 0, "split": ["train", "val", "test"]})
    >>> m2, f2 = apply_label_map(m, f, {"exc": "hap", "neu": "neu"})
    >>> list(m2["label"]), list(f2["utt_id"])
    (['hap', 'neu'], ['a', 'c'])
    >>> m3, f3 = apply_label_map(m, f, {"hap": "hap", "neu": "neu"}, unlabeled=True)  # "exc" kept unlabeled
    >>> list(m3["label"]), list(f3["split"])
    (['', 'hap', 'neu'], ['train', 'val', 'test'])
    """
    if not label_map:
        if unlabeled:
            raise FlowError("train.distill.unlabeled keeps the training utterances outside the model's label map "
                            "as unlabeled items: set models.<name>.label_map (e.g. the 4 classes of an 8-class "
                            "corpus)")
        return manifest, folds
    if not isinstance(label_map, Mapping):
        raise FlowError(f"label_map must map corpus labels to classes, got {label_map!r}")
    source = manifest["corpus_label"] if "corpus_label" in manifest.columns else manifest["label"]
    source = source.astype(str)
    keep = source.isin([str(k) for k in label_map])
    if not keep.any():
        raise FlowError(f"label_map {dict(label_map)} matches no utterance (corpus labels: "
                        f"{sorted(set(source))}); fix models.<name>.label_map")
    mapped = source.map({str(k): str(v) for k, v in label_map.items()})
    if unlabeled:  # outside the map: training items only, with no label
        from pipeline.training.data import UNLABELED_LABEL

        out = manifest.copy()
        out["label"] = mapped.fillna(UNLABELED_LABEL)
        outside = set(out.loc[~keep, "utt_id"].astype(str))
        drop = folds["utt_id"].astype(str).isin(outside) & (folds["split"] != "train")
        return out.reset_index(drop=True), folds[~drop].reset_index(drop=True)
    out = manifest.loc[keep].copy()
    out["label"] = mapped[keep]
    kept = set(out["utt_id"].astype(str))
    return out.reset_index(drop=True), folds[folds["utt_id"].astype(str).isin(kept)].reset_index(drop=True)


def label_mapping(manifest: pd.DataFrame) -> dict[str, str]:
    """``{corpus_label: label}`` as the run sees it (what comparability with a paper's label map checks)."""
    source = manifest["corpus_label"] if "corpus_label" in manifest.columns else manifest["label"]
    pairs = zip(source.astype(str), manifest["label"].astype(str), strict=True)
    return dict(sorted({(s, lab) for s, lab in pairs if lab}))  # "": an unlabeled item (distill.unlabeled)


def feature_provenance(features_dir: str | Path, features: list[str]) -> dict[str, dict[str, Any]]:
    from features.store import FeatureReader

    out = {}
    for name in features:
        r = FeatureReader(Path(features_dir) / f"{name}.h5")
        try:
            m = r.meta
            out[name] = {
                "extractor": m.extractor,
                "extractor_version": m.extractor_version,
                "config_hash": m.config_hash,
                "random_weights": m.random_weights,
                "weights": m.provenance.get("weights") or m.provenance.get("model") or m.provenance.get("source"),
            }
        finally:
            r.close()
    return out


def fold_cache_key(
    model: str,
    fold: int,
    *,
    manifest: pd.DataFrame,
    folds: pd.DataFrame,
    features_dir: str | Path,
    model_params: Mapping[str, Any],
    train_cfg: Mapping[str, Any],
    labels: list[str],
    code: str | None = None,
) -> str:
    """Content hash identifying one fold's training (see the module docstring); no paths, no timestamps."""
    from features.store import FeatureReader
    from models import get_model_info, make_config
    from pipeline.training.train import RUNTIME_KEYS, extra_features

    info = get_model_info(model)
    specs = info.input_specs(**dict(model_params))
    rows = folds[folds["fold"] == fold]
    fold_rows = sorted(zip(rows["utt_id"].astype(str), rows["split"].astype(str), strict=True))
    utts = {u for u, _ in fold_rows}
    lab = manifest.set_index(manifest["utt_id"].astype(str))["label"].astype(str)
    feats = {}
    for name in sorted({s.feature for s in specs.values()} | set(extra_features(train_cfg))):
        r = FeatureReader(Path(features_dir) / f"{name}.h5")
        try:
            sums = r.checksums()
            feats[name] = {
                "extractor": r.meta.extractor,
                "version": r.meta.extractor_version,
                "config_hash": r.meta.config_hash,
                "utts": _sha(sorted((u, sums.get(u)) for u in utts)),
            }
        finally:
            r.close()
    cfg = make_config(model, **dict(model_params))
    payload = {
        "model": model,
        "model_config": repr(cfg),
        "train": {k: v for k, v in sorted(train_cfg.items()) if k not in RUNTIME_KEYS},
        "fold": int(fold),
        "fold_rows": _sha(fold_rows),
        "labels": labels,
        "utt_labels": _sha(sorted((u, lab.get(u)) for u in utts)),
        "features": feats,
        "code": code or code_version(),
    }
    if train_cfg.get("task", "classification") != "classification":
        from pipeline.corpus.dimensional import target_array, target_columns

        names = target_columns(manifest.columns)
        ids = sorted(utts)
        payload["utt_targets"] = _sha([names, ids, target_array(manifest, ids, names).tolist()])
    return f"{model}-fold{int(fold)}-{_sha(payload)[:32]}"


# ----------------------------------------------------------------------------------------------- the task


def _key_from_param(context, parameters: dict[str, Any]) -> str:
    return str(parameters["cache_key"])


@task(name="train_fold", persist_result=True, result_serializer="json", cache_key_fn=_key_from_param)
def train_fold_task(
    model: str,
    fold: int,
    cache_key: str,
    manifest_path: str,
    folds_path: str,
    features_dir: str,
    model_params: dict[str, Any],
    train_params: dict[str, Any],
    labels: list[str],
    checkpoint_root: str | None,
    label_map: dict[str, str] | None = None,
    unlabeled: bool = False,
) -> dict[str, Any]:
    """Train one fold (pipeline.training.train.train_fold) and return its :class:`FoldResult` as a plain dict."""
    from pipeline.training.train import train_fold

    logger = get_run_logger()
    manifest, folds = apply_label_map(*load_inputs(manifest_path, folds_path), label_map, unlabeled)
    ckpt = Path(checkpoint_root) / model / cache_key if checkpoint_root else None
    result = train_fold(
        model,
        fold,
        manifest=manifest,
        folds=folds,
        features_dir=features_dir,
        model_params=model_params,
        train_params=train_params,
        checkpoint_dir=ckpt,
        labels=labels,
        log=logger.info,
    )
    return _jsonable(result.to_dict())


def make_task_runner(kind: str = "threads", max_workers: int | None = None, dask_address: str | None = None):
    """A Prefect task runner by name: ``threads`` | ``processes`` | ``dask`` (needs ``prefect-dask``)."""
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise FlowError("task_runner 'dask' needs prefect-dask: pip install 'emoflow[dask]'") from None
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        kw = {"processes": True, "threads_per_worker": 1}
        if max_workers:
            kw["n_workers"] = int(max_workers)
        return DaskTaskRunner(cluster_kwargs=kw)
    raise FlowError(f"unknown task_runner {kind!r}; choose one of {', '.join(TASK_RUNNERS)}")


# ----------------------------------------------------------------------------------------------- results


def summarise(model: str, fold_results: list[dict[str, Any]]) -> tuple[dict[str, Any], pd.DataFrame]:
    """(metrics, predictions): per-fold, mean ± std and pooled metrics, and all folds' test predictions.

    Classification scores come from a classification head (absent for ``task: regression``); ``dimensional``
    (CCC/Pearson/MAE per dimension, :func:`pipeline.training.metrics.aggregate_dimensional`) only from V/A/D targets."""
    if not fold_results:
        raise FlowError(f"{model}: no fold results to summarise")
    labels = fold_results[0]["labels"]
    preds = pd.concat([pd.DataFrame(r["predictions"]) for r in fold_results], ignore_index=True)
    classes = "wa" in fold_results[0]["test"]
    out: dict[str, Any] = {}
    if classes:
        agg = aggregate_folds([r["test"] for r in fold_results])
        pooled = compute_metrics(preds["label"], preds["pred"], labels)
        for k in ("wa", "ua", "macro_f1"):
            out[k] = {"mean": agg[k]["mean"], "std": agg[k]["std"], "pooled": pooled[k]}
        out["per_class_recall"] = {
            lab: {**agg["per_class_recall"].get(lab, {}), "pooled": pooled["per_class_recall"][lab]} for lab in labels
        }
    dims = list(fold_results[0]["test"].get("dims") or {})
    if dims:
        out["dimensional"] = aggregate_dimensional(
            [r["test"]["dims"] for r in fold_results],
            {d: preds[d].to_numpy(dtype=float, na_value=np.nan) for d in dims},
            {d: preds[f"pred_{d}"].to_numpy(dtype=float) for d in dims})
    out["folds"] = {
        str(r["fold"]): {
            **_fold_scores(r),
            "best_epoch": r["best_epoch"],
            "epochs_run": r["epochs_run"],
            "n_train": r["n_train"],
            "n_val": r["n_val"],
            "n_test": r["n_test"],
            "n_test_dropped": r["test"].get("n_dropped", 0),
            "runtime_s": r["runtime_s"],
            "train_samples_per_s": r["train_samples_per_s"],
        }
        for r in fold_results
    }
    out["n_folds"] = len(fold_results)
    out["labels"] = labels
    if classes:
        out["pooled_confusion"] = pooled["confusion"]
        out["pooled_confusion_normalized"] = pooled["confusion_normalized"]
    sps = [r["train_samples_per_s"] for r in fold_results if r["train_samples_per_s"] is not None]
    out["train_samples_per_s"] = float(np.mean(sps)) if sps else None  # None: every fold was resumed finished
    out["fold_runtime_s"] = float(sum(r["runtime_s"] for r in fold_results))
    return out, preds


def _fold_scores(r: dict[str, Any]) -> dict[str, Any]:
    """A fold's test (and validation) scores for ``folds.<fold>`` (classification keys first, as before)."""
    t, v = r["test"], r["val"]
    row: dict[str, Any] = {}
    if "wa" in t:
        row.update(wa=t["wa"], ua=t["ua"], macro_f1=t["macro_f1"], per_class_recall=t["per_class_recall"],
                   val_wa=v["wa"], val_ua=v["ua"])
    if "dims" in t:
        row.update(dims={d: {s: m[s] for s in DIM_SCORES} for d, m in t["dims"].items()}, val_ccc=v["ccc"],
                   unannotated=(r.get("extras") or {}).get("unannotated"))  # per split: masked utterances
    return row


def write_results(out_dir: str | Path, metrics: dict[str, Any], preds: pd.DataFrame) -> dict[str, Path]:
    """``metrics.json`` (scores only), ``run.json`` (everything else: corpus, comparability, plan, features, paper
    numbers, per-fold scores, flow run, git revision, parameters, resolved configs), ``confusion.csv``
    (actual,predicted rows for ``dvc plots``), ``confusion.png`` and ``predictions.parquet`` under ``out_dir``.
    A ``task: regression`` run has no classes: its confusion.csv is the header only and confusion.png holds
    true-vs-predicted scatter plots per dimension (the files DVC declares for every train stage)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = ("metrics.json", "run.json", "confusion.csv", "confusion.png", "predictions.parquet")
    paths = {name: out / name for name in names}
    # numbers only in the DVC metrics file, provenance beside it: see pipeline/orchestration/results.py
    scores, record = split_result(metrics)
    title = f"{metrics.get('model', '')} — pooled test predictions ({metrics.get('corpus', '')})"
    if "pooled_confusion" not in metrics:
        confusion = pd.DataFrame(columns=["actual", "predicted"])
        dims = list(metrics.get("dimensional") or {})

        def plot(p):
            plot_dimensional(preds, dims, p, title=title)
    else:
        confusion = preds[["label", "pred"]].rename(columns={"label": "actual", "pred": "predicted"})

        def plot(p):
            plot_confusion(metrics["pooled_confusion"], metrics["labels"], p, title=title)
    # all five or none: a full disk midway leaves the previous results whole (and no temp file)
    _write_all({
        paths["metrics.json"]: lambda p: _dump_json(p, scores),
        paths["run.json"]: lambda p: _dump_json(p, record),
        paths["confusion.csv"]: lambda p: confusion.to_csv(p, index=False),
        paths["confusion.png"]: plot,
        paths["predictions.parquet"]: lambda p: preds.to_parquet(p, index=False),
    }, kept=f"the previous results in {out} are kept and the finished folds are cached (the rerun reuses them)")
    return paths


def plot_dimensional(preds: pd.DataFrame, dims: list[str], path: str | Path, title: str = "") -> None:
    """True vs predicted value per dimension (one scatter panel each, the identity line dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(dims), 1), figsize=(3.2 * max(len(dims), 1), 3.4), dpi=100, squeeze=False)
    for ax, d in zip(axes[0], dims, strict=False):
        t, p = preds[d].to_numpy(dtype=float, na_value=np.nan), preds[f"pred_{d}"].to_numpy(dtype=float)
        ax.scatter(t, p, s=6, alpha=0.5)
        both = np.concatenate([t[~np.isnan(t)], p])
        lo, hi = float(both.min(initial=0.0)), float(both.max(initial=1.0))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"true {d}")
        ax.set_ylabel(f"predicted {d}")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], labels: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix heat map with counts (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5), dpi=100)
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _artifact_key(model: str, what: str) -> str:
    return f"{model}-{what}".lower().replace("_", "-")


def _fmt(v, digits=2):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(v, digits)


def metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics table artifact: one row per fold, then mean, std and pooled (WA/UA/F1 in %, CCC per dimension
    when the run has V/A/D targets)."""
    classes = "pooled_confusion" in metrics
    dims = list(metrics.get("dimensional") or {})
    rows = []
    for fold, m in metrics["folds"].items():
        row: dict[str, Any] = {"fold": fold}
        if classes:
            row.update({"WA": round(m["wa"], 2), "UA": round(m["ua"], 2), "macro-F1": round(m["macro_f1"], 2),
                        "val WA": round(m["val_wa"], 2), "val UA": round(m["val_ua"], 2)})
        row.update({f"CCC {d}": _fmt(m["dims"][d]["ccc"], 3) for d in dims})
        if dims:
            row["val CCC"] = _fmt(m["val_ccc"], 3)
        rows.append({**row, "best epoch": m["best_epoch"], "n test": m["n_test"]})
    names = (("WA", "wa"), ("UA", "ua"), ("macro-F1", "macro_f1"))
    for sub in ("mean", "std", "pooled"):
        row = {"fold": sub, **({n: _fmt(metrics[k][sub]) for n, k in names} if classes else {})}
        rows.append({**row, **{f"CCC {d}": _fmt(metrics["dimensional"][d]["ccc"][sub], 3) for d in dims}})
    return rows


def _flag(metrics: dict[str, Any]) -> str:
    return "" if metrics.get("comparable_to_paper") else " — NOT comparable to the paper (" + "; ".join(
        metrics.get("not_comparable_because", [])) + ")"


def artifact_markdown(model: str, metrics: dict[str, Any]) -> tuple[str, str]:
    """``(key suffix, Markdown)`` of the run's Markdown artifact: the pooled confusion matrix (``confusion``)
    and, with V/A/D targets, CCC/Pearson/MAE per dimension (a regression run: those only, ``dimensional``)."""
    classes = "pooled_confusion" in metrics
    labels = metrics["labels"]
    head = f"corpus **{metrics.get('corpus')}**, plan `{metrics.get('fold_plan')}`, {metrics['n_folds']} folds"
    parts = [f"# {model}: pooled test confusion matrix" if classes else f"# {model}: dimensional targets",
             head + _flag(metrics)]
    if classes:
        parts += [
            "## Counts",
            confusion_markdown(metrics["pooled_confusion"], labels),
            "## Row-normalised (recall per actual class)",
            confusion_markdown(metrics["pooled_confusion_normalized"], labels, normalized=True),
        ]
    if metrics.get("dimensional"):
        parts += ["## Dimensional targets (test: mean ± std over folds, and pooled)",
                  dimensional_markdown(metrics["dimensional"])]
    return ("confusion" if classes else "dimensional"), "\n\n".join(parts)


def publish_artifacts(model: str, metrics: dict[str, Any]) -> None:
    """A metrics table (:func:`metrics_rows`) and a Markdown artifact (:func:`artifact_markdown`)."""
    paper = metrics.get("paper") or {}
    create_table_artifact(
        key=_artifact_key(model, "cv-metrics"),
        table=_jsonable(metrics_rows(metrics)),
        description=f"{model} on {metrics.get('corpus')} ({metrics.get('fold_plan')}): test metrics in %"
        f"{' (CCC as a coefficient)' if metrics.get('dimensional') else ''}. "
        f"Paper: WA {paper.get('wa')} / UA {paper.get('ua')}{_flag(metrics)}",
    )
    what, md = artifact_markdown(model, metrics)
    create_markdown_artifact(key=_artifact_key(model, what), markdown=md,
                             description=f"{model}: pooled confusion matrix" if what == "confusion" else
                             f"{model}: CCC, Pearson and MAE per dimension")


# ----------------------------------------------------------------------------------------------- the flow
# cross_validate orchestrates; each step below is a plain function (testable without a Prefect flow run).


@dataclass(frozen=True)
class RunSpec:
    """One cross-validation run, resolved before any fold trains (see :func:`resolve_run`)."""

    model: str
    info: Any  # models.ModelInfo: the paper's fold plan, train defaults, paper row
    plan: str
    folds_path: Path
    manifest: pd.DataFrame  # after the label map
    plan_df: pd.DataFrame
    label_map: dict[str, str] | None
    model_params: dict[str, Any]  # as configured, without the flow-level keys fold_plan/label_map
    resolved_params: dict[str, Any]  # + input dimensions read from the store: what the cache key sees
    train_cfg: dict[str, Any]
    folds: list[int]  # the folds this run trains
    labels: list[str]
    features: dict[str, dict[str, Any]]  # feature_provenance of the model's inputs
    code: str  # code_version() of the training code


def resolve_run(model: str, plan: str | None, *, manifest_path: str | Path, folds_dir: str | Path,
                features_dir: str | Path, model_params: dict[str, Any] | None, train_params: dict[str, Any] | None,
                folds: list[int] | None, label_map: dict[str, str] | None) -> RunSpec:
    """The plan (argument, else ``models.<name>.fold_plan``, else the paper's), label map, inputs, training
    config, folds to run and the model config with the store's dimensions; reads the manifest, plan and store."""
    from models import get_model_info
    from pipeline.training.data import class_labels, open_readers, resolve_dims
    from pipeline.training.distill import uses_unlabeled
    from pipeline.training.train import extra_features, resolve_train_config

    info = get_model_info(model)
    model_params = dict(model_params or {})
    # flow-level keys of a models.<name> section (a deployment passes the section as it is)
    section_plan, section_map = model_params.pop("fold_plan", None), model_params.pop("label_map", None)
    plan = plan or section_plan or info.fold_plan
    label_map = label_map or section_map
    folds_path = Path(folds_dir) / f"{plan}.parquet"
    train_cfg = resolve_train_config(info.train, train_params)
    manifest, plan_df = apply_label_map(*load_inputs(manifest_path, folds_path), label_map,
                                        unlabeled=uses_unlabeled(train_cfg))
    all_folds = sorted(int(f) for f in plan_df["fold"].unique())
    chosen = all_folds if folds is None else [f for f in all_folds if f in set(folds)]
    if not chosen:
        raise FlowError(f"no folds to run: plan {plan} has folds {all_folds}, requested {folds}")
    labels = class_labels(manifest, plan_df["utt_id"].astype(str))
    # dimensions come from the store: resolve them once so the cache key sees the real model config
    specs = info.input_specs(**model_params)
    read = sorted({s.feature for s in specs.values()} | set(extra_features(train_cfg)))
    readers = open_readers(features_dir, read)
    try:
        dims = resolve_dims(specs, readers, str(train_cfg.get("layer_reduce", "mean")))
        # bytes flipped on disk read back as other numbers (HDF5 keeps no checksum): compare every utterance this
        # run trains on with its stored CRC-32 once, here, so a damaged file stops the run before fold 1 starts
        used = plan_df.loc[plan_df["fold"].isin(chosen), "utt_id"].astype(str).tolist()
        for r in readers.values():
            r.check_crc32(used)
    finally:
        for r in readers.values():
            r.close()
    return RunSpec(model=model, info=info, plan=plan, folds_path=folds_path, manifest=manifest, plan_df=plan_df,
                   label_map=label_map, model_params=model_params, resolved_params={**model_params, **dims},
                   train_cfg=train_cfg, folds=chosen, labels=labels,
                   features=feature_provenance(features_dir, read),
                   code=code_version())


def fold_cache_keys(spec: RunSpec, features_dir: str | Path) -> dict[int, str]:
    """fold → the content key of its ``train_fold`` task (:func:`fold_cache_key`)."""
    return {f: fold_cache_key(spec.model, f, manifest=spec.manifest, folds=spec.plan_df, features_dir=features_dir,
                              model_params=spec.resolved_params, train_cfg=spec.train_cfg, labels=spec.labels,
                              code=spec.code)
            for f in spec.folds}


@dataclass(frozen=True)
class FoldRuns:
    """What the fold tasks returned (sorted by fold), which came from the cache, and each fold's checkpoints."""

    results: list[dict[str, Any]]
    cached: list[int]
    checkpoint_dirs: dict[str, str]


def run_folds(spec: RunSpec, keys: dict[int, str], *, manifest_path: str | Path, features_dir: str | Path,
              storage_dir: str | Path, train_params: dict[str, Any] | None, task_runner: str,
              max_workers: int | None, dask_address: str | None, refresh_cache: bool, logger=None) -> FoldRuns:
    """One ``train_fold`` task per fold on the chosen task runner; results persist under ``<storage_dir>/results``
    (the resume cache), checkpoints under ``<storage_dir>/checkpoints/<model>/<key>``."""
    from pipeline.training.distill import uses_unlabeled

    storage = Path(storage_dir)
    # a Path is a local result store (no block document needed, works with and without a server)
    result_storage = (storage / "results").resolve()
    checkpoint_root = str((storage / "checkpoints").resolve())
    checkpoint_dirs = {str(f): str(Path(checkpoint_root) / spec.model / keys[f]) for f in spec.folds}  # for predict
    runner = make_task_runner(task_runner, max_workers, dask_address)
    fold_results: list[dict[str, Any]] = []
    with runner:
        futures = []
        for f in spec.folds:
            t = train_fold_task.with_options(
                task_run_name=f"{spec.model}-fold{f}",
                result_storage=result_storage,
                refresh_cache=refresh_cache,
            )
            params = dict(model=spec.model, fold=f, cache_key=keys[f],
                          manifest_path=str(Path(manifest_path).resolve()),
                          folds_path=str(spec.folds_path.resolve()), features_dir=str(Path(features_dir).resolve()),
                          model_params=spec.resolved_params, train_params=dict(train_params or {}),
                          labels=spec.labels, checkpoint_root=checkpoint_root,
                          label_map=dict(spec.label_map) if spec.label_map else None,
                          unlabeled=uses_unlabeled(spec.train_cfg))
            futures.append(runner.submit(t, parameters=params))
        cached = []
        for f, fut in zip(spec.folds, futures, strict=True):
            fold_results.append(fut.result())
            if fut.state.name == "Cached":
                cached.append(f)
        if cached and logger is not None:
            logger.info(f"{spec.model}: folds {cached} reused from the cache (same content key)")
    fold_results.sort(key=lambda r: r["fold"])
    return FoldRuns(fold_results, cached, checkpoint_dirs)


def random_weight_features(spec: RunSpec) -> list[str]:
    """The run's input features computed with random-weight encoders (the demo's)."""
    return sorted(n for n, p in spec.features.items() if p["random_weights"])


def comparability(spec: RunSpec, corpus: str) -> tuple[list[str], dict[str, str]]:
    """Why this run's numbers must not sit beside the paper's ([] = they may), and the run's label map
    (corpus label → class over the plan's utterances)."""
    from pipeline.training.train import ensemble_size

    info, plan, manifest, plan_df = spec.info, spec.plan, spec.manifest, spec.plan_df
    train_cfg, model_params, random_feats = spec.train_cfg, spec.model_params, random_weight_features(spec)
    reasons = []
    if corpus.lower() != "iemocap":
        reasons.append(f"corpus is {corpus!r}, the papers used IEMOCAP")
    if random_feats:
        reasons.append(f"random-weight encoders: {', '.join(random_feats)}")
    if plan != info.fold_plan:
        reasons.append(f"fold plan {plan!r} differs from the paper's {info.fold_plan!r}")
    reasons += info.deviations_for(**model_params)
    paper_map = info.paper.get("label_map")
    run_map = label_mapping(manifest[manifest["utt_id"].astype(str).isin(set(plan_df["utt_id"].astype(str)))])
    if paper_map and run_map != dict(sorted(paper_map.items())):
        reasons.append(f"label map {run_map} differs from the paper's {dict(sorted(paper_map.items()))} "
                       "(set models.<name>.label_map)")
    paper_subset = info.train.get("subset")
    if paper_subset and train_cfg.get("subset") != paper_subset:
        reasons.append(f"subset {train_cfg.get('subset')!r} differs from the paper's {paper_subset!r}")
    if model_params.get("inputs"):
        reasons.append(f"inputs {model_params['inputs']} are not the paper's")
    if train_cfg.get("normalize") or train_cfg.get("class_weights"):
        reasons.append("small-corpus settings (normalize/class_weights) are not the paper's recipe")
    if train_cfg.get("normalize") == "speaker":
        reasons.append("normalize: speaker standardises each test speaker with its own unlabelled audio")
    if train_cfg.get("augment"):
        reasons.append("augment (SpecAugment masks, random offset, speed perturbation) is not the paper's recipe")
    for key, what in (("mixup", "mixup"), ("swa_start", "swa_start (weight averaging)"),
                      ("label_smoothing", "label_smoothing")):
        if train_cfg.get(key):
            reasons.append(f"{what} is not the paper's recipe")
    if train_cfg.get("distill"):
        reasons.append(f"distill: trained against a linear probe on {train_cfg['distill']['feature']} "
                       "(a pretrained encoder) as well as the labels; the paper trained on labels only")
    if train_cfg.get("train_on_val"):
        reasons.append("train_on_val: trained on the validation speakers too, the paper held them out")
    if ensemble_size(train_cfg) > 1:
        reasons.append(f"seed_ensemble: {train_cfg['seed_ensemble']} models averaged per fold, the paper trained one")
    paper_noise, run_noise = info.train.get("noise_snr_db"), train_cfg.get("noise_snr_db")
    if paper_noise is not None and (run_noise != paper_noise or (train_cfg.get("noise_prob") or 1.0) != 1.0):
        reasons.append(f"input noise (noise_snr_db {run_noise}, noise_prob {train_cfg.get('noise_prob') or 1.0}) "
                       f"differs from the paper's ({paper_noise} dB on every train/validation item)")
    paper_select, run_select = info.train.get("select_on"), train_cfg.get("select_on")
    if paper_select and run_select not in (None, paper_select, "val_ccc"):  # val_ccc: flagged by task below
        reasons.append(f"selects epochs on {run_select}, the paper on {paper_select}")
    if train_cfg.get("task", "classification") != "classification":
        reasons.append(f"task {train_cfg['task']!r}: the papers trained classifiers only")
    return reasons, run_map


def flow_run_record(started: _dt.datetime, finished: _dt.datetime, runs: FoldRuns) -> dict[str, Any]:
    """run.json's ``run``: the Prefect flow run (id, name, parameters), times, git revision, cache hits, checkpoints."""
    from prefect.runtime import flow_run

    return {
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
        "flow_run_name": flow_run.name,
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "git": git_revision(),
        "prefect_api_url": os.environ.get("PREFECT_API_URL") or None,
        "parameters": _jsonable(dict(flow_run.parameters or {})),
        "cached_folds": runs.cached,
        "checkpoints": runs.checkpoint_dirs,
    }


def run_record(spec: RunSpec, metrics: dict[str, Any], *, corpus: str, t0: _dt.datetime, t1: _dt.datetime,
               run: dict[str, Any]) -> dict[str, Any]:
    """The run's scores (``metrics``, from :func:`summarise`) with its provenance: comparability, plan, label map,
    features, paper row, configs, code version and ``run`` (:func:`flow_run_record`)."""
    from pipeline.corpus.folds import plan_hash

    reasons, run_map = comparability(spec, corpus)
    info, train_cfg = spec.info, spec.train_cfg
    return {
        "model": spec.model,
        "corpus": corpus,
        "comparable_to_paper": not reasons,
        "not_comparable_because": reasons,
        "fold_plan": spec.plan,
        "plan_hash": plan_hash(spec.plan_df),
        "label_map": run_map,
        "protocol": info.paper.get("protocol"),
        "select_on": train_cfg["select_on"],
        "features": spec.features,
        "random_weights_features": random_weight_features(spec),
        "paper": {k: info.paper.get(k) for k in ("wa", "ua", "row", "title", "protocol")},
        **metrics,
        "runtime_s": (t1 - t0).total_seconds(),
        "train": {k: v for k, v in train_cfg.items()},
        "model_params": spec.resolved_params,
        "code_version": spec.code,
        "run": run,
    }


def write_outputs(out: dict[str, Any], preds: pd.DataFrame, *, results_dir: str | Path | None,
                  runs_dir: str | Path | None, started: _dt.datetime, logger=None) -> None:
    """:func:`write_results` into ``<results_dir>/<name>/`` (the DVC outputs) and the run's own record
    ``<runs_dir>/<name>/<start time>-<flow run id>/``, ``name`` the run's ``run_name`` (default: its model);
    either may be off (None)."""
    model, run_id = run_label(out), out["run"]["flow_run_id"]
    if results_dir:
        paths = write_results(Path(results_dir) / model, out, preds)
        if logger is not None:
            logger.info(f"{model}: results → {paths['metrics.json'].parent}")
    if runs_dir:
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        rdir = Path(runs_dir) / model / f"{stamp}-{(run_id or 'local')[:8]}"
        write_results(rdir, out, preds)


def summary_line(out: dict[str, Any], n_folds: int) -> str:
    """The run's one log line: WA/UA and CCC per dimension (mean ± std), and why it is not comparable."""
    model, reasons = run_label(out), out["not_comparable_because"]
    scores = [f"WA {out['wa']['mean']:.2f} ± {out['wa']['std']:.2f}, UA {out['ua']['mean']:.2f} ± "
              f"{out['ua']['std']:.2f}"] if "wa" in out else []
    scores += [f"CCC {d} {v['ccc']['mean']:.3f} ± {v['ccc']['std']:.3f}" for d, v in out.get("dimensional", {}).items()]
    return (f"{model}: {', '.join(scores)} over {n_folds} folds"
            + ("" if out["comparable_to_paper"] else f" (NOT comparable to the paper: {'; '.join(reasons)})"))


@flow(name="cross_validate", log_prints=True)
def cross_validate(
    model: str,
    plan: str | None = None,
    manifest_path: str = "data/manifest.parquet",
    folds_dir: str = "data/folds",
    features_dir: str = "data/features",
    results_dir: str | None = None,
    runs_dir: str | None = "runs",
    storage_dir: str = DEFAULT_STORAGE,
    model_params: dict[str, Any] | None = None,
    train_params: dict[str, Any] | None = None,
    folds: list[int] | None = None,
    corpus: str | None = None,
    task_runner: str = "threads",
    max_workers: int | None = None,
    dask_address: str | None = None,
    refresh_cache: bool = False,
    label_map: dict[str, str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Cross-validate ``model`` on fold plan ``plan`` (default: the model's paper plan); ``label_map``: the
    model's own corpus-label → class map (see :func:`apply_label_map`; default: the manifest's labels);
    ``name``: the run's name (default: the model), recorded as ``run_name`` when it differs.

    Writes ``<results_dir>/<name>/`` (when ``results_dir`` is set) and a run record under ``<runs_dir>``;
    returns the metrics dict (the content of ``metrics.json``).
    """
    logger = get_run_logger()
    t0 = _dt.datetime.now(_dt.timezone.utc)
    spec = resolve_run(model, plan, manifest_path=manifest_path, folds_dir=folds_dir, features_dir=features_dir,
                       model_params=model_params, train_params=train_params, folds=folds, label_map=label_map)
    runs = run_folds(spec, fold_cache_keys(spec, features_dir), manifest_path=manifest_path,
                     features_dir=features_dir, storage_dir=storage_dir, train_params=train_params,
                     task_runner=task_runner, max_workers=max_workers, dask_address=dask_address,
                     refresh_cache=refresh_cache, logger=logger)
    metrics, preds = summarise(model, runs.results)
    t1 = _dt.datetime.now(_dt.timezone.utc)
    out = run_record(spec, metrics, corpus=corpus or "unknown", t0=t0, t1=t1, run=flow_run_record(t0, t1, runs))
    if name and name != model:
        out["run_name"] = name
    write_outputs(out, preds, results_dir=results_dir, runs_dir=runs_dir, started=t0, logger=logger)
    publish_artifacts(run_label(out), out)
    logger.info(summary_line(out, len(runs.results)))
    return _jsonable({k: v for k, v in out.items() if k not in ("pooled_confusion", "pooled_confusion_normalized")})


# ----------------------------------------------------------------------------------------------- entry points


def run_cross_validation(
    model: str,
    *,
    manifest_path: str | Path,
    folds_dir: str | Path,
    features_dir: str | Path,
    results_dir: str | Path,
    params: Mapping[str, Any] | None = None,
    device: str | None = None,
    task_runner: str | None = None,
    seed: int | None = None,
    storage_dir: str | Path | None = None,
    runs_dir: str | Path | None = None,
    corpus: str | None = None,
    plan: str | None = None,
    folds: list[int] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Run the ``cross_validate`` flow for ``model`` (what the DVC ``train@<model>`` stage calls).

    ``params``: the whole ``params.yaml`` (sections ``models.<model>``, ``train``, ``dataset.name``) or
    ``{"model": {...}, "train": {...}}``. Flow-level settings are read from the ``train`` section
    (``task_runner``, ``max_workers``, ``dask_address``, ``storage_dir``, ``runs_dir``, ``refresh_cache``);
    explicit arguments win. Outputs go to ``<results_dir>/<name or model>/`` (``name``: a baseline's run on a plan
    that is not its own, ``train@classical-loso``). Returns the metrics dict.
    """
    # Fail fast, before Prefect starts a (temporary) server: a typo then costs one line, not 20 s and a traceback.
    from models import requirements

    model_params, train_params, whole = split_params(params, model)
    req = requirements(model, model_params)  # ValueError naming the known models; plan = section's or paper's
    model_params.pop("fold_plan", None)
    label_map = model_params.pop("label_map", None)  # models.<name>.label_map: the model's own classes
    plan = plan or req.fold_plan
    plan_file = Path(folds_dir) / f"{plan}.parquet"
    for path, fix in ((Path(manifest_path), "build it (`dvc repro manifest`)"),
                      (plan_file, f"make it (`dvc repro folds@{plan}`)")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; {fix} or check --manifest/--folds-dir")
    flow_keys = ("task_runner", "max_workers", "dask_address", "storage_dir", "runs_dir", "refresh_cache")
    flow_cfg = {k: train_params.pop(k) for k in flow_keys if k in train_params}
    if device is not None:
        train_params["device"] = device
    if seed is not None:
        train_params["seed"] = int(seed)
    if corpus is None:
        corpus = corpus_name(whole)
    # Without a server Prefect starts a temporary one and gives it 20 s, too little on a busy 2-core machine
    # (and every worker process of the processes/dask runners starts its own): allow 120 s unless configured.
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as startup
    from prefect.settings import temporary_settings

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    with temporary_settings(updates={startup: int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])}):
        return cross_validate(
            model=model,
            plan=plan,
            manifest_path=str(manifest_path),
            folds_dir=str(folds_dir),
            features_dir=str(features_dir),
            results_dir=str(results_dir),
            runs_dir=str(runs_dir) if runs_dir is not None else flow_cfg.get("runs_dir", "runs"),
            storage_dir=str(storage_dir or flow_cfg.get("storage_dir") or DEFAULT_STORAGE),
            model_params=model_params,
            train_params=train_params,
            folds=folds,
            corpus=corpus,
            task_runner=task_runner or flow_cfg.get("task_runner") or "threads",
            max_workers=flow_cfg.get("max_workers"),
            dask_address=flow_cfg.get("dask_address"),
            refresh_cache=bool(flow_cfg.get("refresh_cache", False)),
            label_map=label_map,
            name=name,
        )


def serve(
    params_path: str | Path | None = "params.yaml",
    *,
    name: str = "emoflow",
    models: list[str] | None = None,
    limit: int | None = None,
) -> None:
    """Register ``cross_validate`` deployments and serve them (blocks): one deployment per model, named
    ``cross_validate/<model>``, whose default parameters come from ``params.yaml`` (model section, train
    section, dataset name), so a UI "Quick run" reproduces the DVC stage and "Custom run" edits any parameter.
    Runs started from the UI are recorded under ``runs/<model>/`` (``results_dir`` is unset by default so
    that a UI run never overwrites DVC's outputs)."""
    import prefect

    from models import list_models

    whole: dict[str, Any] = {}
    if params_path and Path(params_path).exists():
        from pipeline.core.params import load_params

        whole = load_params(params_path)
    deployments = []
    for m in models or list_models():
        model_params, train_params, _ = split_params(whole, m)
        flow_cfg = {k: train_params.pop(k) for k in ("task_runner", "max_workers", "dask_address", "storage_dir",
                                                      "runs_dir", "refresh_cache") if k in train_params}
        defaults = _jsonable({
            "model": m,
            "model_params": model_params,
            "train_params": train_params,
            "corpus": corpus_name(whole),
            **{k: v for k, v in flow_cfg.items() if v is not None},
        })
        deployments.append(
            cross_validate.to_deployment(name=m, parameters=defaults, tags=[name, m],
                                         description=f"Cross-validate {m} on its paper's fold plan")
        )
    prefect.serve(*deployments, limit=limit)
