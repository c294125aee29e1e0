"""``emoflow predict`` and ``emoflow export``: options → one library call each (pipeline/orchestration/predict.py, bundle.py)."""

from __future__ import annotations

from pathlib import Path

import typer

RESULTS = typer.Option(Path("results"), "--results", help="results folder of the workspace run (DVC's results/)")
FORCE = typer.Option(False, "--force", help="run a model whose extractor/code version differs from the installed one")


def _one_line(fn, *args, **kwargs):
    """The project's own errors name the file and the fix: print that one line, exit 2."""
    from features.errors import EmoflowError

    try:
        return fn(*args, **kwargs)
    except (EmoflowError, ValueError) as e:  # ValueError: unknown model/feature names list the known ones
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None


def cli_predict(
    paths: list[Path] = typer.Argument(None, help="audio files and/or folders (searched recursively)"),
    model: str | None = typer.Option(None, "--model", help="a model trained in this workspace (fold ensemble)"),
    bundle: Path | None = typer.Option(None, "--from", help="an exported model directory (`emoflow export`)"),
    manifest: Path | None = typer.Option(None, "--manifest", help="CSV/TSV/Parquet with a `path` column "
                                         "(optional utt_id, transcript, start, end)"),
    transcript: str | None = typer.Option(None, "--transcript", help="the transcript of the one file (text models)"),
    fold: int | None = typer.Option(None, "--fold", help="one fold's checkpoint instead of the fold ensemble"),
    store: Path | None = typer.Option(None, "--store", help="feature store for the new files, reused by later "
                                      "calls (default: a temporary one)"),
    out: Path | None = typer.Option(None, "--out", help="write the table: .csv, .json or .parquet"),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    jobs: int = typer.Option(1, "--jobs", help="extraction processes"),
    asr: bool = typer.Option(False, "--asr", help="text models: transcribe files without a transcript (Whisper)"),
    results: Path = RESULTS,
    force: bool = FORCE,
):
    """Predict emotions of new audio with a trained model: per file the label and every class's probability."""
    from pipeline.orchestration.predict import format_table, predict_files, write_table

    p, df = _one_line(predict_files, paths or [], model=model, bundle=bundle, results_dir=results,
                      manifest=manifest, transcript=transcript, force=force, fold=fold, store_dir=store,
                      batch_size=batch_size, device=device, jobs=jobs, asr=asr)
    typer.echo(format_table(df, p.labels))
    if out is not None:
        typer.echo(f"→ {_one_line(write_table, df, out)}")


def cli_export(
    model: str = typer.Option(..., "--model", help="a model trained in this workspace"),
    out: Path = typer.Option(..., "--out", help="directory to write (replaced if it is an earlier export)"),
    results: Path = RESULTS,
    force: bool = FORCE,
):
    """Export a trained model as a self-contained directory (`emoflow predict --from DIR` reads it)."""
    from pipeline.training.bundle import export_predictor, load_run

    p = _one_line(load_run, model, results, force=force)
    path = _one_line(export_predictor, p, out)
    typer.echo(f"{model}: {len(p.folds)} fold(s), features {', '.join(sorted(p.features))} → {path}")
