"""Accuracy on real speech: every model of a corpus config and the baselines, trained through the pipeline's own
stages (manifest → folds → extract → train, i.e. the ``cross_validate`` Prefect flow a ``dvc repro`` runs), in one
run, on the same folds.

    python -m benchmarks.accuracy [--params params.ravdess.yaml] [--models ilt classical ...]
                                  [--workdir .emoflow/bench-ravdess] [--out benchmarks/results/accuracy_ravdess.json]
    python -m benchmarks.accuracy --table benchmarks/results/accuracy_ravdess.json   # the README's table

The workspace (``--workdir``, default under ``.emoflow/``, git-ignored) holds a copy of the params file with the
corpus root made absolute, the manifest, the fold plans, the feature files and each model's results; a rerun
reuses finished features and cached folds (content keys), so an interrupted benchmark resumes. The JSON gets,
per model: UA, WA and macro-F1 pooled over folds and mean ± std over folds, per-class recall, training time, the
resolved settings, whether the features came from random or pretrained weights, and the difference to the
``classical`` baseline; plus the machine. Corpus data never leaves the workspace.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/ctranslate2 load (see pipeline/cli/main.py)

try:
    from benchmarks import _machine
except ImportError:  # run as a file (python benchmarks/accuracy.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import _machine

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("classical", "probe")


def machine_info() -> dict[str, Any]:
    import platform

    import torch

    return {"cpu": _machine.cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def set_params(params: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` assignments (values parsed as YAML, as ``dvc exp run -S``) to ``params``."""
    import yaml

    for a in assignments:
        key, sep, raw = a.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {a!r}: expected dotted.key=value, e.g. dataset.options.label_map=null")
        *parents, leaf = key.split(".")
        node = params
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"--set {a!r}: {'.'.join(parents[:i + 1])} is not a section of the params file")
            node = node[part]
        node[leaf] = yaml.safe_load(raw)
    return params


def prepare_workspace(params_file: Path, workdir: Path, assignments: Sequence[str] = ()) -> Path:
    """Copy the params file into ``workdir`` with ``dataset.root`` resolved against the repository and the
    ``--set`` assignments applied."""
    import yaml

    params = set_params(yaml.safe_load(params_file.read_text()), assignments)
    root = Path(params["dataset"]["root"])
    if not root.is_absolute():
        root = (ROOT / root).resolve()
    if not root.exists():
        raise SystemExit(f"corpus not found at {root} (dataset.root of {params_file}); give its location in "
                         "the params file")
    params["dataset"]["root"] = str(root)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "params.yaml"
    out.write_text(yaml.safe_dump(params, sort_keys=False))
    return out


def run_pipeline(params_path: Path, workdir: Path, models: list[str], features_from: Path | None = None,
                 jobs: int = 1) -> dict[str, dict[str, Any]]:
    """The stages a ``dvc repro`` runs, in order, inside ``workdir``; returns each model's metrics and timing.
    Features found in ``features_from`` are linked in, not extracted (see :func:`extract_features`)."""
    import yaml

    from pipeline.cli import stages

    params = yaml.safe_load(params_path.read_text())
    data = workdir / "data"
    manifest = data / "manifest.parquet"
    stages.manifest(params_path, manifest)
    for plan in params["folds"]["plans"]:
        stages.folds(params_path, plan, manifest, data / "folds" / f"{plan}.parquet")
    linked: dict[str, str] = {}
    timings = extract_features(params_path, workdir, models, features_from, linked)
    out, failed = train_models(params_path, workdir, models, workdir / "results", jobs)
    return {"models": out, "extract_s": timings, "failed": failed, "features_linked": linked}


