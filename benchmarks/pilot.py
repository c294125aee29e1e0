"""Every fold of one model on an accuracy-benchmark workspace, with setting overrides: the quick, whole-plan
experiment behind a small-corpus setting (``train_fold`` directly, as the flow runs it, without Prefect).

    python -m benchmarks.pilot cnn_transformer --tag nonoise --set '{"train": {"noise_snr_db": "none"}}' \
        [--folds 0 1 2] [--workdir .emoflow/bench-ravdess] [--out benchmarks/results/pilots_ravdess.json]

Prints each fold's test UA, selected epoch and validation UA, then the mean validation UA (a score that never
touches a test fold; on RAVDESS's 2-actor validation splits it did not rank settings, see the README; with a
validation pick it is biased up, so rows also carry ``val_ua_last_mean``, the final epoch's, to compare a
picked setting with an unpicked one like with like) and the pooled test UA/WA; appends a row (model, tag,
overrides, pooled and per-fold metrics, wall time, machine) to ``--out``. A pilot chooses settings; the
benchmark (``make bench-accuracy``, through the pipeline's stages) gives the results quoted as results.

``--seeds 0 1 2`` trains the whole plan once per seed (``train.seed``): one row per seed, then a
``seed_ensemble`` row with the seeds' pooled UAs, their mean ± std and the UA of the averaged class
probabilities. ``--predictions DIR`` keeps every fold's test predictions (``<model>-<tag>-seed<s>.parquet``,
rewritten after each fold); a rerun with the same DIR skips the folds already there, so a stopped pilot resumes.
``--against FILE`` (predictions of another pilot, e.g. ``classical``'s) adds to each row the paired bootstrap of
the UA difference and McNemar's test against them (``pipeline.orchestration.compare``, as the benchmark).
``--ensemble-with FILE ...`` adds other runs' test predictions of the same plan (a stage's
``results/<model>/predictions.parquet``, another pilot's ``--predictions`` file) to the ``seed_ensemble`` row, e.g. the
benchmark's seed 0 beside a pilot's seeds 1 and 2; the row names them and their pooled UAs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.diagnose_fold import add_workspace_args, emit_row, load_workspace  # noqa: E402


def seed_ensemble(tables: list) -> pd.DataFrame:
    """Average the ``prob_<class>`` columns of several runs' test predictions (same utterances, same labels) and
    predict the class of the highest mean probability. ``(utt_id, fold, label, prob_*)`` tables in, one out.

    >>> import pandas as pd
    >>> a = pd.DataFrame({"utt_id": ["u", "v"], "fold": [0, 0], "label": ["x", "y"], "prob_x": [0.9, 0.6], "prob_y": [0.1, 0.4]})
    >>> b = a.assign(prob_x=[0.4, 0.1], prob_y=[0.6, 0.9])
    >>> seed_ensemble([a, b])["pred"].tolist()
    ['x', 'y']
    """
    import pandas as pd

    keyed = [t.set_index("utt_id").sort_index() for t in tables]
    first = keyed[0]
    probs = [c for c in first.columns if c.startswith("prob_")]
    for t in keyed[1:]:
        if not (t.index.equals(first.index) and t["label"].equals(first["label"]) and sorted(probs) == sorted(
                c for c in t.columns if c.startswith("prob_"))):
            raise ValueError("seed_ensemble: the runs differ in their utterances, labels or classes; "
                             "ensemble only runs of one plan on one manifest")
    mean = sum(t[probs] for t in keyed) / len(keyed)
    out = pd.DataFrame({"fold": first["fold"], "label": first["label"]}, index=first.index)
    out["pred"] = mean.idxmax(axis=1).str.removeprefix("prob_")
    return pd.concat([out, mean], axis=1).reset_index()


def _run_plan(args, ws, tag: str, out_file) -> tuple[pd.DataFrame, list[dict]]:
    """Every fold of the plan once; folds already in ``out_file`` are read back, not retrained."""
    import pandas as pd

    from pipeline.training.train import train_fold

    done = pd.read_parquet(out_file) if out_file is not None and out_file.exists() else None
    tables, per_fold = [], []
    for fold in args.folds if args.folds is not None else sorted(ws.folds["fold"].unique()):
        if done is not None and int(fold) in set(done["fold"]):
            part = done[done["fold"] == int(fold)]
            tables.append(part)
            per_fold.append({"fold": int(fold), "test_ua": _ua(part), "reused": True})
            print(f"{tag} fold {fold}: read back from {out_file}", flush=True)
            continue
        r = train_fold(args.model, int(fold), manifest=ws.manifest, folds=ws.folds, features_dir=ws.features_dir,
                       model_params=ws.model_params, train_params=ws.train_params, log=lambda s: None)
        tables.append(pd.DataFrame(r.predictions).assign(fold=int(fold)))
        # val_ua is picked on when select_on is a validation score (biased up); val_ua_last, the final epoch's, is not
        per_fold.append({"fold": int(fold), "test_ua": r.test["ua"], "val_ua": r.val["ua"],
                         "val_ua_last": r.history[-1].get("val_ua") if r.history else None,
                         "best_epoch": r.best_epoch, "epochs_run": r.epochs_run})
        if out_file is not None:  # after every fold: a stopped pilot keeps what it computed
            pd.concat(tables, ignore_index=True).to_parquet(out_file)
        print(f"{tag} {per_fold[-1]}", flush=True)
    return pd.concat(tables, ignore_index=True), per_fold


def _against(args, table) -> dict:
    """``{"against": {...}}``: the paired comparison with ``--against``'s predictions ({} without it)."""
    if not args.against:
        return {}
    import pandas as pd

    from pipeline.orchestration.compare import compare_frames

    c = compare_frames(table, pd.read_parquet(args.against), (args.model, Path(args.against).stem)).to_dict()
    return {"against": {"predictions": Path(args.against).name, "ua_diff": c["ua_diff"],
                        "mcnemar_p": c["mcnemar_p"], "n": c["n"]}}


