"""Several corpora as one manifest: the ``combined`` dataset adapter, for cross-corpus evaluation.

``dataset.name: combined`` builds each listed corpus with its own adapter (``demo``, ``iemocap``, ``manifest``, …)
and stacks the results::

    dataset:
      name: combined
      corpus: demo+ravdess          # the name runs and reports show
      root: data/demo_corpus        # stored audio paths are relative to it (absolute when outside it)
      options:
        classes: [ang, hap, neu, sad]
        corpora:
          - {id: demo, name: demo, root: data/demo_corpus}
          - {id: rav, name: manifest, root: ../shared/corpora/ravdess, options: {file: manifest.csv},
             label_map: {cal: null, fea: null, dis: null, sur: null}}

What changes on the way in, and why:

* a ``corpus`` column holds each utterance's corpus ``id`` (the ``cross_corpus`` fold plan splits on it);
* ``utt_id``, ``speaker`` and ``session`` get the prefix ``<id>:`` — two corpora both have a speaker "01" and
  could both have an utterance "a001", and a fold plan over speakers must not merge them;
* labels are reconciled **explicitly**: a corpus label is kept when it is one of ``classes``, else its
  ``label_map`` must say which class it becomes or ``null`` to drop it. Anything else raises one error listing
  every unmapped label of every corpus, so a silent mismatch ("happy" vs "hap") cannot shrink a class to zero.

The corpus roots (``corpora[].root``) are read like ``dataset.root``: relative to the working directory.
Only :func:`combined_adapter` reads files; :func:`parse_corpora`, :func:`reconcile_labels` and
:func:`stack_manifests` are pure.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.corpus.corpora import _ADAPTERS, _rel, build_manifest, register_adapter
from pipeline.corpus.manifest import ManifestError

log = logging.getLogger(__name__)

CORPUS_COLUMN = "corpus"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # no ':' (the prefix separator) and no '/' (HDF5 group separator)
_PREFIXED = ("utt_id", "speaker", "session")


@dataclass(frozen=True)
class CorpusEntry:
    id: str
    name: str  # the adapter
    root: str
    options: dict[str, Any] = field(default_factory=dict)
    label_map: dict[str, str | None] = field(default_factory=dict)  # corpus label → class, None = drop


def parse_corpora(corpora: Any) -> list[CorpusEntry]:
    """The ``corpora`` option as entries; every mistake raises :class:`ManifestError` saying which entry."""
    if not isinstance(corpora, Sequence) or isinstance(corpora, str) or len(corpora) < 2:
        raise ManifestError("combined: corpora must list at least two corpora ({id, name, root, options, "
                            f"label_map}}), got {corpora!r}")
    out: list[CorpusEntry] = []
    for i, e in enumerate(corpora):
        where = f"combined: corpora[{i}]"
        if not isinstance(e, Mapping):
            raise ManifestError(f"{where} must be a mapping {{id, name, root, ...}}, got {e!r}")
        unknown = sorted(set(e) - {"id", "name", "root", "options", "label_map"})
        missing = [k for k in ("id", "name", "root") if k not in e]
        if unknown or missing:
            raise ManifestError(f"{where}: unknown key(s) {unknown}, missing key(s) {missing}; an entry has id, "
                                "name (the adapter), root and optionally options, label_map")
        cid = str(e["id"])
        if not _ID_RE.fullmatch(cid):
            raise ManifestError(f"{where}: id {cid!r} must be letters, digits, '_' or '-' (it prefixes utt_ids)")
        if e["name"] == "combined" or e["name"] not in _ADAPTERS:
            raise ManifestError(f"{where}: unknown dataset {e['name']!r}; known: "
                                f"{', '.join(n for n in sorted(_ADAPTERS) if n != 'combined')}")
        for key in ("options", "label_map"):
            if not isinstance(e.get(key) or {}, Mapping):
                raise ManifestError(f"{where}: {key} must be a mapping, got {e.get(key)!r}")
        lm = {str(k): (None if v is None else str(v)) for k, v in (e.get("label_map") or {}).items()}
        out.append(CorpusEntry(cid, str(e["name"]), str(e["root"]), dict(e.get("options") or {}), lm))
    ids = [c.id for c in out]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"combined: corpus ids must be unique, got {ids}")
    return out


def reconcile_labels(labels: Mapping[str, Sequence[str]], classes: Sequence[str],
                     label_maps: Mapping[str, Mapping[str, str | None]]) -> dict[str, dict[str, str | None]]:
    """Per corpus, the map from each of its labels to a class (None = dropped). A label is kept as is when it
    is a class, else its corpus' label map decides; a label neither a class nor mapped, or mapped to a name
    that is no class, raises one :class:`ManifestError` listing all of them."""
    classes = [str(c) for c in classes]
    problems, out = [], {}
    for cid, labs in labels.items():
        lm = label_maps.get(cid) or {}
        bad_target = sorted(f"{k}→{v}" for k, v in lm.items() if v is not None and v not in classes)
        unmapped = sorted({str(x) for x in labs if str(x) not in classes and str(x) not in lm})
        if unmapped:
            problems.append(f"{cid}: {unmapped} not mapped (add label_map: {{{unmapped[0]}: <class> or null}})")
        if bad_target:
            problems.append(f"{cid}: label_map targets {bad_target} are not classes")
        out[cid] = {str(x): (lm[str(x)] if str(x) in lm else str(x)) for x in set(map(str, labs))}
    if problems:
        raise ManifestError(f"combined: labels do not reconcile with classes {classes}: " + "; ".join(problems))
    return out


def stack_manifests(frames: Mapping[str, pd.DataFrame], audio_roots: Mapping[str, Path], root: Path,
                    classes: Sequence[str], label_maps: Mapping[str, Mapping[str, str | None]]) -> pd.DataFrame:
    """One manifest from each corpus' validated manifest: labels reconciled, ids prefixed, paths re-rooted
    at ``root`` (each corpus' paths start at its ``audio_roots`` folder unless absolute), a ``corpus`` column."""
    maps = reconcile_labels({cid: df["label"].unique().tolist() for cid, df in frames.items()}, classes, label_maps)
    parts = []
    for cid, df in frames.items():
        d = df.copy()
        d["label"] = d["label"].map(maps[cid])
        dropped = d["label"].isna()
        if dropped.any():
            log.info("combined: %s: dropped %d utterance(s) with labels mapped to null", cid, int(dropped.sum()))
        d = d[~dropped].copy()
        if d.empty:
            raise ManifestError(f"combined: {cid}: no utterance left after the label map")
        for c in _PREFIXED:
            d[c] = [f"{cid}:{v}" if v else "" for v in d[c]]
        d["path"] = [p if os.path.isabs(p) else _rel(Path(audio_roots[cid]) / p, root) for p in d["path"]]
        d[CORPUS_COLUMN] = cid
        parts.append(d)
    return pd.concat(parts, ignore_index=True)


@register_adapter("combined")
def combined_adapter(root: Path, *, corpora: Sequence[Mapping[str, Any]] = (), classes: Sequence[str] = (),
                     jobs: int = 1, missing_audio: str = "error") -> pd.DataFrame:
    """Several corpora as one manifest (see the module doc). ``jobs`` and ``missing_audio`` are passed to each
    corpus' adapter unless its own ``options`` set them."""
    from pipeline.corpus.manifest import audio_root_of

    entries = parse_corpora(corpora)
    if not classes or isinstance(classes, str):
        raise ManifestError("combined: classes must list the shared classes, e.g. [ang, hap, neu, sad]")
    frames, roots = {}, {}
    for e in entries:
        takes = inspect.signature(_ADAPTERS[e.name]).parameters
        opts = {k: v for k, v in (("jobs", jobs), ("missing_audio", missing_audio)) if k in takes} | e.options
        frames[e.id] = build_manifest(e.name, e.root, **opts)
        roots[e.id] = audio_root_of(e.root)
    df = stack_manifests(frames, roots, Path(root), classes, {e.id: e.label_map for e in entries})
    log.info("combined: %s", {cid: int(n) for cid, n in df[CORPUS_COLUMN].value_counts().sort_index().items()})
    return df
