"""The utterance manifest: one row per utterance, the contract between corpora and everything downstream.

Columns (see DESIGN.md), in this order:

========== ======== ==========================================================================
column     dtype    meaning
========== ======== ==========================================================================
utt_id     str      unique, non-empty
path       str      audio file, POSIX, relative to the corpus root (absolute only when the file
                    lies outside the root)
start      float64  segment start in seconds, NaN = whole file
end        float64  segment end in seconds, NaN = whole file (both NaN or both finite)
duration   float64  seconds (> 0)
label      str      non-empty class label (after the corpus' label map)
speaker    str      may be "" (speaker plans then refuse the manifest)
session    str      may be "" (session plans then refuse the manifest)
gender     str      "F", "M" or "" (unknown)
subset     str      "improvised", "scripted" or ""
transcript str      may be ""
audio_sha256 str    sha256 of the file bytes; for a segment, of the bytes + ``f"{start:.4f}-{end:.4f}"``
transcript_source   where ``transcript`` comes from: ``gold`` (the corpus' own text, or none) or
           str      ``asr:<model>`` (written by the ``manifest`` stage with ``dataset.transcripts: asr``);
                    optional on input: a manifest without it (every manifest before it existed) reads as
                    ``gold`` everywhere
========== ======== ==========================================================================

Extra columns are allowed and preserved after these (e.g. a corpus' valence/arousal).
The Parquet file is written atomically, rows sorted by ``utt_id``, with no pandas metadata, so the same
content always gives the same bytes (DVC then sees no change when nothing changed). ``transcript_source`` is
stored only when some row is not ``gold``: an all-gold manifest has exactly the bytes it had before the column
existed, so upgrading does not make DVC rerun the stages below it.

Manifest-level metadata (e.g. ``asr_wer``, the ASR word error rate against the gold transcripts) is passed to
:func:`write_manifest` as ``metadata=`` and stored as JSON in the Parquet schema metadata (key
``emoflow.manifest.attrs``, only when there is some); :func:`read_manifest` puts it back in ``df.attrs``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import EmoflowError

SCHEMA_VERSION = "1"

STR_COLUMNS = ("utt_id", "path", "label", "speaker", "session", "gender", "subset", "transcript", "audio_sha256",
               "transcript_source", "corpus_label")
FLOAT_COLUMNS = ("start", "end", "duration")
#: The columns every manifest (and every corpus adapter's output) must have.
REQUIRED_COLUMNS = (
    "utt_id",
    "path",
    "start",
    "end",
    "duration",
    "label",
    "speaker",
    "session",
    "gender",
    "subset",
    "transcript",
    "audio_sha256",
)
#: Columns that may be absent on input (older manifests, adapters) → filled with this value; also for ""/missing.
DEFAULTED_COLUMNS = {"transcript_source": "gold"}
#: Every schema column, in the canonical order (extras follow).
#: Columns that default to another column's value: ``corpus_label`` (the corpus' own label before the dataset's
#: label_map, e.g. IEMOCAP's ``exc``) is ``label`` where absent.
COPIED_COLUMNS = {"corpus_label": "label"}
COLUMNS = REQUIRED_COLUMNS + tuple(DEFAULTED_COLUMNS) + tuple(COPIED_COLUMNS)
#: ``transcript_source`` values: ``gold`` or ``asr:<model>``.
TRANSCRIPT_SOURCE_PATTERN = r"gold|asr:\S.*"
#: Parquet schema-metadata key of the manifest-level metadata (JSON).
ATTRS_KEY = b"emoflow.manifest.attrs"
#: Columns that may hold "" (and where a missing value is read as "").
OPTIONAL_TEXT = ("speaker", "session", "gender", "subset", "transcript")
GENDERS = ("F", "M", "")
SUBSETS = ("improvised", "scripted", "")

_CHUNK = 1 << 20


class ManifestError(EmoflowError, ValueError):
    """A manifest (or the corpus behind it) that cannot be used; the message names the file/column and the fix."""


class MissingAudioError(ManifestError, FileNotFoundError):
    """An audio file named by a manifest or label file does not exist."""


def _examples(values: Iterable, k: int = 5) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:k])
    return shown + (f", ... ({len(values)} in all)" if len(values) > k else "")


def _is_nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x) -> str:
    return "None" if x is None else repr(float(x))


def audio_checksum(path: str | os.PathLike, start: float | None = None, end: float | None = None) -> str:
    """sha256 (hex) of the file's bytes, read in 1 MiB chunks; for a segment the bytes + ``f"{start:.4f}-{end:.4f}"``.

    ``start``/``end`` None or NaN mean the whole file; giving only one of them is an error.
    Raises :class:`MissingAudioError` (a ``FileNotFoundError``) naming the path when the file does not exist.
    """
    path = Path(path)
    whole_s, whole_e = _is_nan(start), _is_nan(end)
    if whole_s != whole_e:
        raise ManifestError(
            f"{path}: segment has start={_num(start)} but end={_num(end)}; give both (seconds) or neither"
        )
    if not path.is_file():
        raise MissingAudioError(
            f"{path}: audio file not found; check the corpus root and the manifest's path column"
        )
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    if not whole_s:
        h.update(f"{float(start):.4f}-{float(end):.4f}".encode())
    return h.hexdigest()


def validate_manifest(df: pd.DataFrame, source: str | os.PathLike | None = None) -> pd.DataFrame:
    """Check ``df`` against the manifest schema; return a normalised copy (canonical column order and dtypes).

    Missing optional text (``speaker``, ``session``, ``gender``, ``subset``, ``transcript``) becomes "";
    a missing ``transcript_source`` column (or value) becomes ``gold``.
    Raises :class:`ManifestError` naming ``source`` (a file or adapter name), the column and what to do.
    """
    where = f"{source}: " if source is not None else "manifest: "
    if not isinstance(df, pd.DataFrame):
        raise ManifestError(f"{where}expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{where}missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)} "
            "(rebuild it with `build_manifest`/the manifest stage)"
        )
    if df.columns.duplicated().any():
        raise ManifestError(f"{where}duplicate column names {_examples(df.columns[df.columns.duplicated()])}")
    out = df.reset_index(drop=True).copy()
    for c, default in DEFAULTED_COLUMNS.items():
        if c not in out.columns:
            out[c] = default
    for c, src in COPIED_COLUMNS.items():
        if c not in out.columns:
            out[c] = out[src]
        else:
            out[c] = out[c].where(~(out[c].isna() | (out[c] == "")), out[src])

    for c in STR_COLUMNS:
        col = out[c]
        null = col.isna()
        if c in DEFAULTED_COLUMNS:
            col = col.where(~(null | (col == "")), DEFAULTED_COLUMNS[c])
        elif c in OPTIONAL_TEXT:
            col = col.where(~null, "")
        elif null.any():
            raise ManifestError(
                f"{where}column {c!r} has {int(null.sum())} missing value(s) "
                f"(e.g. rows {_examples(np.flatnonzero(null.to_numpy()))}); fill them in"
            )
        non_str = [v for v in col if not isinstance(v, str)]
        if non_str:
            raise ManifestError(f"{where}column {c!r} must hold strings; found {_examples(non_str)}")
        out[c] = pd.array(list(col), dtype=object)

    for c in FLOAT_COLUMNS:
        try:
            out[c] = pd.to_numeric(out[c], errors="raise").astype("float64")
        except (ValueError, TypeError) as e:
            raise ManifestError(f"{where}column {c!r} must be numeric seconds ({e})") from None

    def bad(mask, msg):
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            ids = out.loc[mask, "utt_id"].tolist()
            raise ManifestError(f"{where}{msg}: {_examples(ids)}")

    bad(out["utt_id"].str.len() == 0, "empty utt_id in row(s) with ids")
    unsafe = np.flatnonzero((out["utt_id"].str.contains("/", regex=False) | out["utt_id"].isin([".", ".."]))
                            .to_numpy())
    if unsafe.size:  # the feature store keys utterances by id: '/' would nest groups, '.'/'..' name no object
        rows = [f"row {i} (utt_id {out['utt_id'].iloc[i]!r}, path {out['path'].iloc[i]!r})" for i in unsafe[:5]]
        raise ManifestError(f"{where}utt_id must not contain '/' or be '.' or '..': {'; '.join(rows)}"
                            + (f" ... ({unsafe.size} in all)" if unsafe.size > 5 else "")
                            + "; give those rows another utt_id (e.g. replace '/' by '_')")
    dup = out["utt_id"][out["utt_id"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(
            f"{where}duplicate utt_id(s) {_examples(dup)}; utterance ids must be unique "
            "(add/fix an utt_id column)"
        )
    bad(out["path"].str.len() == 0, "empty path for utterance(s)")
    bad(out["label"].str.strip().str.len() == 0, "empty label for utterance(s) (label them or drop the rows)")
    s_nan, e_nan = out["start"].isna().to_numpy(), out["end"].isna().to_numpy()
    bad(s_nan != e_nan, "start and end must both be set or both be NaN (whole file) for utterance(s)")
    seg = ~s_nan & ~e_nan
    bad(seg & ~np.isfinite(out["start"].to_numpy()), "non-finite start for utterance(s)")
    bad(seg & ~np.isfinite(out["end"].to_numpy()), "non-finite end for utterance(s)")
    bad(seg & (out["start"].to_numpy() < 0), "negative start for utterance(s)")
    bad(seg & ~(out["end"].to_numpy() > out["start"].to_numpy()), "end <= start for utterance(s)")
    dur = out["duration"].to_numpy()
    bad(~(np.isfinite(dur) & (dur > 0)), "duration must be finite and > 0 seconds for utterance(s)")
    bad(~out["gender"].isin(GENDERS), f"gender must be one of {GENDERS} for utterance(s)")
    bad(~out["subset"].isin(SUBSETS), f"subset must be one of {SUBSETS} for utterance(s)")
    bad(~out["audio_sha256"].str.fullmatch(r"[0-9a-f]{64}"), "audio_sha256 is not a sha256 hex digest for utterance(s)")
    bad(~out["transcript_source"].str.fullmatch(TRANSCRIPT_SOURCE_PATTERN),
        "transcript_source must be 'gold' or 'asr:<model>' for utterance(s)")

    extras = [c for c in out.columns if c not in COLUMNS]
    return out[list(COLUMNS) + extras]


def similar_labels(labels: Iterable[str]) -> list[list[str]]:
    """Groups of distinct labels that differ only by case or surrounding spaces (``NEU``, ``neu``, ``neu ``):
    almost always one class spelt two ways, which would silently become two classes.

    >>> similar_labels(["neu", "NEU", "ang", " neu", "sad"])
    [[' neu', 'NEU', 'neu']]
    """
    groups: dict[str, set[str]] = {}
    for lab in labels:
        groups.setdefault(str(lab).strip().casefold(), set()).add(str(lab))
    return [sorted(g) for _, g in sorted(groups.items()) if len(g) > 1]


def label_counts(manifest: pd.DataFrame) -> dict[str, int]:
    """Utterances per label, labels sorted."""
    counts = manifest["label"].value_counts()
    return {str(k): int(counts[k]) for k in sorted(counts.index)}


def sort_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in the canonical order (by ``utt_id``), index reset."""
    return df.sort_values("utt_id", kind="stable").reset_index(drop=True)


