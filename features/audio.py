"""Reading audio: the one place where files become 16 kHz mono float32 arrays.

Resampling and down-mixing happen here and nowhere else, so every feature set sees the same waveform for the
same manifest row; the resampler and its quality are recorded in each feature file's provenance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from features.errors import ConfigError, EmoflowError


class AudioError(EmoflowError, ValueError):
    """Audio that cannot be used; the message names the file and what to do."""


#: librosa ``res_type`` values (soxr_* need the soxr package, a librosa dependency).
RES_TYPES = ("soxr_vhq", "soxr_hq", "soxr_mq", "soxr_lq", "soxr_qq", "kaiser_best", "kaiser_fast", "fft", "scipy",
             "polyphase", "linear", "zero_order_hold", "sinc_best", "sinc_medium", "sinc_fastest")


@dataclass(frozen=True, init=False)
class AudioConfig:
    """How files become waveforms (``params.yaml: extract.audio``). Unknown keys and bad values raise
    ``ValueError`` naming the key, at construction, before any file is read."""

    sample_rate: int = 16000
    #: librosa/soxr resampler quality: ``soxr_hq`` (default), ``soxr_vhq``, ``soxr_mq``, ``kaiser_best``...
    res_type: str = "soxr_hq"

    def __init__(self, sample_rate: int = 16000, res_type: str = "soxr_hq", **unknown):
        # A hand-written __init__ so that a typo in params.yaml (extract.audio.sample_rat) is a clear ValueError,
        # not a TypeError traceback from the generated one.
        if unknown:
            raise ConfigError(
                f"extract.audio: unknown key(s) {sorted(unknown)}; known keys are ['res_type', 'sample_rate'] "
                "(fix params.yaml: extract.audio)"
            )
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ConfigError(
                f"extract.audio.sample_rate must be a positive integer (Hz), got {sample_rate!r} "
                "(fix params.yaml: extract.audio.sample_rate)"
            )
        if res_type not in RES_TYPES:
            raise ConfigError(
                f"extract.audio.res_type {res_type!r} is not a librosa resampler; use one of {list(RES_TYPES)} "
                "(fix params.yaml: extract.audio.res_type)"
            )
        object.__setattr__(self, "sample_rate", sample_rate)
        object.__setattr__(self, "res_type", res_type)

    def to_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "res_type": self.res_type, "downmix": "mean"}


_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _truncated_bytes(info) -> tuple[int, int] | None:
    """``(declared, present)`` data bytes when libsndfile reports a WAV whose data chunk is cut short.

    libsndfile silently reads what is there (and even shrinks ``frames`` to match), so a half-copied file would
    otherwise give half an utterance. Streamed WAVs declare 0 or 0xFFFFFFFF bytes: not truncation."""
    m = _WAV_DATA_LOG.search(getattr(info, "extra_info", "") or "")
    if m is None:
        return None
    declared, present = int(m.group(1)), int(m.group(2))
    if 0 < declared < 0x7FFFFFFF and present < declared:
        return declared, present
    return None


def load_audio(
    path: str | Path,
    start: float | None = None,
    end: float | None = None,
    config: AudioConfig = AudioConfig(),
) -> np.ndarray:
    """Read ``path`` (optionally the segment ``[start, end)`` seconds) as mono float32 at ``config.sample_rate``.

    Raises :class:`AudioError` naming the file for a missing, empty, unreadable or non-finite file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found (check the manifest's path column / the corpus root)")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes); re-copy it from the corpus or drop it from the manifest")
    try:
        info = sf.info(str(path))
        sr = info.samplerate
        cut = _truncated_bytes(info)
        if cut is not None:
            raise AudioError(
                f"{path}: truncated file: its header declares {cut[0]} bytes of samples but only {cut[1]} are "
                "present (an interrupted copy/download?); re-copy it from the corpus or drop it from the manifest"
            )
        i0 = 0 if start is None or start != start else max(0, int(round(float(start) * sr)))
        i1 = -1 if end is None or end != end else int(round(float(end) * sr))
        if i1 != -1 and i1 <= i0:
            raise AudioError(f"{path}: segment [{start}, {end}] s is empty; fix start/end in the manifest")
        data, sr = sf.read(str(path), start=i0, stop=None if i1 == -1 else i1, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError with terse messages
        raise AudioError(
            f"{path}: cannot decode audio ({e}); the file is corrupt or not a supported audio format "
            "(WAV/FLAC/OGG) — re-export it or drop it from the manifest"
        ) from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no samples (zero-length audio); drop it from the manifest")
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"{path}: contains NaN/inf samples; re-export the file as PCM and retry")
    if sr != config.sample_rate:
        import librosa

        wav = librosa.resample(wav, orig_sr=sr, target_sr=config.sample_rate, res_type=config.res_type)
    return np.ascontiguousarray(wav, dtype=np.float32)
