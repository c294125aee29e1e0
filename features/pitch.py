"""Frame-vectorised F0, voicing probability and HNR (Boersma 1993 normalised autocorrelation).

Pure numpy/scipy: ``(frames, L)`` windows in, per-frame arrays out. All frames of a block go through one
batched real FFT, so the cost is a few FFTs of ``next_fast_len(L + max_lag)`` points per frame — about
300× real time at a 5 ms hop on one core, where ``librosa.pyin`` runs at ~25×.

Definitions (per analysis frame ``x`` of ``L`` samples, centred on the feature frame's centre):

1. ``x ← (x − mean(x)) · w`` with ``w`` a Hann window (Boersma 1993, eq. 7-8).
2. ``r_a(τ)`` = autocorrelation of ``x`` (by FFT, zero-padded so there is no circular wrap up to ``max_lag``);
   ``r_w(τ)`` = autocorrelation of ``w``. The window-corrected normalised autocorrelation is
   ``r(τ) = (r_a(τ) / r_a(0)) / (r_w(τ) / r_w(0))`` — this undoes the taper of the window so a periodic
   signal has ``r(T0) ≈ 1`` (Boersma 1993, eq. 9).
3. Candidates are the local maxima of ``r`` at lags ``sr/f0_max ≤ τ ≤ sr/f0_min``. Each peak's lag and height are
   refined by parabolic interpolation; heights above 1 are folded to ``1/r`` (as Praat does). The chosen
   candidate maximises ``r(τ) − octave_cost · log2(τ · f0_max / sr)``: Praat's octave cost, which prefers the
   shorter lag when ``r(2·T0) ≈ r(T0)`` (avoids octave-down errors on harmonic-rich voices). No Viterbi path
   smoothing across frames: each frame is independent (so extraction is stateless and order-free).
4. ``voicing_prob = clip(r_peak, 0, 1)``; 0 for frames without a candidate and for silent frames.
5. ``hnr_db = 10·log10(r_peak / (1 − r_peak))`` (Boersma 1993, eq. 4), clipped to ``[hnr_min_db, hnr_max_db]``;
   ``hnr_min_db`` for frames without a candidate and for silent frames.
6. ``f0 = sr / T_peak`` where ``voicing_prob ≥ voicing_threshold``, else 0 (unvoiced).

A frame is *silent* when its energy is numerically zero, or when its absolute peak is below
``silence_threshold`` × ``global_peak`` (the utterance's absolute peak; Praat's silence threshold).

Accuracy (tests): F0 within 0.1% on tones 75–450 Hz, sine or harmonic-rich, and on a 120→240 Hz glide; white
noise gives ``voicing_prob`` ≈ 0.14 and HNR ≈ −8 dB; harmonic tone + white noise at 5–30 dB SNR gives HNR within
1 dB of the SNR. A perfectly periodic tone reads ≥ 30 dB HNR at ≥ 100 Hz but only ≈ 20 dB at 75 Hz, where the 50 ms
window holds 3.75 periods and the window correction is less exact.

The analysis window must hold at least two periods of ``f0_min`` (three is Boersma's/Praat's recommendation for
Hann, and the default used by ``features.acoustic``'s ``lld17``: 50 ms for 60 Hz), because ``r_w(τ)`` becomes
small and the correction unreliable at lags near ``L/2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft

__all__ = ["PitchResult", "autocorr_pitch", "hnr_from_r", "pitch_lag_range"]

#: Frames per batched FFT: bounds memory (~4 MB per array at L=800) and stays cache-friendly.
_BLOCK = 1024
#: Below this zero-lag energy (sum of squared windowed samples) a frame counts as digital silence.
_TINY_ENERGY = 1e-12


@dataclass(frozen=True)
class PitchResult:
    """Per-frame pitch analysis; every array is ``(frames,)`` float32."""

    f0: np.ndarray  #: Hz, 0 where unvoiced
    voicing_prob: np.ndarray  #: window-corrected autocorrelation peak in [0, 1]
    hnr_db: np.ndarray  #: harmonics-to-noise ratio in dB, clipped
    r_peak: np.ndarray  #: raw peak height (after folding), NaN-free; 0 where no candidate / silent


def pitch_lag_range(sample_rate: int, f0_min: float, f0_max: float) -> tuple[int, int]:
    """Integer lag search range ``(lag_min, lag_max)`` in samples for ``[f0_min, f0_max]`` Hz."""
    return int(np.floor(sample_rate / f0_max)), int(np.ceil(sample_rate / f0_min))


@lru_cache(maxsize=16)
def _window_and_correction(length: int, n_fft: int, n_lags: int) -> tuple[np.ndarray, np.ndarray]:
    """Hann window ``(L,)`` and its normalised autocorrelation ``r_w(τ)/r_w(0)`` for ``τ < n_lags``."""
    w = np.hanning(length).astype(np.float32)
    spec = scipy.fft.rfft(w.astype(np.float64), n_fft)
    rw = scipy.fft.irfft(spec.real**2 + spec.imag**2, n_fft)[:n_lags]
    rw = rw / rw[0]
    w.setflags(write=False)
    rw = rw.astype(np.float32)
    rw.setflags(write=False)
    return w, rw


def hnr_from_r(r: np.ndarray, hnr_min_db: float, hnr_max_db: float) -> np.ndarray:
    """``10·log10(r/(1−r))`` with ``r`` clipped so the result lies in ``[hnr_min_db, hnr_max_db]`` (no inf/NaN)."""
    lo = 10.0 ** (hnr_min_db / 10.0)
    hi = 10.0 ** (hnr_max_db / 10.0)
    r_lo, r_hi = lo / (1.0 + lo), hi / (1.0 + hi)
    rc = np.clip(r.astype(np.float64), r_lo, r_hi)
    return np.clip(10.0 * np.log10(rc / (1.0 - rc)), hnr_min_db, hnr_max_db).astype(np.float32)


def autocorr_pitch(
    frames: np.ndarray,
    sample_rate: int,
    *,
    f0_min: float = 60.0,
    f0_max: float = 600.0,
    octave_cost: float = 0.01,
    voicing_threshold: float = 0.45,
    silence_threshold: float = 0.03,
    global_peak: float | None = None,
    hnr_min_db: float = -20.0,
    hnr_max_db: float = 40.0,
) -> PitchResult:
    """F0, voicing probability and HNR of each analysis frame (definitions in the module docstring).

    ``frames``: ``(n_frames, L)`` raw (un-windowed) samples, typically a strided view; it is not modified.
    ``global_peak``: the utterance's max ``|x|`` for the relative silence test (``None``: the frames' max).
    """
    frames = np.asarray(frames)
    if frames.ndim != 2:
        raise ValueError(f"autocorr_pitch: frames must be (n_frames, L), got shape {frames.shape}")
    n_frames, length = frames.shape
    lag_min, lag_max = pitch_lag_range(sample_rate, f0_min, f0_max)
    if lag_min < 2 or lag_max <= lag_min:
        raise ValueError(f"autocorr_pitch: bad F0 range [{f0_min}, {f0_max}] Hz at {sample_rate} Hz")
    if 2 * lag_max > length:
        raise ValueError(
            f"autocorr_pitch: the pitch window ({length} samples) must hold at least two periods of f0_min "
            f"({f0_min} Hz = {lag_max} samples); lengthen the window or raise f0_min"
        )
    n_lags = lag_max + 2  # one past lag_max for the local-maximum test and parabolic interpolation
    n_fft = scipy.fft.next_fast_len(length + n_lags, real=True)
    window, rw = _window_and_correction(length, n_fft, n_lags)
    # Penalty per candidate lag (Praat's octave cost relative to the ceiling).
    taus = np.arange(lag_min, lag_max + 1, dtype=np.float32)
    penalty = (octave_cost * np.log2(taus * (f0_max / sample_rate))).astype(np.float32)
    if global_peak is None:
        global_peak = float(np.max(np.abs(frames))) if frames.size else 0.0
    silence_level = silence_threshold * global_peak

    f0 = np.zeros(n_frames, np.float32)
    r_peak = np.zeros(n_frames, np.float32)
    for s in range(0, n_frames, _BLOCK):
        seg = np.array(frames[s : s + _BLOCK], dtype=np.float32)  # copy: frames may be a read-only view
        seg -= seg.mean(axis=1, keepdims=True)
        loud = np.abs(seg).max(axis=1) >= silence_level
        seg *= window
        spec = scipy.fft.rfft(seg, n_fft, axis=1)
        ac = scipy.fft.irfft(spec.real**2 + spec.imag**2, n_fft, axis=1)[:, :n_lags]
        ac0 = ac[:, :1]
        live = ac0[:, 0] > _TINY_ENERGY
        r = ac / np.where(ac0 > _TINY_ENERGY, ac0, 1.0)
        r *= 1.0 / rw  # window correction
        a, b, c = r[:, lag_min - 1 : lag_max], r[:, lag_min : lag_max + 1], r[:, lag_min + 1 : lag_max + 2]
        is_max = (b > a) & (b >= c)
        den = a - 2.0 * b + c  # < 0 at a strict maximum
        delta = np.where(is_max, 0.5 * (a - c) / np.where(is_max, den, -1.0), 0.0)
        height = b - 0.25 * (a - c) * delta
        height = np.where(height > 1.0, 1.0 / np.maximum(height, 1e-30), height)  # fold r > 1 (Praat)
        score = np.where(is_max, height - penalty, -np.inf)
        k = np.argmax(score, axis=1)
        rows = np.arange(len(k))
        found = np.isfinite(score[rows, k]) & live & loud
        peak = np.where(found, height[rows, k], 0.0)
        lag = taus[k] + delta[rows, k]
        f0[s : s + len(k)] = np.where(found, sample_rate / np.maximum(lag, 1.0), 0.0)
        r_peak[s : s + len(k)] = np.maximum(peak, 0.0)

    voicing = np.clip(r_peak, 0.0, 1.0).astype(np.float32)
    f0 = np.where(voicing >= voicing_threshold, f0, 0.0).astype(np.float32)
    hnr = hnr_from_r(r_peak, hnr_min_db, hnr_max_db)
    hnr[r_peak <= 0] = hnr_min_db
    return PitchResult(f0=f0, voicing_prob=voicing, hnr_db=hnr, r_peak=r_peak)
