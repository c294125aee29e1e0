"""Corpus adapters: a corpus on disk → a validated manifest (see :mod:`pipeline.corpus.manifest`).

``build_manifest(dataset, root, **options)`` dispatches by name to a registered adapter:

* ``demo``     — the generated demo corpus (``<root>/metadata.csv``, see ``pipeline/corpus/demo_corpus.py``);
* ``iemocap``  — a real ``IEMOCAP_full_release`` folder (layout in specs/datasets.md);
* ``manifest`` — any corpus described by a CSV/Parquet file with at least ``path,label``.

Every adapter stores paths relative to ``root``, reads durations with ``soundfile.info``, computes
``audio_sha256`` (``jobs`` threads) and returns the manifest sorted by ``utt_id``, validated, with
``df.attrs["label_counts"]`` (utterances per label) and ``df.attrs["dataset"]``.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from pipeline.corpus.dimensional import VAD_COLUMNS, parse_iemocap_vad
from pipeline.corpus.manifest import (
    REQUIRED_COLUMNS,
    ManifestError,
    MissingAudioError,
    audio_checksum,
    label_counts,
    similar_labels,
    sort_manifest,
    validate_manifest,
)

log = logging.getLogger(__name__)

Adapter = Callable[..., pd.DataFrame]
_ADAPTERS: dict[str, Adapter] = {}


class CorpusCountWarning(UserWarning):
    """A corpus whose per-class counts differ from the published protocol's."""