def extract_features(params_path: Path, workdir: Path, models: list[str], features_from: Path | None = None,
                     linked: dict[str, str] | None = None) -> dict[str, float]:
    """The extract stages of the features ``models`` read (a finished file is reused); seconds per feature.

    A feature whose ``<name>.h5`` is in ``features_from`` (files pulled from the team's DVC remote, say, onto a
    machine without the encoder's weights) is linked into the workspace instead and listed in ``linked``."""
    import yaml

    from models import requirements
    from pipeline.cli import stages

    params = yaml.safe_load(params_path.read_text())
    data = workdir / "data"
    needed: set[str] = set()
    for m in models:  # the models' inputs and any train.distill teacher's feature
        needed |= set(requirements(m, (params.get("models") or {}).get(m), params.get("train")).features)
    missing = sorted(needed - set(params["extract"]["features"]))
    if missing:
        raise SystemExit(f"{params_path}: extract.features lacks {missing}, needed by the models {models}")
    timings: dict[str, float] = {}
    for feat in params["extract"]["features"]:
        if feat not in needed:
            continue
        dst = data / "features" / f"{feat}.h5"
        if features_from is not None and (features_from / f"{feat}.h5").is_file():
            src = link_feature(features_from / f"{feat}.h5", dst)
            if linked is not None:
                linked[feat] = f"{src} ({feature_note(dst)})"
            continue
        t0 = time.perf_counter()
        stages.extract(params_path, feat, data / "manifest.parquet", dst, progress=False)
        timings[feat] = time.perf_counter() - t0
    return timings