def _ua(table) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return 100 * balanced_accuracy_score(table["label"], table["pred"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--tag", required=True, help="a name for this setting in the results")
    ap.add_argument("--folds", type=int, nargs="*", default=None, help="default: every fold of the plan")
    ap.add_argument("--plan", default=None, help="fold plan (default: the model's fold_plan in the params)")
    ap.add_argument("--seeds", type=int, nargs="*", default=None,
                    help="train.seed of each run (default: one run with the params' seed); 2+ add a seed_ensemble row")
    ap.add_argument("--predictions", default=None, help="folder for each run's test predictions (resumable)")
    ap.add_argument("--against", default=None, help="predictions (parquet) to compare every row with")
    ap.add_argument("--ensemble-with", nargs="*", default=[], metavar="FILE",
                    help="other runs' test predictions (parquet, same plan) to average into the seed_ensemble row")
    add_workspace_args(ap)
    args = ap.parse_args(argv)

    import torch

    overrides = json.loads(args.set)
    torch.set_num_threads(args.threads)
    pred_dir = Path(args.predictions) if args.predictions else None
    if pred_dir is not None:
        pred_dir.mkdir(parents=True, exist_ok=True)
    extra = _read_predictions(args.ensemble_with)
    rows, tables = [], []
    for seed in args.seeds if args.seeds else [None]:
        run_overrides = overrides if seed is None else {**overrides, "train": {**overrides.get("train", {}), "seed": seed}}
        rows.append(_pilot_row(args, run_overrides, seed, pred_dir, tables))
    if len(tables) + len(extra) > 1:
        rows.append(_ensemble_row(args, overrides, rows, tables, extra))
    return rows[-1]


def _pilot_row(args, overrides: dict, seed: int | None, pred_dir: Path | None, tables: list) -> dict:
    from sklearn.metrics import accuracy_score

    from benchmarks.accuracy import machine_info

    ws = load_workspace(args.workdir, args.model, overrides, args.plan)
    name = f"{args.model}-{args.tag}-seed{ws.train_params.get('seed', 0)}".replace("/", "_").replace(" ", "_")
    t0 = time.perf_counter()
    table, per_fold = _run_plan(args, ws, args.tag, pred_dir / f"{name}.parquet" if pred_dir else None)
    tables.append(table)
    val = [f["val_ua"] for f in per_fold if "val_ua" in f]
    last = [f["val_ua_last"] for f in per_fold if f.get("val_ua_last") is not None]
    row = {"model": args.model, "tag": args.tag, "plan": ws.plan, "overrides": overrides, "seed": seed,
           "ua_pooled": _ua(table) / 100, "wa_pooled": accuracy_score(table["label"], table["pred"]),
           "val_ua_mean": sum(val) / len(val) / 100 if val else None,
           "val_ua_last_mean": sum(last) / len(last) / 100 if last else None,
           "folds": per_fold, "wall_s": time.perf_counter() - t0, "threads": args.threads,
           "machine": machine_info(), **_against(args, table)}
    return emit_row(row, ("model", "tag", "seed", "val_ua_mean", "ua_pooled", "wa_pooled", "wall_s"), args.out)


def _read_predictions(files: list[str]) -> dict[str, pd.DataFrame]:
    """``--ensemble-with`` files → ``{file name: predictions}``; a missing file or one without class
    probabilities is an error that names it (checked before any training starts)."""
    import pandas as pd

    out = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise SystemExit(f"--ensemble-with: {path} does not exist (a predictions parquet of the same plan)")
        table = pd.read_parquet(path)
        if not any(c.startswith("prob_") for c in table.columns) or not {"utt_id", "label", "fold"} <= set(table):
            raise SystemExit(f"--ensemble-with: {path} has no utt_id/fold/label/prob_<class> columns; "
                             "give test predictions with class probabilities")
        out[path.name] = table
    return out


def _ensemble_row(args, overrides: dict, rows: list[dict], tables: list, extra: dict | None = None) -> dict:
    import numpy as np
    from sklearn.metrics import accuracy_score

    extra = extra or {}
    ens = seed_ensemble(tables + list(extra.values()))
    uas = [r["ua_pooled"] for r in rows] + [_ua(t) / 100 for t in extra.values()]
    row = {"model": args.model, "tag": args.tag, "kind": "seed_ensemble", "overrides": overrides,
           "seeds": [r["seed"] for r in rows], "seed_ua_pooled": uas,
           "ensemble_with": [{"predictions": name, "ua_pooled": _ua(t) / 100} for name, t in extra.items()],
           "seed_ua_mean": float(np.mean(uas)), "seed_ua_std": float(np.std(uas, ddof=1)),
           "ua_pooled": _ua(ens) / 100, "wa_pooled": accuracy_score(ens["label"], ens["pred"]),
           "folds": [{"fold": int(f), "test_ua": _ua(part)} for f, part in ens.groupby("fold")],
           "threads": args.threads, **_against(args, ens)}
    return emit_row(row, ("model", "tag", "kind", "seed_ua_mean", "seed_ua_std", "ua_pooled"), args.out)


if __name__ == "__main__":
    main()
