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

#: Samples per batched-FFT block (frames × n_fft): ~512 KB of float32, so a block's arrays stay in L2 cache.
_BLOCK_SAMPLES = 1 << 17
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
    if n_frames == 0:
        empty = np.zeros(0, np.float32)
        return PitchResult(f0=empty, voicing_prob=empty, hnr_db=empty, r_peak=empty)
    # Penalty per candidate lag (Praat's octave cost relative to the ceiling).
    taus = np.arange(lag_min, lag_max + 1, dtype=np.float32)
    penalty = (octave_cost * np.log2(taus * (f0_max / sample_rate))).astype(np.float32)
    if global_peak is None:
        global_peak = float(np.max(np.abs(frames))) if frames.size else 0.0
    silence_level = silence_threshold * global_peak

    f0 = np.zeros(n_frames, np.float32)
    r_peak = np.zeros(n_frames, np.float32)
    inv_rw = (1.0 / rw[lag_min - 1 : lag_max + 2]).astype(np.float32)
    block = max(32, _BLOCK_SAMPLES // n_fft)
    buf = np.zeros((min(block, n_frames), n_fft), np.float32)  # zero tail = linear (not circular) correlation
    for s in range(0, n_frames, block):
        nb = min(block, n_frames - s)
        x = buf[:nb, :length]
        x[...] = frames[s : s + nb]
        x -= x.mean(axis=1, keepdims=True)
        loud = np.maximum(x.max(axis=1), -x.min(axis=1)) >= silence_level
        x *= window
        spec = scipy.fft.rfft(buf[:nb], axis=1)
        # Autocorrelation = inverse FFT of the power spectrum; the spectrum is real and even, so a DCT-I does it
        # without building a complex array (result scaled by n_fft, which the normalisation by r_a(0) removes).
        ac = scipy.fft.dct(spec.real**2 + spec.imag**2, type=1, axis=1)
        ac0 = ac[:, 0]
        live = ac0 > _TINY_ENERGY * n_fft
        # Window-corrected autocorrelation, not yet divided by r_a(0): peak positions do not depend on that
        # per-frame scale, so the division is done on the few local maxima only.
        r = ac[:, lag_min - 1 : lag_max + 2]
        r *= inv_rw
        is_max = (r[:, 1:-1] > r[:, :-2]) & (r[:, 1:-1] >= r[:, 2:])
        rows, cols = np.nonzero(is_max)
        a, b, c = r[rows, cols], r[rows, cols + 1], r[rows, cols + 2]
        # parabolic vertex offset, within ±0.5 at a strict maximum (denominator < 0; guarded against rounding)
        delta = np.clip(0.5 * (a - c) / np.minimum(a - 2.0 * b + c, -1e-30), -0.5, 0.5)
        height = (b - 0.25 * (a - c) * delta) / np.where(live, ac0, 1.0)[rows]
        height = np.where(height > 1.0, 1.0 / np.maximum(height, 1.0), height)  # fold r > 1 back (Praat)
        score = np.full(is_max.shape, -np.inf, np.float32)
        score[rows, cols] = height - penalty[cols]
        best = np.argmax(score, axis=1)
        found = np.isfinite(score[np.arange(nb), best]) & live & loud
        if rows.size:
            # position of each frame's chosen peak in the compact (row-major sorted) candidate arrays
            width = is_max.shape[1]
            sel = np.searchsorted(rows * width + cols, np.arange(nb) * width + best)
            sel = np.minimum(sel, rows.size - 1)
            lag = taus[cols[sel]] + delta[sel]
            f0[s : s + nb] = np.where(found, sample_rate / np.maximum(lag, 1.0), 0.0)
            r_peak[s : s + nb] = np.where(found, np.maximum(height[sel], 0.0), 0.0)

    voicing = np.clip(r_peak, 0.0, 1.0).astype(np.float32)
    f0 = np.where(voicing >= voicing_threshold, f0, 0.0).astype(np.float32)
    hnr = hnr_from_r(r_peak, hnr_min_db, hnr_max_db)
    hnr[r_peak <= 0] = hnr_min_db
    return PitchResult(f0=f0, voicing_prob=voicing, hnr_db=hnr, r_peak=r_peak)
