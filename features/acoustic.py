"""Hand-crafted acoustic feature sets: ``logmel40`` (paper A), ``fbank128`` (C), ``mfcc13`` (E), ``lld17`` (D).

Every extractor takes 16 kHz mono float32 ``(n,)`` (``features.audio.load_audio`` resamples and down-mixes; a
different rate raises) and returns float32 ``(frames, dim)``. Config defaults are the papers' values; every number
is a config field, overridable from ``params.yaml: features.<name>``.

Framing (all four sets; ``center`` is a config field, default ``True`` = librosa's default)

* ``center=True``: frame ``t`` is centred on sample ``t·hop`` (the signal is padded on both sides with
  ``pad_mode``: ``"constant"`` = zeros, librosa ≥ 0.10's default; ``"reflect"`` reproduces librosa < 0.10);
  ``frames = 1 + n // hop``, e.g. 7.5 s at hop 160 → 751 frames (the model's dataset cuts to 750). Audio shorter
  than one window still gives ≥ 1 frame.
* ``center=False``: frame ``t`` starts at sample ``t·hop``; ``frames = 1 + max(0, n − frame_length) // hop``
  where ``frame_length`` is ``n_fft`` for the librosa sets (librosa frames ``n_fft`` samples) and ``win_length``
  for ``lld17``. Audio shorter than one frame is zero-padded to one frame (1 frame, never 0).

``Extractor.n_frames(n_samples)`` returns this count; ``frame_shift`` is ``hop / 16000`` seconds.

``logmel40``/``fbank128``/``mfcc13`` give the numbers of ``librosa.feature.melspectrogram`` / ``librosa.feature.mfcc``
with the documented parameters (tests check ``np.allclose`` against calling librosa directly): librosa's window,
mel basis, ``power_to_db`` and DCT, with the STFT power computed frame-major in cache-sized blocks (~2–3× faster
than ``librosa.stft``, which spends its time on strided window products, not on the FFT). ``lld17`` frames the
signal itself so every descriptor, including the longer pitch window, sits on the same 5 ms grid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from features.base import Extractor, ExtractorConfig, register_extractor
from features.pitch import autocorr_pitch, pitch_lag_range

__all__ = [
    "LogMelConfig",
    "FbankConfig",
    "MfccConfig",
    "Lld17Config",
    "LogMel",
    "Fbank",
    "Mfcc",
    "Lld17",
    "LLD17_COLUMNS",
    "MelProjection",
    "count_frames",
    "frame_signal",
    "mel_power",
    "validate_waveform",
]

SAMPLE_RATE = 16000
#: Samples per batched-FFT block (frames × n_fft): ~512 KB of float32, so a block's arrays stay in L2 cache.
_BLOCK_SAMPLES = 1 << 17


# --------------------------------------------------------------------------------------------------------------
# shared helpers (pure)
# --------------------------------------------------------------------------------------------------------------
def validate_waveform(waveform: Any, sample_rate: int, name: str, expected_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Check and convert an extractor's input to contiguous float32 ``(n,)``; raise a ValueError that says what to do."""
    if sample_rate != expected_rate:
        raise ValueError(
            f"{name}: got audio at {sample_rate} Hz but this extractor needs {expected_rate} Hz mono; load it with "
            f"features.audio.load_audio (which resamples and down-mixes) instead of passing raw file samples"
        )
    y = np.asarray(waveform)
    if y.ndim != 1:
        raise ValueError(
            f"{name}: waveform must be 1-D mono (n,), got shape {y.shape}; down-mix with features.audio.load_audio"
        )
    if y.shape[0] == 0:
        raise ValueError(f"{name}: waveform is empty (0 samples); drop the utterance from the manifest")
    y = np.ascontiguousarray(y, dtype=np.float32)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name}: waveform contains NaN/inf samples; re-export the audio as PCM and retry")
    return y


def count_frames(n_samples: int, frame_length: int, hop_length: int, center: bool) -> int:
    """Number of frames for ``n_samples`` under the module's framing rule (always ≥ 1 for ``n_samples ≥ 1``)."""
    if center:
        return 1 + n_samples // hop_length
    return 1 + max(0, n_samples - frame_length) // hop_length