def _to_table(df: pd.DataFrame, metadata: dict[str, str]) -> pa.Table:
    arrays, fields = [], []
    for c in df.columns:
        if c in STR_COLUMNS:
            arr = pa.array(df[c].tolist(), type=pa.string())
        elif c in FLOAT_COLUMNS:
            # from numpy: NaN stays a NaN value (not a null), so it round-trips exactly
            arr = pa.array(df[c].to_numpy(dtype="float64"), type=pa.float64())
        else:
            arr = pa.Array.from_pandas(df[c])
        arrays.append(arr)
        fields.append(pa.field(str(c), arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def atomic_write_table(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write ``table`` to Parquet at ``path`` via a temp file in the same folder + ``os.replace``.

    Either the old file or the complete new one is at ``path``, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Validate ``df``, sort by ``utt_id`` and write it atomically as Parquet. Same content → same bytes.

    ``metadata``: manifest-level values (JSON-serialisable, e.g. ``{"asr_wer": 0.12}``), read back into
    ``df.attrs`` by :func:`read_manifest`. ``transcript_source`` is left out of the file when every row is
    ``gold`` (it reads back as ``gold``), so such a manifest keeps the bytes it had before the column existed.
    """
    out = sort_manifest(validate_manifest(df, source=path))
    if (out["transcript_source"] == DEFAULTED_COLUMNS["transcript_source"]).all():
        out = out.drop(columns=["transcript_source"])
    if (out["corpus_label"] == out["label"]).all():  # reads back as label: same bytes as before the column
        out = out.drop(columns=["corpus_label"])
    meta = {"emoflow.manifest.schema": SCHEMA_VERSION}
    if metadata:
        try:
            meta[ATTRS_KEY.decode()] = json.dumps(dict(metadata), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ManifestError(f"{path}: manifest metadata must be JSON values (no NaN): {e}") from None
    return atomic_write_table(_to_table(out, meta), path)


def manifest_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest-level metadata stored by :func:`write_manifest` (``{}`` when none), without reading rows."""
    raw = (pq.read_schema(path).metadata or {}).get(ATTRS_KEY)
    return json.loads(raw) if raw else {}


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest Parquet file; raises :class:`ManifestError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; build it first (the `manifest` stage / `build_manifest`)")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError with terse messages
        raise ManifestError(f"{path}: not a readable Parquet manifest ({e}); rebuild it") from None
    df = table.to_pandas()
    raw = (table.schema.metadata or {}).get(ATTRS_KEY)
    try:
        attrs = json.loads(raw) if raw else {}
    except ValueError:
        raise ManifestError(f"{path}: unreadable manifest metadata ({ATTRS_KEY.decode()}); rebuild it") from None
    out = validate_manifest(df, source=path)
    out.attrs = attrs
    return out


def audio_root_of(root: str | Path) -> Path:
    """The folder a manifest's relative paths start from: ``dataset.root``, or its folder when the root is the
    corpus table itself (the ``manifest`` adapter)."""
    root = Path(root)
    return root.parent if root.is_file() else root
