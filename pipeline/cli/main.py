"""``emoflow`` command line: a thin layer that turns options into one library call each.

The CLI layer is this module, :mod:`pipeline.cli.team` (remote/pull/push/server/serve) and
:mod:`pipeline.cli.predict` (predict/export): the only modules that import typer (tests/pipeline/test_layering.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Before torch/ctranslate2 load: two OpenMP runtimes that spin-wait slow each other 4-8x on a shared CPU
# (measured with the whisper extractor); passive waiting costs nothing when a process has the cores alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from pipeline.cli import stages

app = typer.Typer(help="emoflow: versioned SER features (DVC + HDF5) and reproducible training (Prefect).",
                  no_args_is_help=True, pretty_exceptions_enable=False)
stage_app = typer.Typer(help="DVC stage entry points (called from dvc.yaml).", no_args_is_help=True)
features_app = typer.Typer(help="Inspect the feature store.", no_args_is_help=True)
models_app = typer.Typer(help="The registered models.", no_args_is_help=True)
app.add_typer(stage_app, name="stage")
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")

PARAMS = typer.Option("params.yaml", "--params", help="params.yaml to read")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


def _run(fn, *args, **kwargs):
    """Run a stage; turn the project's own errors (which name the file/key and the fix) into one red line, exit 2.
    Anything else is a bug and keeps its traceback."""
    from features.errors import EmoflowError

    _sigterm_interrupts()
    try:
        return fn(*args, **kwargs)
    except EmoflowError as e:
        _fail(e)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (below): cleanup ran on the way out, nothing is lost
        typer.secho(f"error: interrupted ({e.args[0] if e.args else 'SIGINT'}); finished work is kept — rerun the "
                    "same command to resume", fg="red", err=True)
        raise typer.Exit(143 if e.args and e.args[0] == "SIGTERM" else 130) from None
    except OSError as e:
        line = _os_error_line(e)
        if line is None:
            raise
        _fail(line)


def _sigterm_interrupts() -> None:
    """SIGTERM (``kill``, a scheduler's stop) unwinds like Ctrl-C, so locks are released and temp files removed
    instead of the process vanishing mid-write."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, interrupt)


def _os_error_line(e: OSError) -> str | None:
    """One line for a machine fault that names its path (full disk, read-only or unwritable place, a directory
    where a file belongs), or a FileNotFoundError whose message already says what to do; None otherwise."""
    import errno

    from features.errors import disk_full_error, is_disk_full

    if e.filename is None:
        if is_disk_full(e):  # a write that failed after its file was opened names no path
            return f"{e.strerror or e} while writing; free some space and rerun the same command (it resumes)"
        return str(e) if isinstance(e, FileNotFoundError) else None
    if is_disk_full(e):
        return str(disk_full_error(e.filename, e, None, "nothing committed was changed"))
    fixes = {errno.EACCES: "check its permissions (and the owner of the DVC cache)", errno.EPERM: "check its "
             "permissions", errno.EROFS: "the filesystem is read-only: write elsewhere or remount it",
             errno.EISDIR: "a directory is where a file belongs: remove or rename it",
             errno.ENOTDIR: "a parent of this path is a file, not a directory", errno.ENOENT: "it does not exist"}
    fix = fixes.get(e.errno)
    return None if fix is None else f"{e.filename}: {e.strerror}; {fix}"


# --- stages -------------------------------------------------------------------------------------------------
@stage_app.command("demo-data")
def stage_demo_data(out: Path = typer.Option(..., "--out"), models_out: Path | None = typer.Option(None),
                    params: Path = PARAMS):
    """Generate the synthetic demo corpus (+ tiny random-weight encoders for offline demo features)."""
    _run(stages.demo_data, params, out, models_out)


@stage_app.command("manifest")
def stage_manifest(out: Path = typer.Option(..., "--out"),
                   asr_cache: Path | None = typer.Option(None, "--asr-cache", help="HDF5 cache of ASR transcripts "
                                                         "(needed with dataset.transcripts: asr)"),
                   progress: bool = typer.Option(True), params: Path = PARAMS):
    """Build data/manifest.parquet from params.yaml: dataset (transcribed by Whisper with transcripts: asr)."""
    _run(stages.manifest, params, out, asr_cache, progress=progress)


@stage_app.command("folds")
def stage_folds(plan: str = typer.Option(..., "--plan"), manifest: Path = typer.Option(..., "--manifest"),
                out: Path = typer.Option(..., "--out"), params: Path = PARAMS):
    """Write one fold plan to data/folds/<plan>.parquet."""
    _run(stages.folds, params, plan, manifest, out)


@stage_app.command("extract")
def stage_extract(feature: str = typer.Option(..., "--feature"), manifest: Path = typer.Option(..., "--manifest"),
                  out: Path = typer.Option(..., "--out"), jobs: int | None = typer.Option(None, "--jobs",
                  help="worker processes (default: params extract.jobs; 0 = all cores)"),
                  device: str | None = typer.Option(None, "--device", help="auto|cpu|cuda for model-based "
                                                       "features (not part of the cache key)"),
                  progress: bool = typer.Option(True), params: Path = PARAMS):
    """Extract one feature set into data/features/<feature>.h5 (incremental, resumable)."""
    _run(stages.extract, params, feature, manifest, out, jobs=jobs, device=device, progress=progress)


@stage_app.command("train")
def stage_train(model: str = typer.Option(..., "--model"), manifest: Path = typer.Option(..., "--manifest"),
                folds_dir: Path = typer.Option(..., "--folds-dir"),
                features_dir: Path = typer.Option(..., "--features-dir"), out: Path = typer.Option(..., "--out"),
                device: str | None = typer.Option(None, help="auto|cpu|cuda (default: params train.device)"),
                plan: str | None = typer.Option(None, "--plan", help="fold plan (default: models.<model>.fold_plan, "
                                                "else the paper's)"),
                name: str | None = typer.Option(None, "--name", help="run name: results go to <out>/<name>/ "
                                                "(default: the model)"),
                params: Path = PARAMS):
    """Cross-validate one model on its fold plan (runs the Prefect flow)."""
    kw = {k: v for k, v in (("device", device), ("plan", plan), ("name", name)) if v}
    _run(stages.train, params, model, manifest, folds_dir, features_dir, out, **kw)


@stage_app.command("dvc-yaml")
def stage_dvc_yaml(dvc_file: Path = typer.Option(Path("dvc.yaml"), "--dvc-yaml"),
                   check: bool = typer.Option(False, "--check", help="only say whether it is up to date (exit 1 "
                                              "if not)"),
                   params: Path = PARAMS):
    """Regenerate dvc.yaml's train@<model> stages from params.yaml: each depends on its own features, plan, params."""
    fresh = _run(stages.dvc_yaml, params, dvc_file, check=check)
    if check and not fresh:
        typer.echo(f"{dvc_file}: train stages are out of date with {params}: run `emoflow stage dvc-yaml`")
        raise typer.Exit(1)


@stage_app.command("report")
def stage_report(results: Path = typer.Option(..., "--results"), out: Path = typer.Option(..., "--out"),
                 params: Path = PARAMS):
    """Write results/report.md: every model next to its paper."""
    _run(stages.report, params, results, out)


# --- top-level conveniences ---------------------------------------------------------------------------------
@app.command("demo-data")
def demo_data(out: Path = typer.Option(Path("data/demo_corpus"), "--out"), params: Path = PARAMS):
    """Generate the demo corpus only (deterministic from params.yaml: demo.seed)."""
    _run(stages.demo_data, params, out, None)


@app.command("demo")
def demo(stage: str | None = typer.Argument(None, help="a dvc.yaml stage to reproduce (default: all)"),
         server: bool = typer.Option(True, "--server/--no-server",
                                     help="one local Prefect server for the whole run (unless PREFECT_API_URL "
                                          "is set); --no-server: a temporary one in every train stage")):
    """Run the whole pipeline on the demo corpus: `dvc repro` with analytics off.

    Every train@<model> stage is a Prefect flow. Without PREFECT_API_URL each would start (and stop) its own
    temporary Prefect server, ~15-20 s a stage on 2 cores; instead one local server serves the whole run (its
    UI shows the runs while they go; its database stays in $PREFECT_HOME, `emoflow server` shows them later),
    and it is stopped at the end. A PREFECT_API_URL of yours (environment or Prefect profile) is used as is.
    """
    ensure_dvc()
    cmd = ["dvc", "repro"] + ([stage] if stage else [])
    env = dict(os.environ)
    srv = _demo_server() if server else None
    if srv is not None:
        from pipeline.orchestration.server import client_env

        env.update(client_env(srv.api_url))
    typer.echo("$ " + " ".join(cmd))
    try:
        code = subprocess.call(cmd, env=env)
    finally:
        if srv is not None:
            srv.stop()
            typer.echo(f"[emoflow] stopped the demo's Prefect server; see its runs again with `emoflow server` "
                       f"(database in {srv.home})")
    raise typer.Exit(code)


def _demo_server():
    """A local Prefect server for ``emoflow demo`` (port 4200, or a free one when 4200 is taken), or None when
    the user configured one (PREFECT_API_URL in the environment or the active Prefect profile) or it fails to
    start (then each stage starts its temporary server, as before: slower, never broken)."""
    import signal

    from pipeline.orchestration import server as srv_lib

    if os.environ.get("PREFECT_API_URL"):
        typer.echo(f"[emoflow] Prefect: reporting to PREFECT_API_URL={os.environ['PREFECT_API_URL']}")
        return None
    url = srv_lib.configured_api_url()  # the active Prefect profile's
    if url:
        typer.echo(f"[emoflow] Prefect: reporting to {url} (Prefect profile)")
        return None
    try:
        try:
            srv = srv_lib.start_server(srv_lib.DEFAULT_HOST, srv_lib.DEFAULT_PORT, timeout=120)
        except srv_lib.ServerError as e:
            if "already in use" not in str(e):
                raise
            srv = srv_lib.start_server(srv_lib.DEFAULT_HOST, None, timeout=120)  # a free port
    except srv_lib.ServerError as e:
        typer.secho(f"[emoflow] WARNING: no Prefect server for the demo ({e}); each train stage starts a "
                    "temporary one", fg="yellow", err=True)
        return None

    def _terminate(signum, frame):  # `kill`: stop the server too (it runs in its own process group)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    typer.echo(f"[emoflow] Prefect UI while the demo runs: {srv.ui_url}  (log: {srv.log_path})")
    return srv


def ensure_dvc() -> None:
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    if not Path(".dvc").is_dir():
        subprocess.check_call(["dvc", "init", "-q"] + ([] if Path(".git").exists() else ["--no-scm"]))
    subprocess.check_call(["dvc", "config", "core.analytics", "false"])


# --- features -----------------------------------------------------------------------------------------------
FEATURES_DIR = typer.Option(Path("data/features"), "--dir", help="feature store directory")


@features_app.command("ls")
def features_ls(directory: Path = FEATURES_DIR, as_json: bool = typer.Option(False, "--json")):
    """List feature files: extractor, utterances, dim, config hash, size, random-weight flag."""
    from features.store import info, list_feature_files

    rows = []
    for p in list_feature_files(directory):
        try:
            i = info(p)
            rows.append({k: i[k] for k in ("extractor", "n_utts", "dim", "example_shape", "config_hash",
                                          "random_weights", "size_bytes")} | {"path": str(p)})
        except Exception as e:  # a broken file is listed, not hidden
            rows.append({"path": str(p), "error": str(e)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no feature files in {directory} (run `dvc repro` or `dvc pull`)")
    for r in rows:
        if "error" in r:
            typer.echo(f"{r['path']}: ERROR {r['error']}")
            continue
        flag = "  RANDOM WEIGHTS" if r["random_weights"] else ""
        typer.echo(f"{r['extractor']:<12} {r['n_utts']:>6} utts  dim {str(r['dim']):>5}  "
                   f"e.g. {r['example_shape']}  {r['config_hash'][:12]}  {r['size_bytes'] / 1e6:8.1f} MB{flag}")


@features_app.command("info")
def features_info(name: str, directory: Path = FEATURES_DIR):
    """Print one feature file's provenance (extractor, config, hash, versions, random-weight flag)."""
    from features.store import info

    path = Path(name) if name.endswith(".h5") else directory / f"{name}.h5"
    i = _run(info, path)
    if i["random_weights"]:
        typer.secho("WARNING: computed with RANDOM (untrained) encoder weights — for pipeline tests only, "
                    "not for results", fg="yellow")
    typer.echo(json.dumps(i, indent=2, default=str))


@features_app.command("verify")
def features_verify(name: str, directory: Path = FEATURES_DIR,
                    manifest: Path = typer.Option(Path("data/manifest.parquet"), "--manifest")):
    """Check structure, checksums against the manifest, and NaN/inf. Recomputes nothing."""
    from features import extractor_class
    from features.store import FeatureReader, verify
    from pipeline.corpus.manifest import read_manifest
    from pipeline.extraction.extract import source_checksums

    path = Path(name) if name.endswith(".h5") else directory / f"{name}.h5"
    expected = None
    if manifest.is_file():
        r = _run(FeatureReader, path)
        ex = extractor_class(r.meta.extractor)(extractor_class(r.meta.extractor).Config())
        expected = source_checksums(ex, read_manifest(manifest))
        r.close()
    problems = verify(path, expected)
    if problems:
        from features.store import rerun_hint

        for p in problems:
            typer.secho(f"{path}: {p}", fg="red", err=True)
        typer.secho(f"{path}: {rerun_hint(path)}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{path}: OK" + (f" (matches {manifest})" if expected is not None else ""))


# --- models -------------------------------------------------------------------------------------------------
@models_app.command("ls")
def models_ls(as_json: bool = typer.Option(False, "--json")):
    """List registered models with parameter counts, inputs and fold plan."""
    import models

    rows = models.describe_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    typer.echo(f"{'model':<24} {'params':>10}  {'fold plan':<20} {'paper WA/UA':<13} inputs (batch key: feature)")
    for r in rows:
        wa = "–" if r.get("wa") is None else f"{r['wa']:.2f}"
        ua = "–" if r.get("ua") is None else f"{r['ua']:.2f}"
        typer.echo(f"{r['name']:<24} {r['params'] / 1e6:8.2f} M  {r.get('fold_plan', ''):<20} {wa + '/' + ua:<13} "
                   f"{r['inputs']}")
    typer.echo("(parameter counts at the papers' sizes: models.<name> in params.yaml may make them smaller)")


# --- team sharing and the Prefect server (pipeline/cli/team.py holds the commands) --------------------------
def _mount_team_commands() -> None:
    from pipeline.cli import team as cli_team

    cli_team.mount(app)


_mount_team_commands()


# --- using a trained model (pipeline/cli/predict.py holds the commands) -------------------------------------
def _mount_predict_commands() -> None:
    from pipeline.cli import predict as predict_cli

    app.command("predict", help="Predict emotions of new audio files with a trained model.")(predict_cli.cli_predict)
    app.command("export", help="Export a trained model as a self-contained directory.")(predict_cli.cli_export)


_mount_predict_commands()


# --- statistical comparison (pipeline/orchestration/compare.py) ----------------------------------------------------------
@app.command("compare")
def compare(a: str = typer.Argument(..., help="a model under --results, or a directory with predictions.parquet; "
                                              "MODEL@REV: at a git revision or DVC experiment (`dvc exp show`)"),
            b: str = typer.Argument(None, help="the same for the second run (default: A, with --rev-a/--rev-b)"),
            rev_a: str = typer.Option(None, "--rev-a", help="read A at this git revision or DVC experiment"),
            rev_b: str = typer.Option(None, "--rev-b", help="read B at this git revision or DVC experiment"),
            results: Path = typer.Option(Path("results"), "--results", help="where model names are looked up"),
            n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap resamples"),
            seed: int = typer.Option(0, "--seed"), as_json: bool = typer.Option(False, "--json")):
    """Is A really better than B? UA intervals, paired bootstrap of the UA difference, McNemar on accuracy."""
    from pipeline.orchestration.compare import CompareError, compare_runs

    try:
        c, text = compare_runs(a, b, results, n_boot, seed, rev_a=rev_a, rev_b=rev_b)
    except (CompareError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(json.dumps(c.to_dict(), indent=2) if as_json else text)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