def frame_signal(
    y: np.ndarray, length: int, hop_length: int, n_frames: int, first_centre: int, pad_mode: str = "constant"
) -> np.ndarray:
    """Read-only strided view ``(n_frames, length)``: frame ``t`` covers samples
    ``[c_t − length//2, c_t − length//2 + length)`` with ``c_t = first_centre + t·hop``; outside ``y`` is filled by
    ``np.pad(mode=pad_mode)`` (``"constant"``: zeros)."""
    start0 = first_centre - length // 2
    last_end = start0 + (n_frames - 1) * hop_length + length
    left = max(0, -start0)
    right = max(0, last_end - y.shape[0])
    padded = np.pad(y, (left, right), mode=pad_mode) if (left or right) else y
    view = sliding_window_view(padded, length)
    return view[start0 + left :: hop_length][:n_frames]


def _check_positive(name: str, **values: float | int | None) -> None:
    for key, v in values.items():
        # a string from params.yaml ("forty") would otherwise fail later with a bare TypeError
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise ValueError(f"features.{name}.{key} must be a number > 0, got {v!r} (fix params.yaml: features.{name})")


def _fit_length(y: np.ndarray, frame_length: int, center: bool) -> np.ndarray:
    # librosa refuses center=False input shorter than n_fft; pad to one frame (documented: 1 frame, never 0).
    if not center and y.shape[0] < frame_length:
        return np.pad(y, (0, frame_length - y.shape[0]))
    return y


class MelProjection:
    """``power @ basis_t`` for a mel basis ``(n_bins, n_mels)``, done band-wise: each group of 16 adjacent mel
    filters only touches the FFT bins under its triangles, so the product skips the basis's zeros (5× fewer
    multiply-adds for 128 bands on a 2048-point FFT) and gives the dense product's values."""

    def __init__(self, basis_t: np.ndarray, group: int = 16):
        basis_t = np.asarray(basis_t, dtype=np.float32)
        self.n_bins, self.n_mels = basis_t.shape
        self.groups: list[tuple[int, int, int, int, np.ndarray]] = []
        for j0 in range(0, self.n_mels, group):
            j1 = min(self.n_mels, j0 + group)
            rows = np.nonzero(np.any(basis_t[:, j0:j1] != 0, axis=1))[0]
            lo, hi = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
            self.groups.append((j0, j1, lo, hi, np.ascontiguousarray(basis_t[lo:hi, j0:j1])))

    def __call__(self, power: np.ndarray, out: np.ndarray) -> np.ndarray:
        for j0, j1, lo, hi, w in self.groups:
            if hi > lo:
                out[:, j0:j1] = power[:, lo:hi] @ w
            else:  # an empty band (librosa warns about these): zero energy
                out[:, j0:j1] = 0.0
        return out


