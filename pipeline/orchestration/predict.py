"""Run a trained model on new audio, exactly as cross-validation evaluated its test folds.

1. :func:`collect_inputs`: files, folders (searched recursively for audio) or a table with a ``path`` column
   (optional ``utt_id``, ``transcript``, ``start``, ``end``) → one row per utterance.
2. :func:`extract_inputs`: every feature set the model reads, computed with the extractor config and audio
   settings recorded in the training run (:class:`pipeline.training.bundle.FeatureSpec`) through the same
   :func:`pipeline.extraction.extract.extract_features` the DVC stage runs, into a feature store of its own
   (``<store>/<feature>-<config hash>.h5``: a second call on the same files computes nothing, and two models
   with different configs of one feature never overwrite each other's file).
3. :func:`fold_probabilities`: the training path itself — ``make_views`` (``fixed_frames`` crop/pad,
   ``max_len``), ``make_segmenting`` (segment voting), ``FeatureDataset`` with the fold's saved normaliser,
   ``Collate`` and :func:`pipeline.training.train.evaluate` — so long audio is cut, padded or windowed as in training.
4. :func:`predict`: the fold ensemble (mean of the folds' probabilities) or one fold, as a table.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from pipeline.training.bundle import PredictError, Predictor

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
#: peak below this (−80 dBFS) is treated as silence: predicted, with a warning
SILENCE_PEAK = 1e-4


# ----------------------------------------------------------------------------------------------- inputs


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False)
    raise PredictError(f"{path}: manifest must be .csv, .tsv or .parquet")


def collect_inputs(paths: Sequence[str | Path] = (), manifest: str | Path | None = None,
                   transcript: str | None = None) -> pd.DataFrame:
    """``file, path, transcript, start, end`` rows (``path`` absolute); folders are searched for audio files."""
    rows: list[dict] = []
    if manifest is not None:
        mpath = Path(manifest)
        if not mpath.is_file():
            raise PredictError(f"{mpath}: manifest not found")
        table = _read_table(mpath)
        if "path" not in table.columns:
            raise PredictError(f"{mpath}: needs a `path` column (audio files, relative to the table's folder)")
        for r in table.to_dict("records"):
            p = Path(str(r["path"]))
            rows.append({"file": str(r.get("utt_id") or r["path"]), "path": p if p.is_absolute() else mpath.parent / p,
                         "transcript": r.get("transcript") if r.get("transcript") != "" else None,
                         "start": _num(r.get("start")), "end": _num(r.get("end"))})
    for given in paths:
        p = Path(given)
        found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES) if p.is_dir() else [p]
        if p.is_dir() and not found:
            raise PredictError(f"{p}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
        rows += [{"file": str(f), "path": f, "transcript": None, "start": None, "end": None} for f in found]
    if not rows:
        raise PredictError("nothing to predict: give audio files/folders or --manifest TABLE")
    if transcript is not None:
        if len(rows) != 1:
            raise PredictError(f"--transcript is for one file ({len(rows)} given); put a `transcript` column in "
                               "a --manifest table instead")
        rows[0]["transcript"] = transcript
    df = pd.DataFrame(rows)
    df["path"] = [str(Path(p).resolve()) for p in df["path"]]
    return df


def _num(x) -> float | None:
    return None if x is None or x == "" or (isinstance(x, float) and math.isnan(x)) else float(x)


def probe_audio(inputs: pd.DataFrame, audio: dict) -> pd.DataFrame:
    """Decode each input once with the training audio settings (resampling as training did): ``duration_s`` and a
    ``warning`` for silence; an unreadable file raises :class:`features.audio.AudioError` naming it."""
    from features.audio import AudioConfig, load_audio

    cfg = AudioConfig(sample_rate=int(audio.get("sample_rate", 16000)), res_type=audio.get("res_type", "soxr_hq"))
    durations, notes = [], []
    for r in inputs.to_dict("records"):
        wav = load_audio(r["path"], r["start"], r["end"], cfg)
        durations.append(len(wav) / cfg.sample_rate)
        peak = float(np.abs(wav).max()) if wav.size else 0.0
        notes.append("silent audio (peak below -80 dBFS): the prediction is meaningless" if peak < SILENCE_PEAK
                     else "")
    return inputs.assign(duration_s=durations, warning=notes)


def _store_table(inputs: pd.DataFrame) -> pd.DataFrame:
    """The inputs as a manifest for :func:`pipeline.extraction.extract.extract_features`, with content ids (audio checksum +
    transcript): the same file maps to the same store entry on every call, whatever its name."""
    from pipeline.corpus.manifest import audio_checksum

    shas = [audio_checksum(r["path"], r["start"], r["end"]) for r in inputs.to_dict("records")]
    text = inputs["transcript"].fillna("").astype(str)
    ids = ["p" + hashlib.sha256(f"{sha}\0{t}".encode()).hexdigest()[:24] for sha, t in zip(shas, text, strict=True)]
    return inputs.assign(utt_id=ids, audio_sha256=shas, transcript=text)


def transcribe_missing(inputs: pd.DataFrame, cache_path: str | Path, *, progress: bool = False) -> pd.DataFrame:
    """Rows without a transcript get Whisper's (:func:`pipeline.extraction.transcribe.transcribe_manifest`, the offline default
    model, cached by audio checksum in ``cache_path``); given transcripts are kept."""
    from pipeline.extraction.transcribe import AsrConfig, transcribe_manifest

    todo = inputs["transcript"].isna().to_numpy()
    if not todo.any():
        return inputs
    table = _store_table(inputs[todo])
    out, _ = transcribe_manifest(table.drop_duplicates("utt_id"), AsrConfig(), cache_path, audio_root="/",
                                 progress=progress)
    text = dict(zip(out["utt_id"], out["transcript"], strict=True))
    filled = inputs.copy()
    filled.loc[todo, "transcript"] = [text[u] for u in table["utt_id"]]
    return filled


# ----------------------------------------------------------------------------------------------- features


def extract_inputs(p: Predictor, inputs: pd.DataFrame, store_dir: str | Path, *, jobs: int = 1,
                   progress: bool = False) -> tuple[dict, list[str], dict[str, int]]:
    """``({feature: FeatureReader}, utt_ids, {feature: utterances computed})`` for ``inputs`` (module docstring,
    step 2); utterances already in the store are reused."""
    from features.audio import AudioConfig
    from features.base import get_extractor
    from features.store import FeatureReader
    from pipeline.extraction.extract import extract_features

    if p.needs_text and inputs["transcript"].isna().any():
        bad = inputs.loc[inputs["transcript"].isna(), "file"].tolist()
        raise PredictError(f"{p.model} reads transcripts and {len(bad)} input(s) have none (e.g. {bad[0]}); pass "
                           "--transcript TEXT (one file), a --manifest table with a `transcript` column, or --asr")
    table = _store_table(inputs)
    ids = table["utt_id"].tolist()
    table = table.drop_duplicates("utt_id")  # the same audio given twice is computed once
    store = Path(store_dir)
    store.mkdir(parents=True, exist_ok=True)
    readers, computed = {}, {}
    for name, spec in sorted(p.features.items()):
        extractor = get_extractor(name, **spec.config)
        audio = AudioConfig(sample_rate=int(spec.audio.get("sample_rate", 16000)),
                            res_type=spec.audio.get("res_type", "soxr_hq"))
        out = store / f"{name}-{spec.config_hash[:12]}.h5"
        res = extract_features(extractor, table, out, audio_root="/", audio=audio, jobs=jobs, progress=progress)
        readers[name], computed[name] = FeatureReader(out), res.computed
    return readers, ids, computed


# ----------------------------------------------------------------------------------------------- the model


def fold_outputs(p: Predictor, fold: int, readers: dict, utt_ids: list[str], *, batch_size: int = 32,
                 device: str = "cpu") -> np.ndarray:
    """One fold's outputs ``(len(utt_ids), C + K)``, through the training data path and
    :func:`pipeline.training.train.evaluate`: class probabilities (none for ``task: regression``), then the predicted
    dimensional targets ``p.targets`` (regression/multitask); an utterance too short to give a segment is a NaN
    row. The model is rebuilt with the head training gave it (:func:`models.registry.set_task_head`)."""
    from models import create_model, get_model_info
    from models.registry import set_task_head
    from pipeline.training.data import (
        Collate,
        FeatureDataset,
        add_speaker_stats,
        feature_frame_shift,
        make_segmenting,
        make_views,
    )
    from pipeline.training.train import _softmax, evaluate

    if fold not in p.folds:
        raise PredictError(f"{p.source}: no fold {fold}; folds: {sorted(p.folds)}")
    specs = get_model_info(p.model).input_specs(**dict(p.model_params))
    views = make_views(specs, p.train)
    segmenting = None
    if p.train.get("segment_s"):
        seq = next(s for s in specs.values() if s.kind == "sequence")
        segmenting = make_segmenting(p.train, feature_frame_shift(readers[seq.feature]))
    fm = p.folds[fold]
    norm = fm.normalizer(p.train.get("normalize"))
    if norm is not None and norm.mode == "speaker":
        # trained on speaker-normalised inputs: the files of one call are taken as one speaker (one file alone,
        # or a speaker unknown otherwise, gets the fold's training statistics)
        norm = add_speaker_stats(norm, readers, views, {u: "predict-call" for u in utt_ids})
    ds = FeatureDataset(readers=readers, views=views, utt_ids=list(utt_ids), labels=[0] * len(utt_ids),
                        segmenting=segmenting, split="test", normalizer=norm)
    n_cls = p.n_logits
    if len(ds) == 0:
        return np.full((len(utt_ids), n_cls + len(p.targets)), np.nan)
    dev = torch.device(device)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False,
                        collate_fn=Collate(views, segmenting.window if segmenting else None))
    outs = []
    for state in fm.states:  # one model, or a seed ensemble's members: their probabilities are averaged
        model = create_model(p.model, num_classes=len(p.labels), **dict(p.model_params))
        model = set_task_head(model, p.model, p.task, len(p.targets))
        model.load_state_dict(state)
        model.to(dev)
        out = evaluate(model, loader, len(utt_ids), ds.utt_index, dev, amp=False)
        outs.append(np.concatenate([_softmax(out[:, :n_cls]) if n_cls else out[:, :0], out[:, n_cls:]], axis=1))
    return np.mean(outs, axis=0)


def fold_probabilities(p: Predictor, fold: int, readers: dict, utt_ids: list[str], **kw) -> np.ndarray:
    """Class probabilities ``(len(utt_ids), C)`` of one fold (:func:`fold_outputs` without the targets)."""
    return fold_outputs(p, fold, readers, utt_ids, **kw)[:, : p.n_logits]


def ensemble_outputs(p: Predictor, readers: dict, utt_ids: list[str], fold: int | None = None, **kw) -> np.ndarray:
    """One fold's :func:`fold_outputs`, or the mean over every fold's (the default: no fold saw all the data):
    mean class probabilities and mean predicted targets."""
    folds = [fold] if fold is not None else sorted(p.folds)
    outs = np.stack([fold_outputs(p, f, readers, utt_ids, **kw) for f in folds])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (too short) stay NaN
        return np.nanmean(outs, axis=0)


def ensemble(p: Predictor, readers: dict, utt_ids: list[str], fold: int | None = None, **kw) -> np.ndarray:
    """One fold's probabilities, or the mean over every fold's (the default: no fold saw all the data)."""
    return ensemble_outputs(p, readers, utt_ids, fold, **kw)[:, : p.n_logits]


def predict(p: Predictor, inputs: pd.DataFrame, *, store_dir: str | Path | None = None, fold: int | None = None,
            batch_size: int = 32, device: str = "cpu", jobs: int = 1, asr: bool = False,
            progress: bool = False) -> pd.DataFrame:
    """``file, pred, prob_<class>…, pred_<dimension>…, duration_s, folds, warning`` (+ ``transcript`` for text
    models) per input row (see the module docstring): ``pred``/``prob_*`` from a class head (classification,
    multitask), ``pred_valence``… from a dimensional one (regression, multitask); ``asr``: transcribe inputs
    without a transcript (text models)."""
    audio = next((f.audio for f in p.features.values() if f.input == "audio"), {})
    probed = probe_audio(inputs, audio)
    with tempfile.TemporaryDirectory(prefix="emoflow-predict-") as tmp:
        store = Path(store_dir or tmp)
        if asr and p.needs_text:
            inputs = transcribe_missing(inputs, store / "asr_cache.h5", progress=progress)
            probed = probed.assign(transcript=inputs["transcript"].to_numpy())
        readers, ids, _ = extract_inputs(p, inputs, store, jobs=jobs, progress=progress)
        try:
            outputs = ensemble_outputs(p, readers, ids, fold, batch_size=batch_size, device=device)
        finally:
            for r in readers.values():
                r.close()
    return _table(p, probed, outputs, fold)


def _table(p: Predictor, probed: pd.DataFrame, outputs: np.ndarray, fold: int | None) -> pd.DataFrame:
    ok = ~np.isnan(outputs).any(axis=1)
    out = pd.DataFrame({"file": probed["file"].tolist()})
    probs, n_cls = outputs[:, : p.n_logits], p.n_logits
    if n_cls:  # task: regression has no class head
        out["pred"] = [p.labels[int(i)] if k else None for i, k in zip(np.nan_to_num(probs).argmax(axis=1), ok,
                                                                         strict=True)]
        for j, lab in enumerate(p.labels):
            out[f"prob_{lab}"] = probs[:, j]
    for k, name in enumerate(p.targets):
        out[f"pred_{name}"] = outputs[:, n_cls + k]
    out["duration_s"] = probed["duration_s"].to_numpy()
    out["folds"] = "ensemble of " + ",".join(map(str, sorted(p.folds))) if fold is None else str(fold)
    notes = probed["warning"].tolist()
    for i in np.flatnonzero(~ok):
        notes[i] = "; ".join(filter(None, [notes[i], "too short for one segment of the model: no prediction"]))
    out["warning"] = notes
    if p.needs_text:
        out["transcript"] = probed["transcript"].to_numpy()
    return out


def load_predictor(model: str | None = None, *, bundle: str | Path | None = None, results_dir: str | Path = "results",
                   force: bool = False) -> Predictor:
    """A workspace run's fold ensemble (``model``) or an exported directory (``bundle``), checked for compatibility."""
    from pipeline.training.bundle import load_bundle, load_run

    if (model is None) == (bundle is None):
        raise PredictError("give exactly one of --model NAME (a run in the workspace) or --from DIR (an export)")
    return load_bundle(bundle, force=force) if bundle is not None else load_run(model, results_dir, force=force)


