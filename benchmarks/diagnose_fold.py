"""One fold of one model on an accuracy-benchmark workspace, with setting overrides: the quick experiment behind
a small-corpus setting (train the fold directly, no Prefect; the same ``train_fold`` the flow runs).

    python -m benchmarks.diagnose_fold ilt 0 --workdir .emoflow/bench-ravdess \
        --set '{"train": {"epochs": 30, "patience": null}}' [--out diagnose.json]

Prints every epoch (train loss, validation WA/UA) and the fold's test UA/WA/recall; with ``--out`` appends a
row (model, fold, overrides, history, test metrics, timing, machine) to a JSON list. One fold of a
speaker-independent plan is a diagnosis, not a result: quote benchmark rows (all folds) as results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
#: keys of the params' train section that say how to run, not what to compute (the flow reads them)
FLOW_KEYS = ("models", "baselines", "task_runner", "max_workers", "dask_address", "device")


def fold_settings(params: dict, model: str, overrides: dict) -> tuple[dict, dict]:
    """(model params, train params) as the flow would resolve them, with ``overrides`` on top."""
    mp = dict(params["models"].get(model) or {})
    for k in ("fold_plan", "label_map", "inputs"):
        mp.pop(k, None)
    tp = {k: v for k, v in (params.get("train") or {}).items() if k not in FLOW_KEYS}
    tp.update(mp.pop("train", None) or {})
    tp.update(overrides.get("train") or {})
    mp.update(overrides.get("model") or {})
    return mp, tp


@dataclass
class Workspace:
    """What a fold needs from a benchmark workspace, with a pilot's overrides applied."""

    plan: str
    manifest: Any
    folds: Any
    features_dir: Path
    model_params: dict
    train_params: dict


def load_workspace(workdir: str | Path, model: str, overrides: dict, plan: str | None = None) -> Workspace:
    """The params, manifest and fold plan of ``workdir`` (as ``benchmarks.accuracy`` built it) for ``model``."""
    import pandas as pd
    import yaml

    from models import get_model_info
    from pipeline.orchestration.flows import apply_label_map
    from pipeline.training.distill import uses_unlabeled
    from pipeline.training.train import resolve_train_config

    work = Path(workdir)
    params = yaml.safe_load((work / "params.yaml").read_text())
    mp, tp = fold_settings(params, model, overrides)
    section = params["models"].get(model) or {}
    if plan is None:  # as the flow resolves it: the model's section, else the paper's plan
        plan = section.get("fold_plan") or get_model_info(model).fold_plan
    # the model's own label map, as the flow applies it (with distill.unlabeled: the rest kept unlabeled)
    manifest, folds = apply_label_map(
        pd.read_parquet(work / "data" / "manifest.parquet"),
        pd.read_parquet(work / "data" / "folds" / f"{plan}.parquet"), section.get("label_map"),
        unlabeled=uses_unlabeled(resolve_train_config(get_model_info(model).train, tp)))
    return Workspace(plan, manifest, folds, work / "data" / "features", mp, tp)


def add_workspace_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--workdir", default=".emoflow/bench-ravdess", help="a workspace benchmarks.accuracy built")
    ap.add_argument("--set", default="{}", help='JSON overrides: {"train": {...}, "model": {...}}')
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="append the row to this JSON list")


def emit_row(row: dict, shown: tuple[str, ...], out: str | Path | None) -> dict:
    """Print the ``shown`` keys of ``row`` as one JSON line and append the whole row to ``out`` (if given)."""
    print(json.dumps({k: row[k] for k in shown}))
    append_row(out, row)
    return row


def append_row(out: str | Path | None, row: dict) -> None:
    if out:
        out = Path(out)
        rows = json.loads(out.read_text()) if out.exists() else []
        out.write_text(json.dumps(rows + [row], indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("fold", type=int)
    ap.add_argument("--plan", default=None, help="fold plan (default: the model's fold_plan in the params)")
    add_workspace_args(ap)
    args = ap.parse_args(argv)

    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.accuracy import machine_info
    from pipeline.training.train import train_fold

    overrides = json.loads(args.set)
    ws = load_workspace(args.workdir, args.model, overrides, args.plan)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    r = train_fold(args.model, args.fold, manifest=ws.manifest, folds=ws.folds, features_dir=ws.features_dir,
                   model_params=ws.model_params, train_params=ws.train_params, log=lambda s: print(s, flush=True))
    row = {"model": args.model, "fold": args.fold, "plan": ws.plan, "overrides": overrides,
           "test": {k: r.test[k] for k in ("ua", "wa", "macro_f1", "per_class_recall") if k in r.test},
           "val": {k: r.val[k] for k in ("ua", "wa") if k in r.val}, "best_epoch": r.best_epoch,
           "epochs_run": r.epochs_run, "history": r.history, "wall_s": time.perf_counter() - t0,
           "machine": machine_info()}
    return emit_row(row, ("test", "val", "best_epoch", "epochs_run", "wall_s"), args.out)


if __name__ == "__main__":
    main()
