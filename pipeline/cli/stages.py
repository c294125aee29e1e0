"""DVC stage entry points: each reads its ``params.yaml`` section, takes its paths from ``dvc.yaml``, and makes one
library call. Nothing here computes anything itself."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipeline.core.params import ParamsError, expect, load_params, section

log = logging.getLogger("emoflow.stages")


def _say(msg: str) -> None:
    print(f"[emoflow] {msg}", flush=True)


def demo_data(params_path: str | Path, out: str | Path, models_out: str | Path | None = None) -> None:
    """Generate the synthetic demo corpus (and the tiny random-weight encoders the demo uses offline)."""
    import dataclasses

    from pipeline.corpus.demo_corpus import DemoCorpusConfig, generate_demo_corpus

    params = load_params(params_path)
    raw = dict(section(params, "demo", default={}) or {})
    models_seed = raw.pop("models_seed", 0)
    known = {f.name for f in dataclasses.fields(DemoCorpusConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamsError(f"{params_path}: demo: unknown key(s) {unknown}; known: {sorted(known)}")
    t0 = time.perf_counter()
    df = generate_demo_corpus(out, **raw)
    counts = df["label"].value_counts().sort_index().to_dict()
    _say(f"demo corpus: {len(df)} utterances, {df['speaker'].nunique()} speakers, "
         f"{df['session'].nunique()} sessions, classes {counts} → {out} ({time.perf_counter() - t0:.1f} s)")
    if models_out is not None:
        from features.demo_models import ensure_demo_models

        for feat, override in ensure_demo_models(models_out, seed=models_seed).items():
            if str(Path(models_out)) in str(next(iter(override.values()))):
                _say(f"{feat}: demo encoder with RANDOM weights (pipeline test only) → {override}")


def manifest(params_path: str | Path, out: str | Path, asr_cache: str | Path | None = None, *,
             progress: bool = True):
    """Build the manifest; with ``dataset.transcripts: asr`` also transcribe it (cached in ``asr_cache``).
    Returns the :class:`pipeline.extraction.transcribe.TranscribeResult` (None with ``transcripts: gold``)."""
    from pipeline.corpus.corpora import build_manifest
    from pipeline.corpus.manifest import write_manifest
    from pipeline.extraction.transcribe import ensure_asr_cache, transcribe_manifest, transcript_settings

    params = load_params(params_path)
    ds = section(params, "dataset")
    name = expect(section(ds, "name", source="params.yaml: dataset"), str, "dataset.name")
    root = expect(section(ds, "root", source="params.yaml: dataset"), str, "dataset.root")
    options = ds.get("options") or {}
    expect(options, dict, "dataset.options")
    asr = transcript_settings(ds, source=str(params_path))
    if asr is not None and asr_cache is None:
        raise ParamsError(f"{params_path}: dataset.transcripts: asr needs a transcript cache file: run the stage "
                          "with --asr-cache <file> (dvc.yaml: the manifest stage passes data/asr_cache.h5)")
    t0 = time.perf_counter()
    df = build_manifest(name, root, **options)
    result, metadata, asr_note = None, None, ""
    if asr is not None:
        df, result = transcribe_manifest(df, asr, asr_cache, audio_root=root, progress=progress)
        metadata, asr_note = result.metadata(), f"; {result.summary()}"
    elif asr_cache is not None:
        ensure_asr_cache(asr_cache)  # the DVC out exists; an existing cache is kept for a later `asr`
    write_manifest(df, out, metadata=metadata)
    counts = df["label"].value_counts().sort_index().to_dict()
    _say(f"manifest: {name} at {root}: {len(df)} utterances, {df['speaker'].nunique()} speakers, "
         f"classes {counts}{asr_note} → {out} ({time.perf_counter() - t0:.1f} s)")
    return result


def folds(params_path: str | Path, plan: str, manifest_path: str | Path, out: str | Path) -> None:
    from pipeline.corpus.folds import make_folds, write_folds
    from pipeline.corpus.manifest import read_manifest

    params = load_params(params_path)
    cfg = section(params, "folds")
    seed = expect(cfg.get("seed", 0), int, "folds.seed")
    options = (cfg.get("options") or {}).get(plan, {}) or {}
    df = make_folds(plan, read_manifest(manifest_path), seed=seed, **options)
    write_folds(df, out)
    n_folds = df["fold"].nunique()
    sizes = df[df.fold == df.fold.min()]["split"].value_counts().to_dict()
    _say(f"folds: {plan}: {n_folds} folds; fold {df.fold.min()} sizes {sizes} → {out}")


def extract(
    params_path: str | Path,
    feature: str,
    manifest_path: str | Path,
    out: str | Path,
    *,
    jobs: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> None:
    from pipeline.extraction.extract import extract_feature

    res, extractor = extract_feature(load_params(params_path), feature, manifest_path, out, jobs=jobs,
                                     device=device, progress=progress)
    flag = " [RANDOM WEIGHTS]" if extractor.provenance().get("random_weights") else ""
    _say(f"extract {feature}{flag}: {res.total} utterances, {res.computed} computed, {res.reused} reused, "
         f"{res.resumed} resumed → {out} ({res.seconds:.1f} s)")


def train(
    params_path: str | Path,
    model: str,
    manifest_path: str | Path,
    folds_dir: str | Path,
    features_dir: str | Path,
    out: str | Path,
    **overrides: Any,
) -> dict:
    from pipeline.orchestration.flows import run_cross_validation

    params = load_params(params_path)
    if not _train_stages_fresh(params_path):
        _say(f"WARNING: the train stages of {Path(params_path).parent / 'dvc.yaml'} do not match {params_path} "
             "(features, plan or params changed): run `emoflow stage dvc-yaml` so DVC knows what each reads")
    return run_cross_validation(
        model,
        params=params,
        manifest_path=manifest_path,
        folds_dir=folds_dir,
        features_dir=features_dir,
        results_dir=out,
        **overrides,
    )


def _train_stages_fresh(params_path: str | Path) -> bool:
    """Whether the dvc.yaml beside ``params_path`` declares the inputs this params file gives each model. A stale
    one only warns: DVC then tracks other files than the run reads, but the run itself is right (and a test
    project may train from a trimmed dvc.yaml without the generated block on purpose)."""
    dvc_file = Path(params_path).parent / "dvc.yaml"
    try:
        return not dvc_file.is_file() or dvc_yaml(params_path, dvc_file, check=True)
    except ParamsError:  # no generated block to compare
        return True


def dvc_yaml(params_path: str | Path, dvc_file: str | Path = "dvc.yaml", *, check: bool = False) -> bool:
    """Regenerate ``dvc_file``'s train stages from ``params_path`` (see pipeline/orchestration/dvc_stages.py); with ``check``
    only compare. Returns whether the file was already up to date."""
    from pipeline.orchestration.dvc_stages import update_dvc_yaml

    path = Path(dvc_file)
    text = path.read_text()
    new = update_dvc_yaml(text, load_params(params_path))
    if new != text and not check:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(new)
        tmp.replace(path)
        _say(f"{path}: train stages regenerated from {params_path}")
    return new == text


def report(params_path: str | Path, results_dir: str | Path, out: str | Path) -> None:
    from pipeline.orchestration.report import write_report

    write_report(results_dir, out)
    _say(f"report → {out}")