def predict_files(paths: Sequence[str | Path] = (), *, model: str | None = None, bundle: str | Path | None = None,
                  results_dir: str | Path = "results", manifest: str | Path | None = None,
                  transcript: str | None = None, force: bool = False, **kw) -> tuple[Predictor, pd.DataFrame]:
    """What ``emoflow predict`` does: load the model, collect the inputs, :func:`predict` (``kw``: its options)."""
    p = load_predictor(model, bundle=bundle, results_dir=results_dir, force=force)
    return p, predict(p, collect_inputs(paths, manifest, transcript), **kw)


# ----------------------------------------------------------------------------------------------- output


def write_table(df: pd.DataFrame, out: str | Path) -> Path:
    """CSV, JSON (records) or Parquet by the suffix of ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".csv":
        df.to_csv(out, index=False)
    elif suffix == ".json":
        out.write_text(df.to_json(orient="records", indent=2) + "\n")
    elif suffix == ".parquet":
        df.to_parquet(out, index=False)
    else:
        raise PredictError(f"{out}: --out must end in .csv, .json or .parquet")
    return out


def format_table(df: pd.DataFrame, labels: Iterable[str]) -> str:
    """A fixed-width text table for the terminal (probabilities and predicted targets to 3 decimals)."""
    cols = [c for c in ["file", "pred", *[f"prob_{lab}" for lab in labels]] if c in df.columns]
    cols += [c for c in df.columns if c.startswith("pred_")]
    shown = df[cols].copy()
    shown["file"] = [Path(f).name if len(f) > 40 else f for f in shown["file"]]
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
    notes = [f"warning: {f}: {w}" for f, w in zip(df["file"], df["warning"], strict=True) if w]
    return "\n".join([text, *notes])


__all__ = ["collect_inputs", "ensemble", "ensemble_outputs", "extract_inputs", "fold_outputs", "fold_probabilities",
           "format_table", "load_predictor", "predict", "predict_files", "probe_audio", "transcribe_missing",
           "write_table"]
