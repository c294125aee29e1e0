"""``functionals``: one fixed-length vector of utterance statistics — the classical SER baseline's input.

Per utterance (16 kHz mono float32 ``(n,)`` → float32 ``(dim,)``, ``dim`` = 4·n_mfcc + 10 + 1):

* ``n_mfcc`` MFCCs (librosa, 25 ms window / 10 ms hop) and their deltas: mean and std over frames
  (``4 · n_mfcc`` values);
* log-energy (log of the frame RMS, floored at ``energy_floor``): mean, std, 5th and 95th percentile, and the
  95–5 range (5 values);
* log-F0 from YIN (``librosa.yin``, ``f0_min``–``f0_max`` Hz) over voiced frames (frames whose log-energy is within
  ``voicing_db`` of the utterance's loudest frame — YIN itself has no voicing decision): mean, std, 5th/95th
  percentile and the voiced fraction (5 values; an utterance without voiced frames gives zeros for the
  log-F0 statistics and 0 for the fraction);
* duration in seconds (1 value).

This is the feature set of the "MFCC/F0 statistics + logistic regression" baseline (the ``classical`` model);
standardisation happens in the model with training-fold statistics, not here (the store keeps raw values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.acoustic import validate_waveform
from features.base import Extractor, ExtractorConfig, register_extractor

__all__ = ["FunctionalsConfig", "Functionals", "functional_names"]


@dataclass
class FunctionalsConfig(ExtractorConfig):
    n_mfcc: int = 13
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 40
    f0_min: float = 60.0
    f0_max: float = 500.0
    #: YIN frame length (samples): 2 periods of f0_min at 16 kHz fit in 1024
    f0_frame_length: int = 1024
    #: a frame counts as voiced when its log-energy is within this many dB of the loudest frame
    voicing_db: float = 30.0
    energy_floor: float = 1.0e-5


def functional_names(n_mfcc: int = 13) -> list[str]:
    """Names of the vector's entries, in order (for reports and tests)."""
    names = [f"mfcc{i}_{s}" for s in ("mean", "std") for i in range(n_mfcc)]
    names += [f"d_mfcc{i}_{s}" for s in ("mean", "std") for i in range(n_mfcc)]
    names += [f"log_energy_{s}" for s in ("mean", "std", "p05", "p95", "range")]
    names += [f"log_f0_{s}" for s in ("mean", "std", "p05", "p95")] + ["voiced_fraction", "duration_s"]
    return names


@register_extractor("functionals")
class Functionals(Extractor):
    """Waveform ``(n,)`` at 16 kHz → utterance statistics ``(4·n_mfcc + 11,)`` float32.

    >>> ex = Functionals()
    >>> ex.extract(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1, 16000).shape
    (63,)
    """

    Config = FunctionalsConfig
    version = "1"
    input = "audio"

    @property
    def dim(self) -> int:
        return 4 * int(self.config.n_mfcc) + 11

    def extract(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        import librosa

        c = self.config
        y = validate_waveform(waveform, sample_rate, self.name)
        if len(y) < c.n_fft:  # too short for one analysis frame: pad (the duration keeps the true length)
            y = np.pad(y, (0, c.n_fft - len(y)))
        mfcc = librosa.feature.mfcc(y=y, sr=sample_rate, n_mfcc=c.n_mfcc, n_fft=c.n_fft, win_length=c.win_length,
                                    hop_length=c.hop_length, n_mels=c.n_mels)
        delta = librosa.feature.delta(mfcc, width=9, mode="nearest")  # "nearest": valid for any frame count
        rms = librosa.feature.rms(y=y, frame_length=c.win_length, hop_length=c.hop_length)[0]
        log_e = np.log(np.maximum(rms, c.energy_floor))
        p05, p95 = np.percentile(log_e, [5, 95])
        energy = [log_e.mean(), log_e.std(), p05, p95, p95 - p05]
        f0 = librosa.yin(y, fmin=c.f0_min, fmax=c.f0_max, sr=sample_rate, frame_length=c.f0_frame_length,
                         hop_length=c.hop_length)
        n = min(len(f0), len(log_e))
        voiced = log_e[:n] >= log_e.max() - c.voicing_db / 20.0 * np.log(10.0)  # dB of amplitude → natural log
        log_f0 = np.log(f0[:n][voiced])
        if log_f0.size:
            q05, q95 = np.percentile(log_f0, [5, 95])
            pitch = [log_f0.mean(), log_f0.std(), q05, q95, voiced.mean()]
        else:
            pitch = [0.0, 0.0, 0.0, 0.0, 0.0]
        out = np.concatenate([mfcc.mean(1), mfcc.std(1), delta.mean(1), delta.std(1), energy, pitch,
                              [len(waveform) / sample_rate]])
        return out.astype(np.float32)