def register_adapter(name: str) -> Callable[[Adapter], Adapter]:
    """Register ``fn(root: Path, **options) -> DataFrame`` under ``name``; a duplicate name raises."""

    def deco(fn: Adapter) -> Adapter:
        if name in _ADAPTERS:
            raise ValueError(f"dataset adapter {name!r} is already registered")
        _ADAPTERS[name] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_manifest`."""
    return sorted(_ADAPTERS)


def build_manifest(dataset: str, root: str | os.PathLike, **options) -> pd.DataFrame:
    """Build the manifest of corpus ``dataset`` found at ``root``.

    Common options: ``jobs`` (threads for checksums, default 1), ``missing_audio`` (``error``|``skip``).
    Returns the validated manifest (rows sorted by ``utt_id``) with ``attrs["label_counts"]``.
    """
    if dataset not in _ADAPTERS:
        raise ManifestError(f"unknown dataset {dataset!r}; known datasets: {', '.join(list_datasets())}")
    fn = _ADAPTERS[dataset]
    params = inspect.signature(fn).parameters
    unknown = sorted(k for k in options if k not in params or k == "root")
    if unknown:
        takes = [p for p in params if p != "root"]
        raise ManifestError(f"dataset {dataset!r} does not take option(s) {unknown}; it takes {takes}")
    df = fn(Path(root), **options)
    df = sort_manifest(validate_manifest(df, source=f"{dataset} corpus at {root}"))
    counts = label_counts(df)
    for group in similar_labels(counts):
        msg = (f"{dataset} corpus at {root}: labels {group} differ only by case or spaces and count as "
               f"{len(group)} classes ({', '.join(f'{g!r}: {counts[g]}' for g in group)}); unify them in the "
               "corpus table or map them with dataset.options.label_map")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    df.attrs["dataset"] = dataset
    df.attrs["label_counts"] = counts
    log.info("%s: %d utterances; per class: %s", dataset, len(df), counts)
    return df


# ----------------------------------------------------------------------------------------------- helpers


def _rel(path: Path, root: Path) -> str:
    """POSIX path relative to ``root`` when inside it, else absolute POSIX."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(Path(os.path.abspath(root))).as_posix()
    except ValueError:
        return path.as_posix()


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ManifestError(f"option {name}={value!r} is not one of {list(choices)}")


def _audio_stats(
    abs_paths: list[Path], starts: np.ndarray, ends: np.ndarray, jobs: int
) -> tuple[np.ndarray, list[str]]:
    """(duration seconds, sha256) per row; a segment's duration is end − start and must fit in its file."""

    def one(i: int) -> tuple[float, str]:
        p, s, e = abs_paths[i], starts[i], ends[i]
        digest = audio_checksum(p, s, e)  # raises MissingAudioError naming p
        try:
            info = sf.info(str(p))
        except Exception as err:  # libsndfile errors are terse
            raise ManifestError(f"{p}: cannot read audio header ({err}); re-export the file as WAV/FLAC") from None
        file_dur = info.frames / info.samplerate
        if math.isnan(s):
            return file_dur, digest
        if e > file_dur + 0.01:  # 10 ms slack for rounding in label files
            raise ManifestError(f"{p}: segment end {e:.3f} s is past the end of the file ({file_dur:.3f} s)")
        return e - s, digest

    idx = range(len(abs_paths))
    if jobs > 1:
        with ThreadPoolExecutor(max_workers=jobs) as ex:  # hashing + header reads are I/O bound
            res = list(ex.map(one, idx))
    else:
        res = [one(i) for i in idx]
    return np.array([r[0] for r in res], dtype="float64"), [r[1] for r in res]


def _drop_missing(df: pd.DataFrame, abs_paths: list[Path], missing_audio: str, what: str) -> tuple:
    exists = np.array([p.is_file() for p in abs_paths], dtype=bool)
    if exists.all():
        return df, abs_paths
    gone = [str(p) for p, ok in zip(abs_paths, exists, strict=True) if not ok]
    if missing_audio == "error":
        raise MissingAudioError(
            f"{what}: {len(gone)} audio file(s) not found, e.g. {gone[:3]}; fix the corpus copy or pass "
            "missing_audio='skip' to leave those utterances out"
        )
    msg = f"{what}: skipping {len(gone)} utterance(s) whose audio is missing, e.g. {gone[:3]}"
    warnings.warn(msg, stacklevel=3)
    log.warning(msg)
    keep = np.flatnonzero(exists)
    return df.iloc[keep].reset_index(drop=True), [abs_paths[i] for i in keep]


_GENDER = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}


def _norm_gender(values: pd.Series, source: str) -> pd.Series:
    raw = values.fillna("").astype(str).str.strip()
    out = raw.str.lower().map(_GENDER).fillna("")
    unknown = sorted(set(raw[(out == "") & (raw != "")]))
    if unknown:
        log.warning("%s: gender values %s not recognised (F/M/female/male); stored as unknown ('')", source, unknown)
    return out


def _resolve_label_map(label_map, named: Mapping[str, Mapping[str, str]], default: str) -> dict[str, str] | None:
    if label_map is None:
        return dict(named[default]) if default else None
    if isinstance(label_map, str):
        if label_map not in named:
            raise ManifestError(f"unknown label_map {label_map!r}; use a mapping or one of {sorted(named)}")
        return dict(named[label_map])
    if not isinstance(label_map, Mapping):
        raise ManifestError(f"label_map must be a mapping {{code: label}} or a name, got {type(label_map).__name__}")
    return {str(k): str(v) for k, v in label_map.items()}


# ------------------------------------------------------------------------------------ generic manifest


#: Named label maps for CSV/Parquet corpora (None = keep labels as they are).
GENERIC_LABEL_MAPS: dict[str, dict[str, str]] = {}

_OPTIONAL = ("utt_id", "speaker", "session", "gender", "subset", "transcript", "start", "end", *VAD_COLUMNS)


def _read_table(file: Path) -> pd.DataFrame:
    if not file.is_file():
        raise ManifestError(f"{file}: corpus manifest not found; give the CSV/Parquet file that lists path,label")
    try:
        if file.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(file)
            for c in df.columns:  # labels like 1..8 (RAVDESS codes) become strings, like from CSV
                if c not in ("start", "end"):
                    df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            return df
        # every cell as text: a label "NA" or an id "001" must stay as written
        sep = "\t" if file.suffix.lower() in (".tsv", ".tab") else ","
        return pd.read_csv(file, dtype=str, keep_default_na=False, sep=sep)
    except Exception as e:
        raise ManifestError(f"{file}: cannot read the corpus table ({e}); it must be CSV (comma), TSV (.tsv) or Parquet") from None


def _table_to_manifest(
    table: pd.DataFrame,
    file: Path,
    root: Path,
    *,
    required: tuple[str, ...],
    label_map: dict[str, str] | None,
    unknown_label: str,
    missing_audio: str,
    jobs: int,
) -> pd.DataFrame:
    table = table.rename(columns=lambda c: str(c).strip())
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ManifestError(f"{file}: missing column(s) {missing}; it needs at least {list(required)}")
    ignored = [c for c in table.columns if c not in ("path", "label", *_OPTIONAL)]
    if ignored:
        log.info("%s: ignoring column(s) %s", file, ignored)
    n = len(table)
    if n == 0:
        raise ManifestError(f"{file}: no rows; list one utterance per row")
    text = {c: table[c].astype(str).str.strip() if c in table.columns else pd.Series([""] * n) for c in
            ("path", "label", "utt_id", "speaker", "session", "gender", "subset", "transcript")}

    empty = np.flatnonzero((text["path"] == "").to_numpy())
    if len(empty):
        raise ManifestError(f"{file}: empty path in data row(s) {(empty[:5] + 1).tolist()}; fill them in")
    labels = text["label"]
    raw_labels = labels  # the corpus' own label, kept as corpus_label (per-model label maps read it)
    empty = np.flatnonzero((labels == "").to_numpy())
    if len(empty):
        raise ManifestError(f"{file}: empty label in data row(s) {(empty[:5] + 1).tolist()}; label or drop them")
    keep = np.ones(n, dtype=bool)
    if label_map is not None:
        known = labels.isin(list(label_map)).to_numpy()
        if not known.all():
            unk = sorted(set(labels[~known]))
            if unknown_label == "error":
                raise ManifestError(
                    f"{file}: label(s) {unk} are not in label_map (keys {sorted(label_map)}); add them to the map "
                    "or pass unknown_label='drop'"
                )
            log.info("%s: dropping %d row(s) with label(s) %s not in label_map", file, int((~known).sum()), unk)
            keep &= known
        labels = labels.map(lambda v: label_map.get(v, v))

    def num(col: str) -> np.ndarray:
        if col not in table.columns:
            return np.full(n, np.nan)
        raw = table[col].map(lambda v: v.strip() if isinstance(v, str) else v)
        blank = raw.isna() | raw.isin(["", "nan", "NaN"])
        vals = pd.to_numeric(raw.where(~blank, np.nan), errors="coerce")
        bad = vals.isna() & ~blank
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())[:5] + 1
            unit = "seconds" if col in ("start", "end") else "numbers"
            raise ManifestError(f"{file}: column {col!r} must be {unit}; bad values in data row(s) {rows.tolist()}")
        return vals.to_numpy(dtype="float64")

    start, end = num("start"), num("end")
    half = np.flatnonzero(np.isnan(start) != np.isnan(end))
    if len(half):
        raise ManifestError(
            f"{file}: start and end must both be set (a segment) or both be empty (whole file); "
            f"data row(s) {(half[:5] + 1).tolist()} have only one"
        )
    base = file.parent
    abs_paths = [Path(p) if os.path.isabs(p) else base / p for p in text["path"]]
    utt = text["utt_id"].copy()
    no_id = (utt == "").to_numpy()
    utt[no_id] = [Path(p).stem for p in text["path"][no_id]]

    df = pd.DataFrame(
        {
            "utt_id": utt,
            "path": [_rel(p, root) for p in abs_paths],
            "start": start,
            "end": end,
            "label": labels,
            "corpus_label": raw_labels,
            "speaker": text["speaker"],
            "session": text["session"],
            "gender": _norm_gender(text["gender"], str(file)),
            "subset": text["subset"].str.lower(),
            "transcript": table["transcript"].astype(str) if "transcript" in table.columns else text["transcript"],
        }
    )
    vad = [c for c in VAD_COLUMNS if c in table.columns]  # dimensional targets, when the table has them
    for c in vad:
        df[c] = num(c)
    df = df[keep].reset_index(drop=True)
    abs_paths = [p for p, k in zip(abs_paths, keep, strict=True) if k]
    dups = df["utt_id"][df["utt_id"].duplicated()].unique().tolist()
    if dups:
        raise ManifestError(
            f"{file}: duplicate utt_id(s) {dups[:5]}{' ...' if len(dups) > 5 else ''} (derived from the file name "
            "where the table has no utt_id); add a unique utt_id column"
        )
    df, abs_paths = _drop_missing(df, abs_paths, missing_audio, str(file))
    df["duration"], df["audio_sha256"] = _audio_stats(abs_paths, df["start"].to_numpy(), df["end"].to_numpy(), jobs)
    return df[list(REQUIRED_COLUMNS) + vad]


@register_adapter("manifest")
def manifest_adapter(
    root: Path,
    *,
    file: str | os.PathLike | None = None,
    label_map: Mapping[str, str] | str | None = None,
    unknown_label: str = "error",
    missing_audio: str = "error",
    jobs: int = 1,
) -> pd.DataFrame:
    """Any corpus as a CSV/Parquet table with at least ``path,label``.

    Optional columns: ``utt_id`` (default: the path's stem, must stay unique), ``speaker``, ``session``,
    ``gender`` (F/M/female/male, anything else → ""), ``subset``, ``transcript``, ``start``, ``end`` (seconds).
    ``root`` is the table itself (paths then are relative to it and stored relative to its folder), or a corpus
    folder with ``file=`` naming the table (relative to ``root`` or absolute). Table paths are relative to the
    table's folder, or absolute. ``label_map`` maps corpus labels to class labels; labels not in it raise
    (``unknown_label='error'``) or are dropped (``'drop'``).
    """
    _check_choice("unknown_label", unknown_label, ("error", "drop"))
    _check_choice("missing_audio", missing_audio, ("error", "skip"))
    if root.is_file() and file is None:
        file, root = root, root.parent  # the table itself (a relative path stays relative to the cwd)
    elif file is None:
        raise ManifestError(f"{root}: is a folder; pass file=<the CSV/Parquet table listing path,label>")
    else:
        file = Path(file) if os.path.isabs(file) else root / file
    lm = _resolve_label_map(label_map, GENERIC_LABEL_MAPS, default="")
    return _table_to_manifest(
        _read_table(file), file, root, required=("path", "label"), label_map=lm, unknown_label=unknown_label,
        missing_audio=missing_audio, jobs=jobs,
    )


# ------------------------------------------------------------------------------------------------- demo

DEMO_COLUMNS = ("utt_id", "path", "label", "speaker", "session", "gender", "transcript")


@register_adapter("demo")
def demo_adapter(root: Path, *, missing_audio: str = "error", jobs: int = 1) -> pd.DataFrame:
    """The generated demo corpus: ``<root>/metadata.csv`` with columns utt_id,path,label,speaker,session,gender,transcript."""
    _check_choice("missing_audio", missing_audio, ("error", "skip"))
    file = root / "metadata.csv"
    if not file.is_file():
        raise ManifestError(
            f"{file}: demo corpus metadata not found; generate the demo corpus into {root} first "
            "(pipeline/corpus/demo_corpus.py, the `demo` stage)"
        )
    return _table_to_manifest(
        _read_table(file), file, root, required=DEMO_COLUMNS, label_map=None, unknown_label="error",
        missing_audio=missing_audio, jobs=jobs,
    )


# ---------------------------------------------------------------------------------------------- IEMOCAP

IEMOCAP_CODES = ("neu", "hap", "sad", "ang", "exc", "fru", "fea", "sur", "dis", "oth", "xxx")
IEMOCAP_LABEL_MAPS: dict[str, dict[str, str]] = {
    # the common 4-class protocol: exc merged into hap → neu 1708, hap 1636, ang 1103, sad 1084 = 5531
    "4class": {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"},
    # head-fusion (model E): exc is "happy", hap dropped; used with subset="improvised"
    "4class_exc": {"neu": "neu", "exc": "hap", "ang": "ang", "sad": "sad"},
    "all": {c: c for c in IEMOCAP_CODES},
}
IEMOCAP_4CLASS_COUNTS = {"ang": 1103, "hap": 1636, "neu": 1708, "sad": 1084}

_UTT_RE = re.compile(r"^(Ses\d\d)[FM]_(impro|script)[0-9A-Za-z_]*_([FM])[0-9A-Za-z]+$")
_TRANS_RE = re.compile(r"^(\S+)\s+\[[^\]]*\]:\s?(.*)$")


def _iemocap_sessions(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ManifestError(f"{root}: IEMOCAP root folder not found; point root at IEMOCAP_full_release/")
    sessions = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"Session\d+", p.name))
    if not sessions:
        raise ManifestError(
            f"{root}: no Session1..Session5 folders; point root at the IEMOCAP_full_release/ folder itself"
        )
    return sessions


def parse_iemocap_labels(file: Path) -> list[tuple[str, str, float, float]]:
    """Summary lines of one EmoEvaluation file → ``[(utt_id, code, start, end), ...]`` (dialog times, seconds)."""
    rows = []
    with open(file, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.startswith("["):
                continue  # header, annotator lines (C-E2:, A-E3:), blank separators
            fields = line.rstrip("\r\n").split("\t")
            m = re.fullmatch(r"\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]", fields[0].strip())
            if len(fields) < 3 or m is None:
                raise ManifestError(
                    f"{file}:{lineno}: malformed label line {line.strip()!r}; expected "
                    "'[start - end]<TAB>utt_id<TAB>label<TAB>[v, a, d]'"
                )
            rows.append((fields[1].strip(), fields[2].strip(), float(m.group(1)), float(m.group(2))))
    return rows


def parse_iemocap_transcripts(file: Path) -> dict[str, str]:
    """``utt_id [start-end]: text`` lines → ``{utt_id: text}`` (other lines skipped)."""
    out = {}
    with open(file, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _TRANS_RE.match(line.strip())
            if m:
                out[m.group(1)] = m.group(2).strip()
    return out


@register_adapter("iemocap")
def iemocap_adapter(
    root: Path,
    *,
    label_map: Mapping[str, str] | str | None = None,
    subset: str = "all",
    missing_audio: str = "error",
    jobs: int = 1,
) -> pd.DataFrame:
    """IEMOCAP_full_release → manifest of sentence wavs (``start``/``end`` NaN: each wav is the whole utterance).

    ``label_map``: mapping {code: label} or a name in :data:`IEMOCAP_LABEL_MAPS` (default ``"4class"``); codes
    not in the map are dropped. ``subset``: ``all|improvised|scripted``. Speaker = session + the gender letter
    of the id's last token (``Ses01F_impro01_M000`` → ``Ses01M``). Warns (:class:`CorpusCountWarning`) when the
    default 4-class protocol over all sessions does not give the published 5531 utterances.
    """
    _check_choice("subset", subset, ("all", "improvised", "scripted"))
    _check_choice("missing_audio", missing_audio, ("error", "skip"))
    is_default = label_map is None or label_map == "4class" or label_map == IEMOCAP_LABEL_MAPS["4class"]
    lm = _resolve_label_map(label_map, IEMOCAP_LABEL_MAPS, default="4class")
    records = []
    for sdir in _iemocap_sessions(root):
        emo = sdir / "dialog" / "EmoEvaluation"
        if not emo.is_dir():
            raise ManifestError(f"{emo}: EmoEvaluation folder not found; the IEMOCAP copy is incomplete")
        # regular .txt files only: the folder also holds Categorical/, Attribute/, Self-evaluation/ and, on
        # some copies, macOS '._*' resource forks
        label_files = sorted(p for p in emo.iterdir() if p.is_file() and p.suffix == ".txt"
                             and not p.name.startswith("."))
        if not label_files:
            raise ManifestError(f"{emo}: no label files (<dialog>.txt); the IEMOCAP copy is incomplete")
        for lf in label_files:
            dialog_labels = parse_iemocap_labels(lf)
            vad = parse_iemocap_vad(lf)
            trans_file = sdir / "dialog" / "transcriptions" / lf.name
            trans = parse_iemocap_transcripts(trans_file) if trans_file.is_file() else None
            if trans is None and dialog_labels:
                msg = f"{trans_file}: transcription file not found; transcripts of {lf.stem} left empty"
                warnings.warn(msg, stacklevel=2)
                log.warning(msg)
            for utt, code, t0, t1 in dialog_labels:
                m = _UTT_RE.match(utt)
                if m is None:
                    raise ManifestError(f"{lf}: utterance id {utt!r} is not an IEMOCAP id (Ses0N[FM]_impro/script..)")
                if code not in lm:
                    continue
                sub = "improvised" if m.group(2) == "impro" else "scripted"
                if subset != "all" and sub != subset:
                    continue
                dialog = utt.rsplit("_", 1)[0]
                records.append(
                    {
                        "utt_id": utt,
                        "wav": sdir / "sentences" / "wav" / dialog / f"{utt}.wav",
                        "label": lm[code],
                        "corpus_label": code,  # e.g. exc and hap stay apart for per-model label maps
                        "speaker": m.group(1) + m.group(3),
                        "session": m.group(1),
                        "gender": m.group(3),
                        "subset": sub,
                        "transcript": (trans or {}).get(utt, ""),
                        "dialog_start": t0,
                        "dialog_end": t1,
                        **dict(zip(VAD_COLUMNS, vad.get(utt, (np.nan,) * 3), strict=True)),
                    }
                )
    if not records:
        raise ManifestError(f"{root}: no utterances left after label_map={label_map!r}, subset={subset!r}")
    df = pd.DataFrame.from_records(records)
    abs_paths = list(df.pop("wav"))
    df, abs_paths = _drop_missing(df, abs_paths, missing_audio, f"IEMOCAP at {root}")
    n = len(df)
    df["path"] = [_rel(p, root) for p in abs_paths]
    df["start"] = np.full(n, np.nan)
    df["end"] = np.full(n, np.nan)
    df["duration"], df["audio_sha256"] = _audio_stats(abs_paths, df["start"].to_numpy(), df["end"].to_numpy(), jobs)

    counts = label_counts(df)
    log.info("IEMOCAP (%s, subset=%s): %d utterances; per class %s", label_map or "4class", subset, n, counts)
    if is_default and subset == "all" and counts != IEMOCAP_4CLASS_COUNTS:
        msg = (
            f"IEMOCAP at {root}: the 4-class protocol gives {n} utterances {counts}, not the published 5531 "
            f"{IEMOCAP_4CLASS_COUNTS}; the copy is incomplete or modified, so results are not comparable with papers"
        )
        warnings.warn(msg, CorpusCountWarning, stacklevel=2)
        log.warning(msg)
    # dialog times are kept as extra columns (the sentence wavs themselves are whole utterances), and so are the
    # evaluators' mean valence/arousal/dominance (pipeline/corpus/dimensional.py)
    return df[list(REQUIRED_COLUMNS) + ["dialog_start", "dialog_end", *VAD_COLUMNS]]


# several corpora in one manifest (cross-corpus plans): pipeline/corpus/combined.py registers the `combined` adapter; it
# builds on the adapters above, so it is imported last
from pipeline.corpus import combined as _combined  # noqa: E402,F401