def mel_power(
    frames: np.ndarray, window: np.ndarray, n_fft: int, mel: MelProjection, power: float = 2.0
) -> np.ndarray:
    """``|rfft(frames · window, n_fft)|^power`` projected on ``mel``: ``(n_frames, L)`` → ``(n_frames, n_mels)``
    float32.

    The same numbers as ``librosa.feature.melspectrogram`` (tests check it), computed frame-major in cache-sized
    blocks: librosa's ``stft`` spends most of its time on strided window products and ``np.abs(S)**power``, not on
    the FFT.
    """
    n_frames, length = frames.shape
    out = np.empty((n_frames, mel.n_mels), np.float32)
    block = max(32, _BLOCK_SAMPLES // n_fft)
    buf = np.zeros((min(block, n_frames), n_fft), np.float32)  # zero tail: the FFT's padding, written once
    for s in range(0, n_frames, block):
        nb = min(block, n_frames - s)
        np.multiply(frames[s : s + nb], window, out=buf[:nb, :length])
        spec = scipy.fft.rfft(buf[:nb], axis=1)
        p = spec.real**2 + spec.imag**2
        if power != 2.0:
            p = p ** (power / 2.0)
        mel(p, out[s : s + nb])
    return out


class _Cached:
    """Lazily built constant arrays (window, mel basis) kept out of pickles, so extractors stay small and
    stateless across the stage runner's worker processes."""

    def _const(self, key: str, build):
        cache = self.__dict__.setdefault("_consts", {})
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_consts"}


# --------------------------------------------------------------------------------------------------------------
# log-Mel family (librosa)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class LogMelConfig(ExtractorConfig):
    """``logmel40`` (paper A): ``librosa.power_to_db(librosa.feature.melspectrogram(...))``, librosa defaults
    except the 25 ms / 10 ms framing and 40 bands. ``log="ln"`` gives ``ln(max(S, amin))`` instead (fbank style)."""

    n_mels: int = 40
    n_fft: int = 400
    win_length: int | None = 400  #: None → n_fft
    hop_length: int = 160
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    power: float = 2.0
    fmin: float = 0.0
    fmax: float | None = None  #: None → sr / 2
    htk: bool = False  #: False = Slaney mel scale (librosa default)
    norm: str | None = "slaney"
    log: str = "db"  #: "db": power_to_db(S, ref, amin, top_db); "ln": natural log(max(S, amin))
    ref: float = 1.0
    amin: float = 1e-10
    top_db: float | None = 80.0  #: librosa's default clipping (relative to the utterance's max); None = off


@dataclass
class FbankConfig(LogMelConfig):
    """``fbank128`` (paper C): 128-band log-Mel filterbank, 25 ms Hann window zero-padded to a 512-point FFT,
    12 ms hop (192), natural log floored at ``amin`` (Kaldi-style fbank values, no utterance-relative clipping).
    Slaney mel scale: the HTK scale leaves empty low bands at 128 bands / 512 points."""

    n_mels: int = 128
    n_fft: int = 512
    win_length: int | None = 400
    hop_length: int = 192
    log: str = "ln"
    top_db: float | None = None


def _check_librosa_framing(name: str, c: Any) -> None:
    _check_positive(name, n_fft=c.n_fft, win_length=c.win_length, hop_length=c.hop_length, n_mels=c.n_mels,
                    power=c.power)
    if c.n_fft % 2:
        raise ValueError(f"features.{name}.n_fft must be even, got {c.n_fft}")
    if c.win_length is not None and c.win_length > c.n_fft:
        raise ValueError(f"features.{name}: win_length ({c.win_length}) must be <= n_fft ({c.n_fft})")
    if c.pad_mode not in ("constant", "reflect", "edge", "symmetric", "wrap"):
        raise ValueError(f"features.{name}.pad_mode {c.pad_mode!r} is not an np.pad mode librosa accepts")


class _LibrosaFramed(_Cached, Extractor):
    """Shared librosa-style STFT → mel power (``n_fft``-sample frames, window ``win_length`` centred in them)."""

    version = "1"

    @property
    def frame_shift(self) -> float:
        return self.config.hop_length / self.sample_rate

    def n_frames(self, n_samples: int) -> int:
        return count_frames(n_samples, self.config.n_fft, self.config.hop_length, self.config.center)

    def _mel_spectrogram(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """``librosa.feature.melspectrogram(...)`` transposed: ``(frames, n_mels)`` float32."""
        import librosa

        c = self.config
        y = _fit_length(validate_waveform(waveform, sample_rate, self.name), c.n_fft, c.center)
        win = c.win_length or c.n_fft

        def build_window() -> np.ndarray:
            return librosa.filters.get_window(c.window, win, fftbins=True).astype(np.float32)

        def build_basis() -> np.ndarray:
            fb = librosa.filters.mel(sr=self.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin,
                                     fmax=c.fmax, htk=c.htk, norm=c.norm)
            return MelProjection(fb.T)

        n = self.n_frames(y.shape[0])
        frames = frame_signal(y, win, c.hop_length, n, 0 if c.center else c.n_fft // 2, c.pad_mode)
        return mel_power(frames, self._const("window", build_window), c.n_fft, self._const("basis", build_basis),
                         c.power)


class _MelBase(_LibrosaFramed):
    Config = LogMelConfig

    def __init__(self, config: LogMelConfig | None = None):
        super().__init__(config)
        c = self.config
        _check_librosa_framing(self.name, c)
        _check_positive(self.name, amin=c.amin)
        if c.log not in ("db", "ln"):
            raise ValueError(f"features.{self.name}.log must be 'db' or 'ln', got {c.log!r}")

    @property
    def dim(self) -> int:
        return self.config.n_mels

    def extract(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """``(n,)`` 16 kHz → ``(n_frames(n), n_mels)`` float32."""
        import librosa

        c = self.config
        S = self._mel_spectrogram(waveform, sample_rate)
        if c.log == "db":
            S = librosa.power_to_db(S, ref=c.ref, amin=c.amin, top_db=c.top_db)
        else:
            S = np.log(np.maximum(S, c.amin))
        return np.ascontiguousarray(S, dtype=np.float32)


@register_extractor("logmel40")
class LogMel(_MelBase):
    """Paper A's log-Mel spectrogram (40 bands, 400/160, dB). Output ``(1 + n // 160, 40)`` float32."""

    Config = LogMelConfig


@register_extractor("fbank128")
class Fbank(_MelBase):
    """Paper C's 128-band log filterbank (window 400 in a 512 FFT, hop 192, ln). Output ``(1 + n // 192, 128)``."""

    Config = FbankConfig


# --------------------------------------------------------------------------------------------------------------
# MFCC (librosa)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class MfccConfig(ExtractorConfig):
    """``mfcc13`` (paper E): ``librosa.feature.mfcc(y, sr=16000, n_mfcc=13, n_fft=2048, hop_length=512)`` with a
    Hann window and otherwise librosa defaults (128 Slaney mel bands, power_to_db with top_db=80, DCT-II ortho).

    The authors' code variant is 26 coefficients with librosa defaults: set ``n_mfcc: 26`` (librosa's default
    ``n_fft``/``hop_length`` are already 2048/512)."""

    n_mfcc: int = 13
    n_fft: int = 2048
    win_length: int | None = None  #: None → n_fft
    hop_length: int = 512
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    power: float = 2.0
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    htk: bool = False
    norm: str | None = "slaney"  #: mel filter normalisation
    top_db: float | None = 80.0
    dct_type: int = 2
    dct_norm: str | None = "ortho"
    lifter: float = 0.0


@register_extractor("mfcc13")
class Mfcc(_LibrosaFramed):
    """Paper E's MFCCs. Output ``(1 + n // 512, n_mfcc)`` float32 (centre framing)."""

    Config = MfccConfig

    def __init__(self, config: MfccConfig | None = None):
        super().__init__(config)
        c = self.config
        _check_librosa_framing(self.name, c)
        _check_positive(self.name, n_mfcc=c.n_mfcc)
        if c.n_mfcc > c.n_mels:
            raise ValueError(f"features.{self.name}: n_mfcc ({c.n_mfcc}) must be <= n_mels ({c.n_mels})")

    @property
    def dim(self) -> int:
        return self.config.n_mfcc

    def extract(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """``(n,)`` 16 kHz → ``(n_frames(n), n_mfcc)`` float32 = ``librosa.feature.mfcc(y=...).T``."""
        import librosa

        c = self.config
        S = librosa.power_to_db(self._mel_spectrogram(waveform, sample_rate), top_db=c.top_db)
        M = librosa.feature.mfcc(S=S.T, n_mfcc=c.n_mfcc, dct_type=c.dct_type, norm=c.dct_norm, lifter=c.lifter)
        return np.ascontiguousarray(M.T, dtype=np.float32)


# --------------------------------------------------------------------------------------------------------------
# lld17: ComParE-style low-level descriptors (paper D)
# --------------------------------------------------------------------------------------------------------------
LLD17_COLUMNS: tuple[str, ...] = (
    *(f"mfcc{i}" for i in range(1, 13)),
    "log_energy",
    "voicing_prob",
    "hnr_db",
    "log_f0",
    "zcr",
)


@dataclass
class Lld17Config(ExtractorConfig):
    """``lld17`` (paper D): 25 ms window, 5 ms shift; columns ``LLD17_COLUMNS`` (c1–c12, log energy, voicing
    probability, HNR dB, log F0, ZCR). Lengths in samples at 16 kHz."""

    win_length: int = 400  #: 25 ms
    hop_length: int = 80  #: 5 ms
    center: bool = True
    # MFCC (HTK/openSMILE conventions)
    preemphasis: float = 0.97  #: y[n] − k·y[n−1] on the whole signal, MFCC only (0 = off)
    window: str = "hamming"
    n_fft: int = 512  #: window zero-padded to this FFT size
    n_mels: int = 26
    fmin: float = 0.0
    fmax: float | None = None  #: None → 8000
    htk: bool = True  #: HTK mel scale, unnormalised triangles
    n_mfcc: int = 12  #: c1..c_n (c0 dropped: log energy is its own column)
    lifter: int = 22  #: HTK cepstral liftering 1 + L/2·sin(π·i/L); 0 = off
    mel_floor: float = 1e-8
    # energy
    energy_floor: float = 1e-10  #: log energy = ln(max(mean(x²), floor)) over the raw (rectangular) frame
    # pitch / voicing / HNR (features.pitch)
    f0_min: float = 60.0
    f0_max: float = 600.0
    pitch_win_length: int = 800  #: 50 ms = 3 periods of f0_min, centred on the same 5 ms grid
    octave_cost: float = 0.01
    voicing_threshold: float = 0.45
    silence_threshold: float = 0.03  #: frame peak below this × utterance peak → silent (unvoiced, voicing 0)
    unvoiced_log_f0: float = 0.0  #: log F0 value of unvoiced frames
    hnr_min_db: float = -20.0
    hnr_max_db: float = 40.0


@register_extractor("lld17")
class Lld17(_Cached, Extractor):
    """Paper D's 17 frame-level LLDs on a 5 ms grid. Output ``(frames, 12 + 5)`` float32, columns
    ``LLD17_COLUMNS``:

    * ``mfcc1..12``: pre-emphasis 0.97, Hamming 25 ms in a 512 FFT, power spectrum, 26 HTK mel bands 0–8 kHz,
      ``ln(max(mel, 1e-8))``, DCT-II (orthonormal = HTK scaling for c≥1), HTK lifter 22.
    * ``log_energy``: ``ln(max(mean(x²), 1e-10))`` of the raw 25 ms frame (≈ −23 for silence).
    * ``voicing_prob``, ``hnr_db``, ``log_f0``: Boersma (1993) window-corrected normalised autocorrelation over a
      50 ms Hann window centred on the frame (see ``features.pitch``); ``hnr_db = 10·log10(r/(1−r))`` clipped to
      [−20, 40] dB; ``log_f0 = ln(F0 / Hz)`` where voiced (voicing ≥ 0.45 and not silent), else 0.
    * ``zcr``: zero crossings inside the 25 ms frame / 400 (crossings per sample; 0 counts as positive, as in
      librosa), so a tone of ``f`` Hz gives ``2f/16000``.
    """

    Config = Lld17Config
    version = "1"

    def __init__(self, config: Lld17Config | None = None):
        super().__init__(config)
        c = self.config
        _check_positive(self.name, win_length=c.win_length, hop_length=c.hop_length, n_fft=c.n_fft,
                        n_mels=c.n_mels, n_mfcc=c.n_mfcc, pitch_win_length=c.pitch_win_length,
                        f0_min=c.f0_min, f0_max=c.f0_max, mel_floor=c.mel_floor, energy_floor=c.energy_floor)
        if c.win_length > c.n_fft:
            raise ValueError(f"features.{self.name}: win_length ({c.win_length}) must be <= n_fft ({c.n_fft})")
        if c.n_mfcc >= c.n_mels:
            raise ValueError(f"features.{self.name}: n_mfcc ({c.n_mfcc}) must be < n_mels ({c.n_mels})")
        if not c.f0_min < c.f0_max:
            raise ValueError(f"features.{self.name}: f0_min ({c.f0_min}) must be < f0_max ({c.f0_max})")
        lag_min, lag_max = pitch_lag_range(self.sample_rate, c.f0_min, c.f0_max)
        if lag_min < 2:
            raise ValueError(f"features.{self.name}: f0_max ({c.f0_max} Hz) must be <= {self.sample_rate // 2} Hz")
        if 2 * lag_max > c.pitch_win_length:
            raise ValueError(
                f"features.{self.name}: pitch_win_length ({c.pitch_win_length} samples) must hold two periods of "
                f"f0_min ({c.f0_min} Hz → {2 * lag_max} samples; three, {3 * lag_max}, recommended)"
            )
        if not c.hnr_min_db < c.hnr_max_db:
            raise ValueError(f"features.{self.name}: hnr_min_db must be < hnr_max_db")
        self._mfcc_constants()  # validates the mel layout now rather than at the first utterance

    @property
    def dim(self) -> int:
        return self.config.n_mfcc + 5

    @property
    def frame_shift(self) -> float:
        return self.config.hop_length / self.sample_rate

    @property
    def columns(self) -> tuple[str, ...]:
        return (*(f"mfcc{i}" for i in range(1, self.config.n_mfcc + 1)), *LLD17_COLUMNS[12:])

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "columns": list(self.columns)}

    def n_frames(self, n_samples: int) -> int:
        return count_frames(n_samples, self.config.win_length, self.config.hop_length, self.config.center)

    def _mfcc_constants(self) -> tuple[np.ndarray, MelProjection, np.ndarray]:
        """Window ``(win,)``, mel projection (``n_fft//2+1`` bins → ``n_mels``) and liftered DCT ``(n_mels, n_mfcc)``."""

        def build():
            import librosa

            c = self.config
            window = librosa.filters.get_window(c.window, c.win_length, fftbins=True).astype(np.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an empty mel band is a config error here, not a warning
                try:
                    melfb = librosa.filters.mel(sr=self.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin,
                                                fmax=c.fmax, htk=c.htk, norm=None)
                except UserWarning as e:
                    raise ValueError(
                        f"features.{self.name}: {c.n_mels} mel bands in a {c.n_fft}-point FFT leave empty bands "
                        f"({e}); lower n_mels or raise n_fft"
                    ) from None
            # DCT-II (orthonormal) rows 1..n_mfcc with the HTK lifter folded in: one (n_mels, n_mfcc) matmul.
            dct = scipy.fft.dct(np.eye(c.n_mels), type=2, norm="ortho", axis=0)[1 : c.n_mfcc + 1]
            i = np.arange(1, c.n_mfcc + 1)
            lift = 1.0 + (c.lifter / 2.0) * np.sin(np.pi * i / c.lifter) if c.lifter > 0 else np.ones(c.n_mfcc)
            return (window, MelProjection(melfb.T), np.ascontiguousarray((dct * lift[:, None]).T, dtype=np.float32))

        return self._const("mfcc", build)

    def extract(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """``(n,)`` 16 kHz → ``(frames, 17)`` float32, ``frames = 1 + n // 80`` with centre framing."""
        c = self.config
        y = validate_waveform(waveform, sample_rate, self.name)
        n_frames = self.n_frames(y.shape[0])
        first_centre = 0 if c.center else c.win_length // 2
        out = np.empty((n_frames, self.dim), np.float32)
        m = c.n_mfcc

        # MFCC c1..c12 on the pre-emphasised signal.
        window, mel_proj, dct_t = self._mfcc_constants()
        y_pe = y
        if c.preemphasis:
            y_pe = np.empty_like(y)
            y_pe[0] = y[0]
            np.subtract(y[1:], c.preemphasis * y[:-1], out=y_pe[1:])
        frames = frame_signal(y_pe, c.win_length, c.hop_length, n_frames, first_centre)
        mel = mel_power(frames, window, c.n_fft, mel_proj)
        out[:, :m] = np.log(np.maximum(mel, c.mel_floor)) @ dct_t

        # Log energy and ZCR from running sums over the raw signal (O(n), no per-frame loop).
        start0 = first_centre - c.win_length // 2
        pad_l = max(0, -start0)
        pad_r = max(0, start0 + (n_frames - 1) * c.hop_length + c.win_length - y.shape[0])
        yp = np.pad(y, (pad_l, pad_r))
        starts = start0 + pad_l + c.hop_length * np.arange(n_frames)
        csum = np.concatenate(([0.0], np.cumsum(yp.astype(np.float64) ** 2)))
        energy = (csum[starts + c.win_length] - csum[starts]) / c.win_length
        out[:, m] = np.log(np.maximum(energy, c.energy_floor))
        neg = np.signbit(yp)
        cross = np.concatenate(([0], np.cumsum(neg[1:] != neg[:-1])))  # cross[i] = crossings among yp[0..i]
        out[:, m + 4] = (cross[starts + c.win_length - 1] - cross[starts]) / c.win_length

        # F0 / voicing / HNR on a longer window centred on the same frame centres.
        pframes = frame_signal(y, c.pitch_win_length, c.hop_length, n_frames, first_centre)
        p = autocorr_pitch(
            pframes, self.sample_rate, f0_min=c.f0_min, f0_max=c.f0_max, octave_cost=c.octave_cost,
            voicing_threshold=c.voicing_threshold, silence_threshold=c.silence_threshold,
            global_peak=float(np.max(np.abs(y))), hnr_min_db=c.hnr_min_db, hnr_max_db=c.hnr_max_db,
        )
        out[:, m + 1] = p.voicing_prob
        out[:, m + 2] = p.hnr_db
        out[:, m + 3] = np.where(p.f0 > 0, np.log(np.maximum(p.f0, 1e-3)), c.unvoiced_log_f0)
        return out

