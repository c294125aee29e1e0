"""Datasets and collation: per-utterance arrays from the feature store → padded, masked model batches.

Everything is driven by the model registry's :class:`models.registry.InputSpec` (batch key → feature, kind,
mask key), so one dataset/collate serves every model. Per paper, the input handling lives in the *train*
settings (``models.get_model_info(name).train`` merged with ``params.yaml``), not in code:

* **A (ilt, cat, baselines)** ``fixed_frames: 750``: every sequence is cut/zero-padded to exactly 750 frames
  (7.5 s at 10 ms), mask True on the padding. ``noise_snr_db: 30`` adds white noise to train and validation
  items. Features are stored, not audio, so the noise is added **in the power domain of the dB-scaled
  log-Mel** (``x_dB → 10^(x/10) + n → 10·log10``) with a per-bin noise power of mean(signal power)/10^(SNR/10)
  and Gamma(4, 1/4) fluctuation per (frame, bin). This approximates waveform white noise (with area-normalised
  mel filters white noise has about equal power per bin) but is **not identical** to it (no STFT leakage, no
  interaction with ``top_db`` clipping). ``noise_snr_db: null`` turns it off. Validation noise is seeded per
  item (same every epoch) so that model selection sees a fixed validation set.
* **B (ks_transformer)** ``max_len: {audio: 460, text: 20}``: longer sequences keep the first N steps,
  shorter ones are zero-padded at the end by the collate (mask True = pad), as the authors' dataset does.
* **E (head_fusion)** ``segment_s: 2.0, train_hop_s: 1.0, test_hop_s: 0.4, drop_short: true``: every
  sequence input is cut into fixed windows (frames from the store's ``frame_shift``), trailing partial windows
  dropped; ``drop_short`` drops utterances of ≤ 2 s as the paper does (``false`` keeps them as one zero-padded
  window — what the demo uses, so that no fold of a short-utterance corpus is empty). Validation and test use
  ``test_hop``; their logits are averaged per utterance (:func:`pipeline.training.train.evaluate`).
* **C / D**: sequences padded to the batch maximum; phonemes ``(W, P)`` padded to ``(B, W_max, P_max)`` with 0,
  the word mask (True = padding word) from the number of words.

Arrays with layers, e.g. wav2vec2 ``(frames, n_layers, hidden)``, are reduced over the layer axis
(``layer_reduce: mean`` (default) or ``last``). An empty sequence (e.g. GloVe ``(0, d)`` for an empty transcript)
becomes one zero step that is *not* masked, so attention never sees an all-padding row (which gives NaN).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from features.errors import EmoflowError
from features.store import FeatureReader, StoreError


class DataError(EmoflowError, ValueError):
    """Inputs for training that cannot be used; the message names the file/key and the fix."""


@dataclass(frozen=True)
class InputView:
    """How one batch key is read from the store and shaped.

    ``key``: batch key (e.g. ``"x"``); ``feature``: store name; ``kind``: ``sequence`` | ``vector`` |
    ``phonemes``; ``mask_key``: batch key of the padding mask (None: no mask); ``max_len``: keep the first N
    steps; ``fixed_len``: cut and pad to exactly N steps; ``layer_reduce``: ``mean`` | ``last`` for 3-D arrays, ``none``
    keeps the layer axis (models that weigh layers themselves declare ``InputSpec.layers_param``).
    """

    key: str
    feature: str
    kind: str
    mask_key: str | None = None
    max_len: int | None = None
    fixed_len: int | None = None
    layer_reduce: str = "mean"


@dataclass(frozen=True)
class Segmenting:
    """Fixed-window segmentation of sequence inputs (paper E). Lengths in frames of the store."""

    window: int
    train_hop: int
    test_hop: int
    drop_short: bool = True


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ----------------------------------------------------------------------------------------------- views


def make_views(specs: Mapping[str, Any], train_cfg: Mapping[str, Any]) -> dict[str, InputView]:
    """Input views from the model's ``input_specs`` and the train settings (``max_len``, ``fixed_frames``,
    ``fixed_len``, ``layer_reduce``)."""
    max_len = dict(train_cfg.get("max_len") or {})
    fixed_len = dict(train_cfg.get("fixed_len") or {})
    fixed_frames = train_cfg.get("fixed_frames")
    views = {}
    for key, spec in specs.items():
        fl = fixed_len.get(key)
        if fl is None and fixed_frames and spec.kind == "sequence":
            fl = int(fixed_frames)
        views[key] = InputView(
            key=key,
            feature=spec.feature,
            kind=spec.kind,
            mask_key=spec.mask_key,
            max_len=max_len.get(key),
            fixed_len=fl,
            layer_reduce="none" if getattr(spec, "layers_param", None) else str(train_cfg.get("layer_reduce", "mean")),
        )
    return views


def open_readers(features_dir: str | Path, features: Iterable[str]) -> dict[str, FeatureReader]:
    """One :class:`FeatureReader` per feature name from ``<features_dir>/<feature>.h5``."""
    out = {}
    for name in dict.fromkeys(features):
        path = Path(features_dir) / f"{name}.h5"
        if not path.exists():
            raise DataError(
                f"{path}: feature file not found; extract it first (`dvc repro extract@{name}`) or `dvc pull` it"
            )
        out[name] = FeatureReader(path)
    return out


def reduce_layers(a: np.ndarray, how: str = "mean") -> np.ndarray:
    """``(T, L, H)`` → ``(T, H)`` by mean or last layer (``none``: unchanged); other shapes unchanged."""
    if a.ndim == 3 and how != "none":
        if how == "mean":
            return a.mean(axis=1)
        if how == "last":
            return a[:, -1]
        raise DataError(f"layer_reduce must be 'mean' or 'last', got {how!r}")
    return a


def phoneme_vocab_size(reader: FeatureReader) -> int:
    """Vocabulary size (incl. id 0 = pad) of a phonemes file: from the id table recorded in its attributes
    (``provenance["phoneme_vocab"]``, id 0 = ``<pad>``), else max id + 1 over the whole file."""
    for source in (reader.meta.provenance, reader.meta.config):
        v = source.get("phoneme_vocab")
        if isinstance(v, (list, tuple)) and v:
            return len(v) if v[0] in ("<pad>", "") else len(v) + 1
        if isinstance(source.get("phoneme_vocab_size"), int):
            return int(source["phoneme_vocab_size"])
    top = 0
    for u in reader.keys():
        a = reader[u]
        if a.size:
            top = max(top, int(a.max()))
    return top + 1


def resolve_dims(
    specs: Mapping[str, Any], readers: Mapping[str, FeatureReader], layer_reduce: str = "mean"
) -> dict[str, int]:
    """``{dim_param: value}`` read from the store, to pass to ``create_model`` (e.g. ``{"n_mels": 40}``)."""
    dims: dict[str, int] = {}
    for key, spec in specs.items():
        reader = readers[spec.feature]
        if spec.kind == "phonemes":
            dims[spec.dim_param] = phoneme_vocab_size(reader)
            continue
        keys = reader.keys()
        if not keys:
            raise DataError(f"{reader.path}: holds no utterances (input {key!r}); re-run its extraction")
        raw = np.asarray(reader[keys[0]])
        a = reduce_layers(raw, layer_reduce)
        dims[spec.dim_param] = int(a.shape[-1])
        if getattr(spec, "layers_param", None):
            dims[spec.layers_param] = int(raw.shape[1]) if raw.ndim == 3 else 1
    return dims


def feature_frame_shift(reader: FeatureReader) -> float:
    fs = reader.meta.frame_shift
    if not fs or not math.isfinite(fs) or fs <= 0:
        raise DataError(f"{reader.path}: no frame_shift recorded; segmentation needs a frame-level feature")
    return float(fs)


def make_segmenting(train_cfg: Mapping[str, Any], frame_shift: float) -> Segmenting | None:
    """Windows in frames from the train settings ``segment_s``, ``train_hop_s``, ``test_hop_s`` (seconds) and
    ``drop_short``; None when ``segment_s`` is unset.

    A window of S seconds has ``floor(S / frame_shift) + 1`` frames: the frame count librosa's centred STFT
    gives for an S-second clip (2 s of 16 kHz audio at hop 512 → 63 frames, the paper code's (·, 63) input).

    >>> make_segmenting({"segment_s": 2.0, "train_hop_s": 1.0, "test_hop_s": 0.4}, 512 / 16000)
    Segmenting(window=63, train_hop=31, test_hop=12, drop_short=True)
    """
    if not train_cfg.get("segment_s"):
        return None
    window = int(math.floor(float(train_cfg["segment_s"]) / frame_shift + 1e-9)) + 1
    train_hop = max(1, int(round(float(train_cfg.get("train_hop_s") or 1.0) / frame_shift)))
    test_hop = max(1, int(round(float(train_cfg.get("test_hop_s") or 0.4) / frame_shift)))
    drop = train_cfg.get("drop_short")
    return Segmenting(window, train_hop, test_hop, True if drop is None else bool(drop))


def segment_starts(n_frames: int, window: int, hop: int, drop_short: bool) -> list[int]:
    """Window start frames: full windows only (trailing partial window dropped, as the paper's code).

    An utterance of ≤ ``window`` frames gives no window when ``drop_short`` (the paper drops utterances of
    ≤ 2 s), else one window at 0 (padded by the collate).

    >>> segment_starts(10, 4, 2, True), segment_starts(4, 4, 2, True), segment_starts(3, 4, 2, False)
    ([0, 2, 4, 6], [], [0])
    """
    if n_frames <= window:
        return [] if drop_short else [0]
    return list(range(0, n_frames - window + 1, hop))


# ----------------------------------------------------------------------------------------------- noise


def add_power_noise_db(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``snr_db`` added to a dB-scaled (``power_to_db``) spectrogram ``x`` (T, F) → (T, F).

    See the module docstring: an approximation of waveform white noise in the feature domain.
    """
    if x.size == 0:
        return x
    power = np.power(10.0, x.astype(np.float64) / 10.0)
    noise_level = power.mean() / (10.0 ** (snr_db / 10.0))
    noise = noise_level * rng.gamma(4.0, 0.25, size=x.shape)
    return (10.0 * np.log10(power + noise)).astype(np.float32)


# ----------------------------------------------------------------------------------------------- augmentation

#: keys of the ``augment`` train setting: SpecAugment masks (Park et al. 2019), a random start offset, and a
#: feature-domain speed perturbation — ``time_stretch``/``freq_warp`` in percent (10 = a factor drawn uniformly
#: from [0.9, 1.1]); ``freq_warp`` scales the feature axis, so it is meant for spectral inputs (log-Mel, filterbank)
AUGMENT_KEYS = ("time_masks", "time_width", "freq_masks", "freq_width", "shift", "time_stretch", "freq_warp")


def check_augment(aug: Mapping[str, Any] | None) -> dict[str, int] | None:
    """``augment`` setting → ints for every key (0 = off); unknown keys raise, naming them."""
    if not aug:
        return None
    unknown = sorted(set(aug) - set(AUGMENT_KEYS))
    if unknown:
        raise DataError(f"unknown augment key(s) {unknown}; known: {', '.join(AUGMENT_KEYS)}")
    return {k: int(aug.get(k) or 0) for k in AUGMENT_KEYS}


def spec_augment(x: np.ndarray, aug: Mapping[str, int], rng: np.random.Generator) -> np.ndarray:
    """Feature-domain speed perturbation (``time_stretch``: resample the time axis; ``freq_warp``: scale the
    feature axis, a VTLP-like warp), a random start offset, then time and frequency masks set to 0 (the
    training mean once inputs are normalised) on a (T, F) array → (T', F); T' = T − shift without a stretch.
    Layered (T, L, H) inputs are stretched and masked in time only.

    >>> a = np.ones((50, 8), np.float32)
    >>> b = spec_augment(a, {"time_masks": 1, "time_width": 5, "freq_masks": 1, "freq_width": 2, "shift": 0},
    ...                  np.random.default_rng(0))
    >>> b.shape, bool(b.min() == 0.0), bool(a.min() == 1.0)
    ((50, 8), True, True)
    >>> spec_augment(a, {**dict.fromkeys(AUGMENT_KEYS, 0), "time_stretch": 20}, np.random.default_rng(0)).shape
    (47, 8)
    """
    if x.shape[0] == 0:
        return x
    if aug.get("time_stretch") and x.shape[0] > 1:
        r = 1.0 + rng.uniform(-1.0, 1.0) * aug["time_stretch"] / 100.0
        x = _resample_axis(x, np.linspace(0.0, x.shape[0] - 1, max(2, round(x.shape[0] / r))), axis=0)
    if aug.get("freq_warp") and x.ndim == 2 and x.shape[1] > 1:
        a = 1.0 + rng.uniform(-1.0, 1.0) * aug["freq_warp"] / 100.0
        x = _resample_axis(x, np.clip(np.arange(x.shape[1]) / a, 0.0, x.shape[1] - 1), axis=1)
    if aug["shift"] and x.shape[0] > 1:
        x = x[int(rng.integers(0, min(aug["shift"], x.shape[0] - 1) + 1)):]
    x = x.copy()
    T = x.shape[0]
    for _ in range(aug["time_masks"]):
        w = int(rng.integers(0, min(aug["time_width"], T) + 1))
        t0 = int(rng.integers(0, T - w + 1))
        x[t0 : t0 + w] = 0.0
    if x.ndim == 2:
        F = x.shape[1]
        for _ in range(aug["freq_masks"]):
            w = int(rng.integers(0, min(aug["freq_width"], F) + 1))
            f0 = int(rng.integers(0, F - w + 1))
            x[:, f0 : f0 + w] = 0.0
    return x


def _resample_axis(x: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``x`` at fractional ``positions`` along ``axis`` (0 ≤ positions ≤ n − 1)."""
    lo = np.floor(positions).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    w = (positions - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return (np.take(x, lo, axis=axis) * (1.0 - w) + np.take(x, hi, axis=axis) * w).astype(np.float32)


# ----------------------------------------------------------------------------------------------- normalisation

NORMALIZE_MODES = (None, "none", "fold", "utterance", "speaker")  # "none" switches a model's default off
#: a speaker's own statistics need at least this many of its utterances (else the fold statistics are used)
MIN_SPEAKER_UTTS = 2


@dataclass
class Normalizer:
    """Input standardisation ``(x − mean) / std`` per feature dimension, applied before padding.

    ``mode="fold"``: mean/std of every dimension over all frames (sequences) or utterances (vectors) of the
    fold's *training* split — the usual practice; the statistics belong to the fold (saved with its checkpoint).
    ``mode="utterance"``: sequences are standardised with their own mean/std over time (CMVN); vectors, which
    have no time axis, use the fold statistics. ``mode="speaker"``: every utterance is standardised with its
    speaker's statistics (all that speaker's utterances, labels unused — for a test speaker its own unlabelled
    audio: the speaker normalisation of speaker-independent SER); a speaker with fewer than
    :data:`MIN_SPEAKER_UTTS` utterances, or an unknown one, gets the fold statistics. Phoneme ids are never
    touched. Stacked layers ``(T, L, H)`` get statistics per (layer, dimension).
    """

    mode: str
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    eps: float = 1e-5
    #: ``mode="speaker"``: utterance id → speaker, and (input key, speaker) → (mean, std)
    speaker_of: dict[str, str] = field(default_factory=dict)
    speaker_stats: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __call__(self, key: str, a: np.ndarray, kind: str, utt_id: str | None = None) -> np.ndarray:
        if kind == "sequence" and self.mode == "utterance":
            if len(a) == 0:
                return a
            return ((a - a.mean(axis=0)) / (a.std(axis=0) + self.eps)).astype(np.float32)
        stats = self.stats.get(key)
        if self.mode == "speaker" and utt_id is not None:
            stats = self.speaker_stats.get((key, self.speaker_of.get(utt_id, "")), stats)
        if stats is None:
            return a
        mean, std = stats
        return ((a - mean) / std).astype(np.float32)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{"<key>.mean": tensor, "<key>.std": tensor}`` of the fold statistics (for safetensors next to
        the fold's weights; speaker statistics belong to the corpus's speakers and are recomputed)."""
        out = {}
        for k, (m, sd) in self.stats.items():
            out[f"{k}.mean"], out[f"{k}.std"] = torch.from_numpy(m.copy()), torch.from_numpy(sd.copy())
        return out


def _moments(readers: Mapping[str, FeatureReader], view: InputView,
             utt_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) per dimension over every frame (vector) of ``utt_ids``, float64 sums one utterance at a time."""
    total = total_sq = None
    count = 0
    for u in utt_ids:
        a = np.asarray(readers[view.feature][u], dtype=np.float64)
        a = reduce_layers(a, view.layer_reduce) if view.kind == "sequence" else a.reshape(1, -1)
        if total is None:
            total, total_sq = np.zeros(a.shape[1:]), np.zeros(a.shape[1:])
        total += a.sum(axis=0)
        total_sq += np.square(a).sum(axis=0)
        count += len(a)
    if not count:
        return None
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0)) + 1e-5
    return mean.astype(np.float32), std.astype(np.float32)


def _normalised(view: InputView, mode: str) -> bool:
    return view.kind != "phonemes" and not (view.kind == "sequence" and mode == "utterance")


def add_speaker_stats(norm: Normalizer, readers: Mapping[str, FeatureReader], views: Mapping[str, InputView],
                      speaker_of: Mapping[str, str]) -> Normalizer:
    """``norm`` with each speaker's statistics over its utterances in ``speaker_of`` (utterance → speaker)."""
    by_speaker: dict[str, list[str]] = {}
    for u, s in speaker_of.items():
        by_speaker.setdefault(str(s), []).append(str(u))
    for key, view in views.items():
        if not _normalised(view, norm.mode):
            continue
        for s, ids in by_speaker.items():
            if len(ids) >= MIN_SPEAKER_UTTS and (m := _moments(readers, view, ids)) is not None:
                norm.speaker_stats[(key, s)] = m
    norm.speaker_of.update({str(u): str(s) for u, s in speaker_of.items()})
    return norm


def fit_normalizer(mode: str | None, readers: Mapping[str, FeatureReader], views: Mapping[str, InputView],
                   utt_ids: Sequence[str], speaker_of: Mapping[str, str] | None = None) -> Normalizer | None:
    """Training-split statistics for ``mode`` (see :class:`Normalizer`); None when ``mode`` is None.
    ``mode="speaker"`` also needs ``speaker_of`` (utterance → speaker for every utterance the fold reads).

    Sums run in float64 one utterance at a time, so memory stays at one utterance whatever the corpus size.
    """
    if mode not in NORMALIZE_MODES:
        raise DataError(f"train setting normalize must be null, 'fold', 'utterance' or 'speaker', got {mode!r}")
    if mode in (None, "none"):
        return None
    if mode == "speaker" and not speaker_of:
        raise DataError("train setting normalize: speaker needs the speaker of every utterance (the manifest's "
                        "`speaker` column); use normalize: fold for a corpus without speakers")
    stats = {key: m for key, view in views.items()
             if _normalised(view, mode) and (m := _moments(readers, view, utt_ids)) is not None}
    norm = Normalizer(mode, stats)
    return add_speaker_stats(norm, readers, views, speaker_of) if mode == "speaker" else norm


# ----------------------------------------------------------------------------------------------- datasets


@dataclass
class Item:
    utt_id: str
    start: int | None = None  # window start frame (segmented datasets)


@dataclass
class FeatureDataset(Dataset):
    """Items of one split: ``dict(key → np.ndarray, "label" → int, "index" → int)`` (and ``"target"`` → the
    utterance's ``(K,)`` float32 V/A/D row, NaN = unannotated, when ``targets`` ``(n_utts, K)`` is given).

    ``items``: one per utterance, or one per window when segmented; ``utt_index`` maps each item to its
    utterance's position in ``utt_ids`` (for per-utterance averaging). Readers open lazily in each DataLoader
    worker. ``noise``: ``(snr_db, per_epoch)`` or None — per_epoch False gives the same noise every epoch.
    """

    readers: dict[str, FeatureReader]
    views: dict[str, InputView]
    utt_ids: list[str]
    labels: list[int]
    segmenting: Segmenting | None = None
    split: str = "train"
    targets: np.ndarray | None = None
    noise_snr_db: float | None = None
    #: fraction of train/validation items that get the noise (1.0: every item; 0.5: the paper's "augment with
    #: noisy copies" in expectation — clean and noisy items, as the clean test split is); drawn per item
    noise_prob: float = 1.0
    seed: int = 0
    normalizer: Normalizer | None = None
    #: SpecAugment-style masks + random start offset on the train split (see :func:`spec_augment`); None = off
    augment: Mapping[str, int] | None = None
    #: keep every array read (after layer reduction) in memory: later epochs skip HDF5 reads and dtype
    #: conversion (same values; costs the split's size in RAM — for small corpora and stacked encoder layers)
    cache_in_memory: bool = False
    #: ``train.distill``: per-utterance teacher probabilities ``(n_utts, C)`` (train split only), batched as ``soft``
    soft_targets: np.ndarray | None = None
    items: list[Item] = field(default_factory=list)
    utt_index: list[int] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    epoch: int = 0

    def __post_init__(self) -> None:
        if len(self.utt_ids) != len(self.labels):
            raise ValueError("utt_ids and labels differ in length")
        if self.targets is not None and len(self.targets) != len(self.utt_ids):
            raise ValueError("utt_ids and targets differ in length")
        for view in self.views.values():
            if view.feature not in self.readers:
                raise DataError(f"no reader for feature {view.feature!r} (input {view.key!r})")
        missing = {
            f: [u for u in self.utt_ids if u not in r] for f, r in self.readers.items() if f in self._features()
        }
        missing = {f: m for f, m in missing.items() if m}
        if missing:
            f, m = next(iter(missing.items()))
            raise DataError(
                f"{self.readers[f].path}: {len(m)} utterance(s) of the {self.split} split are missing "
                f"(e.g. {m[:3]}); re-run `dvc repro extract@{f}` for the current manifest"
            )
        self.items, self.utt_index, self.dropped = [], [], []
        if self.segmenting is None:
            for i, u in enumerate(self.utt_ids):
                self.items.append(Item(u))
                self.utt_index.append(i)
            return
        seq_views = [v for v in self.views.values() if v.kind == "sequence"]
        if not seq_views:
            raise DataError("segmentation needs a sequence input")
        ref = seq_views[0]
        hop = self.segmenting.train_hop if self.split == "train" else self.segmenting.test_hop
        h5 = self.readers[ref.feature]._utts()  # shapes only: no array read
        for i, u in enumerate(self.utt_ids):
            starts = segment_starts(h5[u].shape[0], self.segmenting.window, hop, self.segmenting.drop_short)
            if not starts:
                self.dropped.append(u)
            for s in starts:
                self.items.append(Item(u, s))
                self.utt_index.append(i)

    def _features(self) -> set[str]:
        return {v.feature for v in self.views.values()}

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the dataset pickled: never ship the in-memory cache (each worker builds its own)
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def _sequence(self, view: InputView, utt_id: str) -> np.ndarray:
        """The stored array of ``utt_id`` for a sequence view, layers reduced, float32 (cached when asked)."""
        if self.cache_in_memory:
            cache = self.__dict__.setdefault("_cache", {})
            hit = cache.get((view.key, utt_id))
            if hit is not None:
                return hit
        a = reduce_layers(np.asarray(self.readers[view.feature][utt_id]), view.layer_reduce)
        a = a.astype(np.float32, copy=False)
        if self.cache_in_memory:
            a.setflags(write=False)  # shared across epochs: augmentation and normalisation make copies
            cache[(view.key, utt_id)] = a
        return a

    def set_epoch(self, epoch: int) -> None:
        """Training noise differs per epoch (seeded by seed, epoch, item); call before each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        out: dict[str, Any] = {"label": self.labels[self.utt_index[i]], "index": i}
        if self.targets is not None:  # a window carries its utterance's targets
            out["target"] = self.targets[self.utt_index[i]]
        if self.soft_targets is not None:
            out["soft"] = self.soft_targets[self.utt_index[i]]
        for key, view in self.views.items():
            if view.kind == "sequence":
                a = self._sequence(view, item.utt_id)
                if item.start is not None and self.segmenting is not None:
                    a = a[item.start : item.start + self.segmenting.window]
                if view.max_len is not None:
                    a = a[: view.max_len]
                augmenting = bool(self.augment) and self.split == "train"
                if view.fixed_len is not None and not augmenting:
                    a = a[: view.fixed_len]
                if self.noise_snr_db is not None and self.split in ("train", "val"):
                    epoch = self.epoch if self.split == "train" else -1
                    rng = np.random.default_rng(stable_seed(self.seed, self.split, epoch, i, key))
                    if self.noise_prob >= 1.0 or rng.random() < self.noise_prob:
                        a = add_power_noise_db(a, float(self.noise_snr_db), rng)
                if self.normalizer is not None:
                    a = self.normalizer(key, a, "sequence", item.utt_id)
                if augmenting:
                    # after normalisation (masks = the training mean) and before the fixed-length cut (the
                    # shift brings frames beyond fixed_len into view); seeded per (epoch, item): resumable
                    rng = np.random.default_rng(stable_seed(self.seed, "augment", self.epoch, i, key))
                    a = spec_augment(a, self.augment, rng)
                    if view.fixed_len is not None:
                        a = a[: view.fixed_len]
            elif view.kind == "vector":
                a = np.asarray(self.readers[view.feature][item.utt_id]).astype(np.float32, copy=False).reshape(-1)
                if self.normalizer is not None:
                    a = self.normalizer(key, a, "vector", item.utt_id)
            elif view.kind == "phonemes":
                a = np.asarray(self.readers[view.feature][item.utt_id]).astype(np.int64, copy=False)
                if a.ndim != 2:
                    raise DataError(f"{self.readers[view.feature].path}: {item.utt_id} phonemes must be (words, phones)")
            else:
                raise DataError(f"unknown input kind {view.kind!r} for input {key!r}")
            out[key] = a
        return out


def collate(items: Sequence[dict[str, Any]], views: Mapping[str, InputView], segment_len: int | None = None) -> dict[str, torch.Tensor]:
    """Stack items into a batch: sequences ``(B, T, D)`` float + ``<mask_key>`` bool ``(B, T)`` True = pad;
    vectors ``(B, D)``; phonemes ``(B, W, P)`` long (0 = pad) + word mask ``(B, W)``; ``label``/``index`` ``(B,)``;
    ``target`` ``(B, K)`` float (NaN = unannotated) when the items carry one.

    ``T`` is the batch maximum, or the view's ``fixed_len`` / ``segment_len`` when set.
    """
    batch: dict[str, torch.Tensor] = {
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }
    for key in ("target", "soft"):
        if key in items[0]:
            batch[key] = torch.from_numpy(np.stack([it[key] for it in items]).astype(np.float32))
    B = len(items)
    for key, view in views.items():
        arrays = [it[key] for it in items]
        if view.kind == "vector":
            batch[key] = torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False))
            continue
        if view.kind == "sequence":
            inner = arrays[0].shape[1:]  # (D,) or (L, H) when the layer axis is kept
            lengths = [max(len(a), 1) for a in arrays]  # empty → one zero step, unmasked
            T = view.fixed_len or segment_len or max(lengths)
            x = np.zeros((B, T, *inner), np.float32)
            mask = np.ones((B, T), bool)
            for b, a in enumerate(arrays):
                n = min(len(a), T)
                x[b, :n] = a[:n]
                mask[b, : max(n, 1)] = False
            batch[key] = torch.from_numpy(x)
        else:  # phonemes
            W = max(max(a.shape[0] for a in arrays), 1)
            P = max(max((a.shape[1] for a in arrays if a.size), default=1), 1)
            x = np.zeros((B, W, P), np.int64)
            mask = np.ones((B, W), bool)
            for b, a in enumerate(arrays):
                x[b, : a.shape[0], : a.shape[1]] = a
                mask[b, : max(a.shape[0], 1)] = False
            batch[key] = torch.from_numpy(x)
        if view.mask_key:
            m = torch.from_numpy(mask)
            # two inputs may share a mask (multilevel: phonemes and glove → glove_mask); they must agree
            if view.mask_key in batch and not torch.equal(batch[view.mask_key], m):
                raise DataError(
                    f"inputs sharing the mask {view.mask_key!r} have different lengths (e.g. phonemes vs glove "
                    "words); re-extract both features with the same tokeniser"
                )
            batch[view.mask_key] = m
    return batch


class Collate:
    """Picklable collate_fn for DataLoader workers."""

    def __init__(self, views: Mapping[str, InputView], segment_len: int | None = None):
        self.views = dict(views)
        self.segment_len = segment_len

    def __call__(self, items):
        return collate(items, self.views, self.segment_len)


# ----------------------------------------------------------------------------------------------- folds


def split_of_fold(folds: pd.DataFrame, fold: int) -> dict[str, list[str]]:
    """``{"train", "val", "test"}`` → sorted utterance ids of ``fold`` in a fold-plan table."""
    rows = folds[folds["fold"] == fold]
    if rows.empty:
        raise DataError(f"fold {fold} is not in the fold plan (folds: {sorted(folds['fold'].unique().tolist())})")
    out = {s: sorted(rows.loc[rows["split"] == s, "utt_id"].astype(str)) for s in ("train", "val", "test")}
    for s in ("train", "test"):
        if not out[s]:
            raise DataError(f"fold {fold} has an empty {s} split; rebuild the fold plan")
    if not out["val"]:
        raise DataError(
            f"fold {fold} has no validation split: model selection needs one (never select on test); "
            "rebuild the fold plan with a validation split"
        )
    return out


#: the label of an utterance kept without one (``distill.unlabeled``: a teacher-only training item), and its
#: class id: PyTorch's ``ignore_index``
UNLABELED_LABEL = ""
UNLABELED = -100


def class_labels(manifest: pd.DataFrame, utt_ids: Iterable[str] | None = None) -> list[str]:
    """Sorted class names (of ``utt_ids`` when given; unlabeled utterances have none): the model's output order."""
    df = manifest if utt_ids is None else manifest[manifest["utt_id"].isin(set(utt_ids))]
    return sorted(set(df["label"].astype(str)) - {UNLABELED_LABEL})


def label_ids(manifest: pd.DataFrame, utt_ids: Sequence[str], labels: Sequence[str]) -> list[int]:
    """Class id of each utterance in ``labels`` order; :data:`UNLABELED` for one kept without a label."""
    lab = manifest.set_index("utt_id")["label"].astype(str)
    missing = [u for u in utt_ids if u not in lab.index]
    if missing:
        raise DataError(f"{len(missing)} fold-plan utterance(s) are not in the manifest (e.g. {missing[:3]}); "
                        "rebuild the fold plan from the current manifest")
    index = {c: i for i, c in enumerate(labels)}
    index[UNLABELED_LABEL] = UNLABELED
    return [index[lab[u]] for u in utt_ids]


__all__ = [
    "Collate",
    "DataError",
    "FeatureDataset",
    "InputView",
    "NORMALIZE_MODES",
    "Normalizer",
    "Segmenting",
    "StoreError",
    "UNLABELED",
    "UNLABELED_LABEL",
    "add_power_noise_db",
    "class_labels",
    "collate",
    "feature_frame_shift",
    "fit_normalizer",
    "add_speaker_stats",
    "label_ids",
    "make_segmenting",
    "make_views",
    "open_readers",
    "reduce_layers",
    "resolve_dims",
    "segment_starts",
    "split_of_fold",
    "stable_seed",
]
