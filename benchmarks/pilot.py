"""Every fold of one model on an accuracy-benchmark workspace, with setting overrides: the quick, whole-plan
experiment behind a small-corpus setting (``train_fold`` directly, as the flow runs it, without Prefect).

    python -m benchmarks.pilot cnn_transformer --tag nonoise --set '{"train": {"noise_snr_db": "none"}}' \
        [--folds 0 1 2] [--workdir .emoflow/bench-ravdess] [--out benchmarks/results/pilots_ravdess.json]

Prints each fold's test UA, selected epoch and validation UA, then the mean validation UA (a score that never
touches a test fold; on RAVDESS's 2-actor validation splits it did not rank settings, see the README) and the
pooled test UA/WA; appends a row (model, tag, overrides, pooled and per-fold metrics, wall time, machine) to
``--out``. A pilot chooses settings; the benchmark (``make bench-accuracy``, through the pipeline's stages)
gives the results quoted as results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.diagnose_fold import add_workspace_args, emit_row, load_workspace  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--tag", required=True, help="a name for this setting in the results")
    ap.add_argument("--folds", type=int, nargs="*", default=None, help="default: every fold of the plan")
    ap.add_argument("--plan", default=None, help="fold plan (default: the model's fold_plan in the params)")
    add_workspace_args(ap)
    args = ap.parse_args(argv)

    import torch
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from benchmarks.accuracy import machine_info
    from pipeline.training.train import train_fold

    overrides = json.loads(args.set)
    ws = load_workspace(args.workdir, args.model, overrides, args.plan)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    true, pred, per_fold = [], [], []
    for fold in args.folds if args.folds is not None else sorted(ws.folds["fold"].unique()):
        r = train_fold(args.model, int(fold), manifest=ws.manifest, folds=ws.folds, features_dir=ws.features_dir,
                       model_params=ws.model_params, train_params=ws.train_params, log=lambda s: None)
        true += r.predictions["label"]
        pred += r.predictions["pred"]
        per_fold.append({"fold": int(fold), "test_ua": r.test["ua"], "val_ua": r.val["ua"],
                         "best_epoch": r.best_epoch, "epochs_run": r.epochs_run})
        print(f"{args.tag} {per_fold[-1]}", flush=True)
    row = {"model": args.model, "tag": args.tag, "plan": ws.plan, "overrides": overrides,
           "ua_pooled": balanced_accuracy_score(true, pred), "wa_pooled": accuracy_score(true, pred),
           "val_ua_mean": sum(f["val_ua"] for f in per_fold) / len(per_fold) / 100,
           "folds": per_fold, "wall_s": time.perf_counter() - t0, "threads": args.threads,
           "machine": machine_info()}
    return emit_row(row, ("model", "tag", "val_ua_mean", "ua_pooled", "wa_pooled", "wall_s"), args.out)


if __name__ == "__main__":
    main()
