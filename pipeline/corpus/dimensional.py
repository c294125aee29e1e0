"""Dimensional emotion targets: IEMOCAP's valence/arousal/dominance (1–5) per utterance.

Every summary line of an IEMOCAP ``EmoEvaluation`` file ends in the evaluators' mean ``[V, A, D]``::

    [6.2901 - 8.2357]	Ses01F_impro01_F000	neu	[2.5000, 2.5000, 2.5000]

(IEMOCAP calls arousal "activation"). The ``iemocap`` adapter keeps them as the manifest columns
:data:`VAD_COLUMNS`. Known quirk of the release: a few utterances carry values outside 1–5 (e.g. 5.5, 0.5);
they are kept as written, not clipped — clipping would invent annotations, and a user who wants 1–5 can clip.
A line without the triple gives NaN (the utterance keeps its categorical label).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

VAD_COLUMNS = ("valence", "arousal", "dominance")
_NAN3 = (math.nan, math.nan, math.nan)
_VAD_RE = re.compile(r"\[\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*\]")


def parse_vad(field: str) -> tuple[float, float, float]:
    """``"[2.5000, 3.0000, 1.5000]"`` → ``(2.5, 3.0, 1.5)``; anything else → NaNs."""
    m = _VAD_RE.fullmatch(field.strip())
    return tuple(float(g) for g in m.groups()) if m else _NAN3  # type: ignore[return-value]


def parse_iemocap_vad(file: Path) -> dict[str, tuple[float, float, float]]:
    """``{utt_id: (valence, arousal, dominance)}`` from the summary lines of one EmoEvaluation file."""
    out = {}
    with open(file, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("["):
                continue  # header, annotator lines, blank separators
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) >= 2:
                out[fields[1].strip()] = parse_vad(fields[3]) if len(fields) >= 4 else _NAN3
    return out



def target_columns(columns: Iterable[str]) -> tuple[str, ...]:
    """The V/A/D columns a manifest has, in :data:`VAD_COLUMNS` order (a corpus may annotate only some)."""
    have = set(columns)
    return tuple(c for c in VAD_COLUMNS if c in have)


def target_array(manifest: pd.DataFrame, utt_ids: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """``(len(utt_ids), len(names))`` float32 targets of ``utt_ids``, NaN where an utterance is not annotated
    (or absent from ``manifest``)."""
    table = manifest.set_index(manifest["utt_id"].astype(str))[list(names)]
    return table.reindex(list(utt_ids)).to_numpy(dtype=np.float32, na_value=np.nan)