def link_feature(src: Path, dst: Path) -> Path:
    """Hard-link (or copy, across file systems) the feature file ``src`` to ``dst``; refuses to replace a
    different file already there. Returns ``src`` resolved."""
    import shutil

    src = src.resolve()
    if dst.exists():
        if dst.samefile(src):
            return src
        raise SystemExit(f"{dst}: a feature file is already there; remove it to use {src} (--features-from)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return src


def feature_note(path: Path) -> str:
    """What a feature file says it is: extractor, weights, and any ``pooled_copy`` note (benchmarks.pooled_copy)."""
    from features.store import FeatureReader

    reader = FeatureReader(path)
    meta = reader.meta
    reader.close()
    prov = meta.provenance
    note = f"{meta.extractor}, weights {prov.get('model') or meta.config.get('model') or 'none'}"
    if meta.random_weights:
        note += ", RANDOM WEIGHTS"
    if prov.get("pooled_copy"):
        note += f"; {prov['pooled_copy']}"
    return note


def train_models(params_path: Path, workdir: Path, models: list[str], results_dir: Path,
                 jobs: int = 1) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The ``train`` stage for each model (the cross_validate flow); ``(metrics and wall time per model,
    failures)`` — one broken model must not cost the others' hour: it is recorded and the loop goes on.
    ``jobs`` > 1: that many models at once, each in its own process (:func:`train_in_worker`)."""
    if jobs > 1 and len(models) > 1:
        return _train_in_parallel(params_path, workdir, models, results_dir, jobs)
    from pipeline.cli import stages

    data = workdir / "data"
    out: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for m in models:
        t0 = time.perf_counter()
        try:
            metrics = stages.train(params_path, m, data / "manifest.parquet", data / "folds", data / "features",
                                   results_dir, storage_dir=workdir / ".emoflow", runs_dir=workdir / "runs")
        except Exception as e:
            failed[m] = f"{type(e).__name__}: {e}"
            print(f"[benchmark] {m} FAILED: {failed[m]}", flush=True)
            continue
        out[m] = {"metrics": metrics, "wall_s": time.perf_counter() - t0}
    return out, failed


def _train_in_parallel(params_path: Path, workdir: Path, models: list[str], results_dir: Path,
                       jobs: int) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from benchmarks.accuracy import train_in_worker  # by module name: picklable when run with -m

    out: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    # a fresh process per model (3.11+): its own Prefect home and log, no state left by the previous model
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), **fresh) as pool:
        futures = {m: pool.submit(train_in_worker, params_path, workdir, m, results_dir) for m in models}
        for m in models:  # the rows keep the order of ``models``
            try:
                done, why = futures[m].result()
            except Exception as e:  # the worker process itself broke (killed, out of memory, ...)
                done, why = {}, {m: f"{type(e).__name__}: {e}"}
            out.update(done)
            failed.update(why)
            print(f"[benchmark] {m}: {'FAILED, ' + why[m] if why else 'done'} (log: {workdir / 'logs' / m}.log)",
                  flush=True)
    return out, failed


def train_in_worker(params_path: Path, workdir: Path, model: str,
                    results_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """:func:`train_models` for one model in a worker process, its output (the temporary Prefect server's too)
    in ``<workdir>/logs/<model>.log``. Without ``PREFECT_API_URL`` (a server the runs go to) each worker gets its
    own ``PREFECT_HOME``, so that concurrent temporary Prefect servers do not share one database."""
    if not os.environ.get("PREFECT_API_URL"):
        home = workdir / ".prefect-workers" / model
        home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home)
    log = workdir / "logs" / f"{model}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)  # the process's own descriptors: what the process and its children print lands in the log
    os.dup2(fd, 2)
    os.close(fd)
    return train_models(params_path, workdir, [model], results_dir)


#: variant name → (row kind, train-section changes): the same models, folds and features, one setting changed
VARIANTS = {
    "paper-recipe": ("paper recipe (normalize, class weights off)", {"normalize": None, "class_weights": None}),
    "closed-form": ("closed-form fit (train.fit: sklearn)", {"fit": "sklearn"}),
    # each speaker standardised with its own (unlabelled) frames, test speakers included: transductive
    "speaker-norm": ("speaker normalisation (normalize: speaker)", {"normalize": "speaker"}),
    # knowledge distillation from the cross-fitted closed-form Whisper probe (pipeline/training/distill.py)
    "distill": ("distilled from the Whisper probe (train.distill)", {"distill": {"feature": "whisper"}}),
    # the other way round, where the params file distills: what distillation adds, measured on the same folds
    "no-distill": ("without distillation (train.distill off)", {"distill": None}),
}


def run_variant(params_path: Path, workdir: Path, models: list[str], variant: str,
                features_from: Path | None = None, jobs: int = 1) -> dict[str, dict[str, Any]]:
    """``models`` again with :data:`VARIANTS` ``[variant]`` applied to the train section (and removed from the
    models' own train overrides), results under ``<workdir>/results-<variant>``."""
    import yaml

    path = workdir / f"params.{variant}.yaml"
    params = variant_params(yaml.safe_load(params_path.read_text()), models, variant)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    extract_features(path, workdir, models, features_from)  # e.g. the distill teacher's feature
    out, failed = train_models(path, workdir, models, workdir / f"results-{variant}", jobs)
    if failed:
        raise SystemExit(f"variant {variant}: {failed}")
    return out


def variant_params(params: dict[str, Any], models: Sequence[str], variant: str) -> dict[str, Any]:
    """``params`` with :data:`VARIANTS` ``[variant]`` set in the train section and dropped from ``models``'
    own train overrides (so the variant's value is the one they train with).

    >>> p = {"train": {"distill": None}, "models": {"ilt": {"train": {"distill": {"feature": "w"}, "lr": 1}}}}
    >>> variant_params(p, ["ilt"], "no-distill")["models"]["ilt"]["train"]
    {'lr': 1}
    """
    changes = VARIANTS[variant][1]
    params = copy.deepcopy(params)
    params["train"].update(changes)
    for m in models:
        sec = (params.get("models") or {}).get(m) or {}
        for k in changes:
            (sec.get("train") or {}).pop(k, None)
    return params


def collect_results(out_dir: Path) -> dict[str, Any]:
    """A model's finished cross-validation as the flow wrote it (``metrics.json`` + ``run.json``)."""
    from pipeline.orchestration.results import load_result

    metrics = load_result(out_dir)
    return {"metrics": metrics, "wall_s": metrics.get("runtime_s"), "collected_from": str(out_dir)}


def summarise(model: str, run: dict[str, Any], baseline_ua: float | None, kind: str | None = None) -> dict[str, Any]:
    m = run["metrics"]
    row = {
        "model": model,
        "kind": kind or ("baseline" if model in BASELINES else "paper model"),
        "fold_plan": m["fold_plan"],
        "plan_hash": m.get("plan_hash"),  # which assignment of utterances to splits (a fixed plan changes it)
        "n_folds": m["n_folds"],
        **{k: {"pooled": m[k]["pooled"] / 100, "mean": m[k]["mean"] / 100, "std": m[k]["std"] / 100}
           for k in ("ua", "wa", "macro_f1")},
        "per_class_recall_pooled": {c: v["pooled"] for c, v in m["per_class_recall"].items()},
        # summed fold training times as recorded when the folds ran (a rerun reuses cached folds: listed here)
        "train_s": m["fold_runtime_s"],
        "cached_folds": m.get("cached_folds", (m.get("run") or {}).get("cached_folds", [])),  # stage: under run
        "stage_wall_s": run["wall_s"],
        "features": {k: {"random_weights": v["random_weights"], "weights": v["weights"]}
                     for k, v in m["features"].items()},
        "train_settings": m["train"],
        "model_params": m["model_params"],
        "best_epochs": [f["best_epoch"] for f in m["folds"].values()],
    }
    val = [f["val_ua"] / 100 for f in m["folds"].values() if f.get("val_ua") is not None]
    if val:  # the validation actors' UA (training actors only): a score to choose settings by, never a test fold
        row["val_ua_mean"] = sum(val) / len(val)
    if baseline_ua is not None:
        row["ua_minus_classical"] = row["ua"]["pooled"] - baseline_ua
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.ravdess.yaml")
    ap.add_argument("--models", nargs="*", help="default: train.models of the params file")
    ap.add_argument("--workdir", default=".emoflow/bench-ravdess")
    ap.add_argument("--out", default="benchmarks/results/accuracy_ravdess.json")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="assign",
                    help="change the params file's values in the workspace copy, as `dvc exp run -S` "
                         "(e.g. dataset.options.label_map=null: RAVDESS's 8 classes); recorded in the JSON")
    ap.add_argument("--ablate", nargs="*", default=[], metavar="MODEL",
                    help="also train these with normalize/class_weights off (the papers' recipe), same folds")
    ap.add_argument("--closed-form", nargs="*", default=[], metavar="MODEL",
                    help="also fit these in closed form (train.fit: sklearn; the probe's linear-probe recipe)")
    ap.add_argument("--speaker-norm", nargs="*", default=[], metavar="MODEL",
                    help="also train these with normalize: speaker (each speaker's own statistics), same folds")
    ap.add_argument("--distill", nargs="*", default=[], metavar="MODEL",
                    help="also train these with train.distill (teacher: the cross-fitted Whisper probe), same folds")
    ap.add_argument("--no-distill", nargs="*", default=[], metavar="MODEL",
                    help="also train these with train.distill off (where the params file distills them), same folds")
    ap.add_argument("--features-from", type=Path, metavar="DIR",
                    help="link DIR/<feature>.h5 into the workspace instead of extracting it (features pulled from "
                         "a DVC remote, or a benchmarks.pooled_copy of an encoder feature); recorded in the JSON")
    ap.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="train N models at once, each in its own process (logs: <workdir>/logs/<model>.log); "
                         "on 2 cores use --jobs 2 --set train.num_threads=1")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in --out and only run the --ablate models (same workspace/folds)")
    ap.add_argument("--collect", nargs="*", default=[], metavar="MODEL",
                    help="take these models' rows from the workspace's results/<model>/ (metrics.json + run.json "
                         "written by an earlier, interrupted run of this benchmark) instead of training them")
    ap.add_argument("--only-variants", action="store_true",
                    help="train only the variant runs (--ablate, --closed-form, --speaker-norm, --distill, "
                         "--no-distill); merge them into the main JSON with --merge")
    ap.add_argument("--merge", nargs=2, metavar=("MAIN", "EXTRA"),
                    help="append EXTRA's rows (a run over the same workspace and folds) to MAIN and exit")
    ap.add_argument("--replace", nargs="*", default=[], metavar="MODEL",
                    help="with --merge: these models' rows in EXTRA (retrained with new settings) replace MAIN's")
    ap.add_argument("--retire", metavar="KIND",
                    help="with --merge --replace: drop MAIN's rows of this kind for the replaced models (a variant "
                         "the new settings adopted); recorded under runs[].retired_rows")
    ap.add_argument("--table", metavar="JSON", help="print the markdown table of a results file and exit")
    ap.add_argument("--history", nargs="+", metavar="JSON",
                    help="print one table of several results files' pooled UA (a column each) and exit")
    ap.add_argument("--significance", metavar="JSON", help="add UA intervals and paired verdicts vs classical "
                    "(from --workdir's predictions) to a results file and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return {}
    if args.history:
        print(history_table([(Path(f).name, json.loads(Path(f).read_text())) for f in args.history]))
        return {}
    if args.merge:
        return merge_results(Path(args.merge[0]), Path(args.merge[1]), args.replace, args.retire)
    if args.significance:
        return add_significance(Path(args.significance), Path(args.workdir).resolve())
    import yaml

    params_file = Path(args.params)
    workdir = Path(args.workdir).resolve()
    params_path = prepare_workspace(params_file, workdir, args.assign)
    models = [] if args.only_variants else (
        args.models or list(yaml.safe_load(params_path.read_text())["train"]["models"]))
    if "classical" in models:  # the reference row first, so every other row can say how far it is from it
        models = ["classical"] + [m for m in models if m != "classical"]
    t0 = time.perf_counter()
    out = Path(args.out)
    if args.append:
        result = json.loads(out.read_text())
        base_ua = next((r["ua"]["pooled"] for r in result["rows"] if r["model"] == "classical"), None)
        result["rows"] += variant_rows(params_path, workdir, args, base_ua)
        set_deltas(result["rows"])
        result["variants_wall_s"] = time.perf_counter() - t0
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(markdown_table(result))
        return result
    runs = run_pipeline(params_path, workdir, [m for m in models if m not in args.collect], args.features_from,
                        args.jobs)
    for m in args.collect:
        runs["models"][m] = collect_results(workdir / "results" / m)
    base = runs["models"].get("classical")
    base_ua = base["metrics"]["ua"]["pooled"] / 100 if base else None
    rows = [summarise(m, runs["models"][m], base_ua) for m in models if m in runs["models"]]
    rows += variant_rows(params_path, workdir, args, base_ua)
    set_deltas(rows)
    result = {
        "benchmark": "accuracy on real speech, pooled over speaker-independent folds",
        "params_file": str(params_file),
        "params_set": list(args.assign),  # --set changes to the params file, as in the workspace copy
        "corpus_root": yaml.safe_load(params_path.read_text())["dataset"]["root"],
        "machine": machine_info(),
        "total_wall_s": time.perf_counter() - t0,
        # models whose rows come from the workspace's flow outputs of earlier (interrupted) runs of this benchmark
        "collected": list(args.collect),
        "sum_of_model_train_s": sum(r["train_s"] for r in rows),
        "extract_wall_s": runs["extract_s"],
        "features_linked": runs["features_linked"],  # --features-from: not extracted in this run
        "jobs": args.jobs,  # models trained at once (each in its own process)
        "rows": rows,
        "failed": runs["failed"],
        "note": "numbers on this corpus are never comparable to the papers' IEMOCAP numbers",
    }
    result["significance"] = significance_block(result, workdir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(markdown_table(result))
    print(f"→ {out}")
    return result


def result_changing(assignments: Sequence[str]) -> list[str]:
    """The ``--set`` assignments that can change a result: those of runtime-only train keys (threads, device,
    workers: left out of cache keys) are dropped.

    >>> result_changing(["train.num_threads=1", "dataset.options.label_map=null"])
    ['dataset.options.label_map=null']
    """
    from pipeline.training.train import RUNTIME_KEYS

    runtime = {f"train.{k}" for k in RUNTIME_KEYS}
    return [a for a in assignments if a.partition("=")[0] not in runtime]


def merge_results(main_path: Path, extra_path: Path, replace: Sequence[str] = (),
                  retire: str | None = None) -> dict[str, Any]:
    """Rows of ``extra`` (same folds and features) appended to ``main``; Δ UA recomputed against main's
    classical row; ``extra``'s machine and wall time kept under ``runs``. A row both files have (the baseline
    retrained beside the extra rows) must give the same scores in both — it is then kept once — else the files
    are not from the same folds and features, and nothing is merged. The rows of the models in ``replace``
    (retrained with new settings) take the place of main's instead, listed under ``runs`` as replaced; with
    ``retire``, main's rows of that kind for the replaced models go (a variant the new settings adopted), each
    listed under ``runs`` with its UA and whether the replacement reproduced it."""
    main, extra = json.loads(main_path.read_text()), json.loads(extra_path.read_text())
    if (main["corpus_root"], main["params_file"], result_changing(main.get("params_set", []))) != (
            extra["corpus_root"], extra["params_file"], result_changing(extra.get("params_set", []))):
        raise SystemExit(f"{extra_path}: another corpus, params file or --set than {main_path}; not merged")
    have = {(r["model"], r["kind"]): i for i, r in enumerate(main["rows"])}
    reproduced, replaced = [], []
    for r in extra["rows"]:
        i = have.get((r["model"], r["kind"]))
        if i is None:
            main["rows"].append(r)
        elif main["rows"][i]["ua"] == r["ua"] and main["rows"][i]["wa"] == r["wa"]:  # e.g. classical retrained
            reproduced.append(r["model"])
        elif r["model"] in replace:
            main["rows"][i] = r
            replaced.append(r["model"])
        else:
            raise SystemExit(f"{extra_path}: {r['model']} ({r['kind']}) gives UA {r['ua']['pooled']:.4f} there and "
                             f"{main['rows'][i]['ua']['pooled']:.4f} in {main_path}: not the same folds and features "
                             "(or retrained with new settings: --replace it); not merged")
    retired = retire_rows(main, retire, replaced, extra["rows"]) if retire else []
    set_deltas(main["rows"])
    if "significance" in main or "significance" in extra:
        main["significance"] = merge_significance(main, extra, extra_path, replaced)
        if main["significance"] and retired:
            gone = {(r["model"], retire) for r in retired}
            main["significance"]["rows"] = [r for r in main["significance"]["rows"]
                                            if (r["model"], r["kind"]) not in gone]
    main["sum_of_model_train_s"] = sum(r["train_s"] for r in main["rows"])
    main.setdefault("runs", []).append({"file": extra_path.name, "total_wall_s": extra["total_wall_s"],
                                        "machine": extra["machine"], "reproduced_rows": reproduced,
                                        "replaced_rows": replaced, "retired_rows": retired})
    main_path.write_text(json.dumps(main, indent=2, default=str) + "\n")
    print(markdown_table(main))
    return main


def retire_rows(main: dict[str, Any], kind: str, models: Sequence[str],
                new_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop ``main``'s rows of ``kind`` for ``models``; what each was, and whether the model's new main row
    scores the same (the variant's settings adopted, same folds: it should)."""
    new = {r["model"]: r for r in new_rows if r["kind"] in ("paper model", "baseline")}
    retired, kept = [], []
    for r in main["rows"]:
        if r["kind"] == kind and r["model"] in models:
            n = new.get(r["model"])
            retired.append({"model": r["model"], "kind": kind, "ua_pooled": r["ua"]["pooled"],
                            "reproduced_by_new_row": n is not None and n["ua"] == r["ua"] and n["wa"] == r["wa"]})
        else:
            kept.append(r)
    if not retired:
        raise SystemExit(f"--retire {kind!r}: no rows of that kind for {list(models)}; not merged")
    main["rows"] = kept
    return retired


def merge_significance(main: dict[str, Any], extra: dict[str, Any], extra_path: Path,
                       replaced: Sequence[str] = ()) -> dict[str, Any] | None:
    """Both files' ``significance`` rows, each row once (extra's for the ``replaced`` models). Extra's verdicts
    were computed against its own baseline row, so they are taken over only when that row's bootstrap interval
    is main's to the last digit (same predictions, same resampling); otherwise the block is dropped (rerun
    ``--significance`` on one workspace)."""
    a, b = main.get("significance"), extra.get("significance")
    same = ("method", "n_boot", "seed", "level", "baseline")
    if not a or not b or any(a[k] != b[k] for k in same):
        print(f"{extra_path}: significance blocks missing or computed differently; block dropped from the merge")
        return None
    base = {(r["model"], r["kind"]): r for r in a["rows"]}
    clash = [r for r in b["rows"] if (r["model"], r["kind"]) in base and r["model"] not in replaced
             and base[r["model"], r["kind"]]["ua_ci"] != r["ua_ci"]]
    if clash:
        print(f"{extra_path}: {clash[0]['model']} ({clash[0]['kind']}) has another bootstrap interval there; "
              "block dropped")
        return None
    newer = {(r["model"], r["kind"]): r for r in b["rows"] if r["model"] in replaced}
    rows = [newer.get((r["model"], r["kind"]), r) for r in a["rows"]]
    return {**a, "rows": rows + [r for r in b["rows"] if (r["model"], r["kind"]) not in base]}


def set_deltas(rows: list[dict[str, Any]]) -> None:
    """``ua_minus_classical`` of every row against :func:`_reference`'s classical row (same kind first)."""
    ua = {(r["model"], r["kind"]): r["ua"]["pooled"] for r in rows}
    for r in rows:
        ref = _reference(rows, "classical", r["model"], r["kind"])
        if ref is not None:
            r["ua_minus_classical"] = r["ua"]["pooled"] - ua[ref]


def variant_rows(params_path: Path, workdir: Path, args, base_ua: float | None) -> list[dict[str, Any]]:
    rows = []
    for variant, models in (("paper-recipe", args.ablate), ("closed-form", args.closed_form),
                            ("speaker-norm", args.speaker_norm), ("distill", args.distill),
                            ("no-distill", args.no_distill)):
        if models:
            runs = run_variant(params_path, workdir, list(models), variant, args.features_from, args.jobs)
            rows += [summarise(m, runs[m], base_ua, kind=VARIANTS[variant][0]) for m in runs]
    return rows


def markdown_table(result: dict[str, Any]) -> str:
    """The README table: one row per model, pooled UA/WA/F1, mean ± std UA, Δ to the classical baseline."""
    lines = ["| model | kind | UA pooled | UA mean ± std | WA pooled | macro-F1 pooled | Δ UA vs classical "
             "| train (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        delta = r.get("ua_minus_classical")
        lines.append(
            f"| `{r['model']}` | {r['kind']} | {r['ua']['pooled']:.3f} | {r['ua']['mean']:.3f} ± {r['ua']['std']:.3f} "
            f"| {r['wa']['pooled']:.3f} | {r['macro_f1']['pooled']:.3f} | "
            f"{'—' if delta is None or r['model'] == 'classical' else f'{delta:+.3f}'} | {r['train_s']:.0f} |")
    m = result["machine"]
    lines.append("")
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}"
                 f"{', ' + m['cuda'] if m.get('cuda') else ', CPU only'}; summed training time of the rows "
                 f"{result.get('sum_of_model_train_s', result['total_wall_s']) / 60:.0f} min.")
    sig = significance_table(result)
    return "\n".join(lines) + ("\n\n" + sig if sig else "")


def history_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    """Several runs side by side: one line per (model, kind) in the order first met, one column per results file
    (its name, CPU and whole-process minutes in the header) with the pooled UA, Δ to that run's classical row in
    brackets; — where the run has no such row."""
    def cpu(m: dict[str, Any]) -> str:
        return "AMD EPYC" if "AMD" in m["cpu"] else "Intel Xeon" if "Intel" in m["cpu"] else m["cpu"]

    keys: dict[tuple[str, str], None] = {}  # insertion-ordered set
    cells: list[dict[tuple[str, str], str]] = []
    for _, result in results:
        col = {}
        for r in result["rows"]:
            key = (r["model"], r["kind"])
            keys.setdefault(key)
            delta = r.get("ua_minus_classical")
            col[key] = f"{r['ua']['pooled']:.3f}" + ("" if delta is None or r["model"] == "classical" else
                                                      f" ({delta:+.3f})")
        cells.append(col)
    head = [f"`{name}` ({cpu(res['machine'])}, {res['total_wall_s'] / 60:.0f} min)" for name, res in results]
    lines = ["| model | kind | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(results)]
    for key in keys:
        lines.append(f"| `{key[0]}` | {key[1]} | " + " | ".join(c.get(key, "—") for c in cells) + " |")
    return "\n".join(lines)


# --- significance (pipeline/orchestration/compare.py): intervals and verdicts vs the classical row ------------------------


def _row_dir(workdir: Path, row: dict[str, Any]) -> Path:
    """Where a row's predictions lie in the workspace: ``results/`` for main rows, ``results-<variant>/``."""
    variant = next((v for v, (kind, _) in VARIANTS.items() if kind == row["kind"]), None)
    return workdir / ("results" if variant is None else f"results-{variant}") / row["model"]


def _reference(rows, baseline: str, model: str, kind: str):
    """The ``(baseline, kind)`` key to compare row ``(model, kind)`` with: the baseline run the same way (a
    variant's own ``classical`` row, e.g. speaker normalisation) when there is one, else the plain baseline row
    (which the variant's baseline row itself is compared with); None for the plain baseline row."""
    keys = [k[:2] if isinstance(k, tuple) else (k["model"], k["kind"]) for k in rows]
    if (baseline, kind) in keys and model != baseline:
        return (baseline, kind)
    plain = (baseline, "baseline")
    return plain if plain in keys and (model, kind) != plain else None


def significance_block(result: dict[str, Any], workdir: Path, baseline: str = "classical") -> dict[str, Any]:
    """Per row: pooled UA with a bootstrap 95 % interval and, against the ``baseline`` row, the paired bootstrap
    interval of the UA difference and McNemar's p, from the workspace's ``predictions.parquet``. A row whose
    predictions do not reproduce its pooled UA (another workspace, a rerun since) is refused, not guessed."""
    from pipeline.orchestration import compare

    frames = {}
    for r in result["rows"]:
        _, _, df = compare.load_run(_row_dir(workdir, r))
        yt, (yp,), classes = compare.encode(df["label"], df["pred"])
        if abs(compare.ua(yt, yp, len(classes)) - r["ua"]["pooled"]) > 1e-9:
            raise SystemExit(f"{_row_dir(workdir, r)}: predictions give UA {compare.ua(yt, yp, len(classes)):.4f}, "
                             f"the row says {r['ua']['pooled']:.4f}; not the run behind this JSON")
        frames[(r["model"], r["kind"])] = df
    rows = []
    for (model, kind), df in frames.items():
        yt, (yp,), classes = compare.encode(df["label"], df["pred"])
        ci = compare.ua_interval(yt, yp, len(classes))
        row: dict[str, Any] = {"model": model, "kind": kind, "n": len(df), "ua": ci.point, "ua_ci": [ci.lo, ci.hi]}
        base = _reference(frames, baseline, model, kind)
        if base is not None:
            row["baseline_kind"] = base[1]
            c = compare.compare_frames(df, frames[base], (model, baseline))
            row[f"vs_{baseline}"] = {"ua_diff": c.ua_diff.point, "ci": [c.ua_diff.lo, c.ua_diff.hi],
                                     "resolved": c.ua_diff.resolved, "mcnemar_p": c.mcnemar_p,
                                     "right_only_this": c.mcnemar_b, f"right_only_{baseline}": c.mcnemar_c}
        rows.append(row)
    return {"method": "percentile bootstrap over the pooled test utterances (paired for differences); McNemar's "
                      "exact test on accuracy; intervals per comparison, not corrected for multiple comparisons",
            "n_boot": compare.N_BOOT, "seed": compare.SEED, "level": compare.LEVEL, "baseline": baseline,
            "rows": rows}


def add_significance(path: Path, workdir: Path) -> dict[str, Any]:
    """``--significance``: the block added to (or replaced in) an existing results file; other keys untouched."""
    result = json.loads(path.read_text())
    result["significance"] = significance_block(result, workdir)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(markdown_table(result))
    return result


def verdict_cells(v: tuple[float, float, float, bool, float] | None) -> list[str]:
    """``(Δ UA, lo, hi, resolved, McNemar p)`` → the three table cells "Δ [lo, hi]", yes/**no**, p; — without one."""
    if v is None:
        return ["—"] * 3
    diff, lo, hi, resolved, p = v
    return [f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}]", "yes" if resolved else "**no**", f"{p:.2g}"]


def significance_table(result: dict[str, Any]) -> str:
    """The README's second table: UA intervals and the verdict against the baseline ("" without a block)."""
    sig = result.get("significance")
    if not sig:
        return ""
    b = sig["baseline"]
    lines = [f"| model | kind | UA pooled [95 % CI] | Δ UA vs {b} [95 % CI] | resolved | McNemar p (accuracy) |",
             "|---|---|---|---|---|---|"]
    for r in sig["rows"]:
        v = r.get(f"vs_{b}")
        cells = verdict_cells(None if v is None else (v["ua_diff"], *v["ci"], v["resolved"], v["mcnemar_p"]))
        lines.append(f"| `{r['model']}` | {r['kind']} | {r['ua']:.3f} [{r['ua_ci'][0]:.3f}, {r['ua_ci'][1]:.3f}] "
                     f"| {' | '.join(cells)} |")
    if not sig["rows"]:
        return "\n".join(lines)
    lines += ["", f"{sig['n_boot']} bootstrap resamples of the {sig['rows'][0]['n']} pooled test utterances "
              f"(seed {sig['seed']}); resolved = the 95 % interval of the difference excludes 0; a variant row "
              f"is compared with the {b} row of the same variant where there is one."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
