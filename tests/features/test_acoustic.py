"""Acoustic feature sets (features/acoustic.py, features/pitch.py) on analytic signals with known answers."""

from __future__ import annotations

import pickle

import librosa
import numpy as np
import pytest
import scipy.fft
import scipy.signal

from features.acoustic import LLD17_COLUMNS, MelProjection, count_frames, frame_signal
from features.base import get_extractor, list_extractors
from features.pitch import autocorr_pitch, hnr_from_r

SR = 16000
NAMES = ["logmel40", "fbank128", "mfcc13", "lld17"]
LIBROSA_SETS = ["logmel40", "fbank128", "mfcc13"]
COL = {name: i for i, name in enumerate(LLD17_COLUMNS)}
HOPS = {"logmel40": 160, "fbank128": 192, "mfcc13": 512, "lld17": 80}
DIMS = {"logmel40": 40, "fbank128": 128, "mfcc13": 13, "lld17": 17}


def _t(seconds: float) -> np.ndarray:
    return np.arange(int(round(seconds * SR))) / SR


def _harmonic(f0: float, seconds: float = 1.0, n_harm: int = 5, amp: float = 0.3) -> np.ndarray:
    """Harmonic-rich tone: harmonics 1..n with 1/k amplitudes and fixed phases."""
    t = _t(seconds)
    y = sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, n_harm + 1))
    return (amp * y / np.max(np.abs(y))).astype(np.float32)


def _sine(f: float, seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * f * _t(seconds))).astype(np.float32)


def _noise(seconds: float = 1.0, amp: float = 0.1, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.fixture(scope="module")
def speechlike() -> np.ndarray:
    """1.3 s: a harmonic tone gliding 110→220 Hz, a noise burst, a pause; seeded."""
    t = _t(0.8)
    phase = 2 * np.pi * np.cumsum(110 + 137.5 * t) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12)) * np.hanning(t.size)
    y = np.concatenate([0.3 * voiced, _noise(0.3, 0.05, seed=3), np.zeros(int(0.2 * SR))])
    return (y + _noise(y.size / SR, 0.003, seed=4)).astype(np.float32)


def _interior(x: np.ndarray, k: int = 8) -> np.ndarray:
    return x[k:-k]


# ---------------------------------------------------------------- registry / contract --------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_with_contract(name, speechlike):
    assert name in list_extractors()
    ex = get_extractor(name)
    assert ex.input == "audio" and ex.version and ex.dim == DIMS[name]
    assert ex.frame_shift == pytest.approx(HOPS[name] / SR)
    out = ex.extract(speechlike, SR)
    assert out.dtype == np.float32 and out.ndim == 2 and out.flags.c_contiguous
    assert out.shape == (1 + speechlike.size // HOPS[name], DIMS[name])
    assert np.all(np.isfinite(out))


def _frame_length(ex) -> int:
    return ex.config.win_length if ex.name == "lld17" else ex.config.n_fft


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_frame_count_follows_window_hop_arithmetic(name, center):
    ex = get_extractor(name, center=center)
    hop, frame_len = ex.config.hop_length, _frame_length(ex)
    rng = np.random.default_rng(1)
    for n in (1, 79, 80, 160, 399, 400, 401, 511, 2047, 2048, 2049, 5000, 16001):
        expected = 1 + n // hop if center else 1 + max(0, n - frame_len) // hop
        assert ex.n_frames(n) == expected == count_frames(n, frame_len, hop, center)
        out = ex.extract((0.1 * rng.standard_normal(n)).astype(np.float32), SR)
        assert out.shape == (expected, ex.dim), (name, n, center)
        assert np.all(np.isfinite(out))


@pytest.mark.parametrize("name", NAMES)
def test_silence_is_finite(name):
    ex = get_extractor(name)
    for n in (10, SR):
        out = ex.extract(np.zeros(n, np.float32), SR)
        assert np.all(np.isfinite(out)), name
    if name == "lld17":
        c = ex.config
        assert np.all(out[:, COL["voicing_prob"]] == 0)
        assert np.all(out[:, COL["log_f0"]] == c.unvoiced_log_f0)
        assert np.all(out[:, COL["hnr_db"]] == c.hnr_min_db)
        assert np.allclose(out[:, COL["log_energy"]], np.log(c.energy_floor))
        assert np.all(out[:, COL["zcr"]] == 0)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_picklable(name, speechlike):
    ex = get_extractor(name)
    a = ex.extract(speechlike, SR)
    assert np.array_equal(a, ex.extract(speechlike, SR))
    assert np.array_equal(a, get_extractor(name).extract(speechlike, SR))
    clone = pickle.loads(pickle.dumps(ex))
    assert "_consts" not in clone.__dict__  # cached matrices are rebuilt, not shipped to workers
    assert np.array_equal(a, clone.extract(speechlike, SR))
    assert clone.config_hash == ex.config_hash


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_clear_errors(name):
    ex = get_extractor(name)
    y = _sine(200, 0.1)
    with pytest.raises(ValueError, match="16000 Hz"):
        ex.extract(y, 8000)
    with pytest.raises(ValueError, match="mono"):
        ex.extract(np.stack([y, y]), SR)
    with pytest.raises(ValueError, match="NaN"):
        ex.extract(np.where(np.arange(y.size) == 5, np.nan, y), SR)
    with pytest.raises(ValueError, match="empty"):
        ex.extract(np.zeros(0, np.float32), SR)


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("logmel40", {"hop_length": 0}, "hop_length"),
        ("fbank128", {"win_length": 1024}, "win_length"),
        ("mfcc13", {"n_mfcc": 200}, "n_mfcc"),
        ("logmel40", {"log": "log10"}, "log"),
        ("lld17", {"f0_min": 20.0}, "pitch_win_length"),
        ("lld17", {"f0_min": 300.0, "f0_max": 200.0}, "f0_min"),
        ("lld17", {"n_mels": 128, "fmin": 20.0}, "empty bands"),  # too many HTK bands for a 512-point FFT
        ("lld17", {"no_such_param": 1}, "unknown parameter"),
    ],
)
def test_bad_config_raises(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        get_extractor(name, **overrides).extract(_sine(200, 0.1), SR)


# ---------------------------------------------------------------- agreement with librosa ----------------------
def _ref_logmel40(y, center=True, pad_mode="constant"):
    S = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=400, hop_length=160, win_length=400, n_mels=40,
                                       center=center, pad_mode=pad_mode)
    return librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=80.0).T


@pytest.mark.parametrize(("center", "pad_mode"), [(True, "constant"), (True, "reflect"), (False, "constant")])
def test_logmel40_equals_librosa(speechlike, center, pad_mode):
    out = get_extractor("logmel40", center=center, pad_mode=pad_mode).extract(speechlike, SR)
    ref = _ref_logmel40(speechlike, center, pad_mode)
    assert out.shape == ref.shape
    assert np.allclose(out, ref, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize(("center", "pad_mode"), [(True, "constant"), (True, "reflect"), (False, "constant")])
def test_fbank128_equals_librosa(speechlike, center, pad_mode):
    # window (400) shorter than the FFT (512): librosa centres it inside each 512-sample frame
    out = get_extractor("fbank128", center=center, pad_mode=pad_mode).extract(speechlike, SR)
    S = librosa.feature.melspectrogram(y=speechlike, sr=SR, n_fft=512, win_length=400, hop_length=192, n_mels=128,
                                       center=center, pad_mode=pad_mode)
    ref = np.log(np.maximum(S, 1e-10)).T
    assert out.shape == ref.shape
    assert np.allclose(out, ref, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("n_mfcc", [13, 26])  # 26 = the authors' code variant (librosa defaults otherwise)
def test_mfcc13_equals_librosa(speechlike, n_mfcc):
    out = get_extractor("mfcc13", n_mfcc=n_mfcc).extract(speechlike, SR)
    ref = librosa.feature.mfcc(y=speechlike, sr=SR, n_mfcc=n_mfcc, n_fft=2048, hop_length=512, window="hann").T
    assert out.shape == ref.shape == (1 + speechlike.size // 512, n_mfcc)
    assert np.allclose(out, ref, atol=1e-2, rtol=1e-4)


def test_lld17_mfcc_equals_librosa_htk_pipeline(speechlike):
    out = get_extractor("lld17").extract(speechlike, SR)
    y_pe = librosa.effects.preemphasis(speechlike, coef=0.97, zi=np.zeros(1, np.float32))
    y_pe[0] = speechlike[0]
    S = librosa.feature.melspectrogram(y=y_pe, sr=SR, n_fft=512, win_length=400, hop_length=80, window="hamming",
                                       n_mels=26, htk=True, norm=None)
    cep = scipy.fft.dct(np.log(np.maximum(S, 1e-8)), type=2, norm="ortho", axis=0)[1:13].T
    cep *= 1 + 11 * np.sin(np.pi * np.arange(1, 13) / 22)  # HTK lifter L=22 on c1..c12
    assert np.allclose(out[:, :12], cep, atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------- spectral analytic checks --------------------
@pytest.mark.parametrize("name", ["logmel40", "fbank128"])
@pytest.mark.parametrize("freq", [1000.0, 2500.0])
def test_logmel_of_tone_peaks_in_right_band(name, freq):
    ex = get_extractor(name)
    c = ex.config
    out = ex.extract(_sine(freq, 0.5), SR)
    basis = librosa.filters.mel(sr=SR, n_fft=c.n_fft, n_mels=c.n_mels)
    expected = int(np.argmax(basis[:, int(round(freq * c.n_fft / SR))]))
    assert int(np.argmax(_interior(out).mean(axis=0))) == expected
    centres = librosa.mel_frequencies(c.n_mels + 2, fmax=SR / 2)
    assert centres[expected] < freq < centres[expected + 2]  # the band's triangle spans the tone


def test_mfcc_c0_tracks_energy():
    ex = get_extractor("mfcc13")
    quiet, loud = ex.extract(_noise(1.0, 0.01), SR), ex.extract(_noise(1.0, 0.1), SR)
    assert np.all(_interior(loud, 2)[:, 0] > _interior(quiet, 2)[:, 0])
    # 20 dB more power on every band → c0 (orthonormal DCT) rises by 20·sqrt(n_mels)
    assert np.median(loud[:, 0] - quiet[:, 0]) == pytest.approx(20 * np.sqrt(128), rel=0.02)


def test_lld17_log_energy_is_analytic():
    out = get_extractor("lld17").extract(_sine(200, 0.5, amp=0.5), SR)  # 400 samples = 5 whole periods
    assert np.allclose(_interior(out)[:, COL["log_energy"]], np.log(0.5**2 / 2), atol=1e-4)
    louder = get_extractor("lld17").extract(_sine(200, 0.5, amp=1.0), SR)
    assert np.allclose(louder[:, COL["log_energy"]] - out[:, COL["log_energy"]], np.log(4.0), atol=1e-4)


@pytest.mark.parametrize("freq", [100.0, 250.0, 625.0])
def test_lld17_zcr_of_square_wave(freq):
    y = (0.5 * scipy.signal.square(2 * np.pi * freq * _t(1.0) + 0.3)).astype(np.float32)
    zcr = _interior(get_extractor("lld17").extract(y, SR)[:, COL["zcr"]])
    expected = 2 * freq / SR  # two crossings per period, per sample
    assert np.all(np.abs(zcr - expected) <= 1.0 / 400 + 1e-7)  # ±1 crossing per 400-sample frame
    assert zcr.mean() == pytest.approx(expected, rel=0.02)


# ---------------------------------------------------------------- pitch / voicing / HNR -----------------------
@pytest.mark.parametrize("kind", ["sine", "harmonic"])
@pytest.mark.parametrize("f0", [100.0, 200.0, 300.0, 75.0, 450.0])
def test_lld17_f0_and_voicing_of_tones(f0, kind):
    y = _sine(f0) if kind == "sine" else _harmonic(f0)
    out = _interior(get_extractor("lld17").extract(y, SR))
    est = np.exp(out[:, COL["log_f0"]])
    assert np.all(np.abs(est / f0 - 1) < 0.02), (f0, kind, est.min(), est.max())  # also catches octave errors
    assert np.all(out[:, COL["voicing_prob"]] > 0.95)
    # A perfectly periodic signal: high HNR. At 75 Hz the 50 ms window holds only 3.75 periods and the window
    # correction is less exact (Boersma 1993), so the ceiling is lower there.
    assert np.all(out[:, COL["hnr_db"]] > (15 if f0 < 100 else 25))


def test_lld17_tracks_a_gliding_f0():
    t = _t(1.0)
    f0 = 120 + 120 * t
    y = sum(np.sin(k * 2 * np.pi * np.cumsum(f0) / SR) / k for k in range(1, 6)).astype(np.float32)
    out = get_extractor("lld17").extract(0.3 * y, SR)
    truth = 120 + 120 * np.clip(np.arange(out.shape[0]) * 80 / SR, 0, 1)
    est = np.exp(out[:, COL["log_f0"]])
    assert np.all(np.abs(_interior(est / truth, 6) - 1) < 0.02)


def test_lld17_white_noise_is_unvoiced_with_low_hnr():
    out = get_extractor("lld17").extract(_noise(2.0, 0.3, seed=7), SR)
    voicing = out[:, COL["voicing_prob"]]
    assert np.median(voicing) < 0.3
    assert np.mean(out[:, COL["log_f0"]] != 0) < 0.02
    assert np.median(out[:, COL["hnr_db"]]) < -3
    assert out[:, COL["zcr"]].mean() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("snr_db", [5.0, 10.0, 20.0])
def test_lld17_hnr_matches_snr_of_tone_plus_noise(snr_db):
    # Boersma (1993): for periodic + white noise, r(T0) = P_h / (P_h + P_n), so HNR (dB) ≈ SNR (dB).
    h = _harmonic(200, 2.0)
    n = _noise(2.0, 1.0, seed=11)
    y = h + n * np.sqrt(np.mean(h**2) / np.mean(n**2) / 10 ** (snr_db / 10))
    out = get_extractor("lld17").extract(y.astype(np.float32), SR)
    assert np.median(out[:, COL["hnr_db"]]) == pytest.approx(snr_db, abs=1.0)


@pytest.mark.parametrize("center", [True, False])
def test_lld17_descriptors_share_one_time_grid(center):
    # Tone burst from 0.5 s: energy and voicing must switch on at the same frame, where the grid says.
    y = np.concatenate([np.zeros(SR // 2, np.float32), _harmonic(150, 0.5)])
    ex = get_extractor("lld17", center=center)
    out = ex.extract(y, SR)
    centres = np.arange(out.shape[0]) * 80 + (0 if center else 200)
    onset_energy = np.argmax(out[:, COL["log_energy"]] > -10)
    onset_voicing = np.argmax(out[:, COL["voicing_prob"]] > 0.45)
    assert abs(centres[onset_energy] - SR // 2) <= 200  # the 25 ms frame first touches the tone
    assert abs(int(onset_voicing) - int(onset_energy)) <= 3


def test_lld17_columns_recorded():
    ex = get_extractor("lld17")
    assert ex.provenance()["columns"] == list(LLD17_COLUMNS) and len(LLD17_COLUMNS) == 17
    assert ex.provenance()["random_weights"] is False


def test_lld17_unvoiced_value_is_configurable():
    out = get_extractor("lld17", unvoiced_log_f0=-1.0).extract(_noise(0.5, 0.3), SR)
    assert np.mean(out[:, COL["log_f0"]] == -1.0) > 0.95


# The shortest (3 s) read-speech clip keeps pyin's cost (and its numba compile) small.
_REAL_SPEECH = [p for p in ["/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav"]
                if __import__("os").path.exists(p)]


@pytest.mark.skipif(not _REAL_SPEECH, reason="real read speech from Debian's pocketsphinx-testdata is not installed")
def test_lld17_f0_agrees_with_pyin_on_real_speech():
    from features.audio import load_audio

    for path in _REAL_SPEECH:
        y = load_audio(path)
        out = get_extractor("lld17").extract(y, SR)
        ref, ref_voiced, _ = librosa.pyin(y, fmin=60, fmax=600, sr=SR, frame_length=800, hop_length=80)
        n = min(out.shape[0], ref.shape[0])
        ours_voiced = out[:n, COL["log_f0"]] != 0
        both = ours_voiced & ref_voiced[:n]
        assert both.mean() > 0.4, path
        ratio = np.exp(out[:n, COL["log_f0"]][both]) / ref[:n][both]
        assert np.median(np.abs(ratio - 1)) < 0.02, path
        assert np.mean(np.abs(np.log2(ratio)) > 0.2) < 0.05, path  # octave/gross errors
        assert np.mean(ours_voiced == ref_voiced[:n]) > 0.75, path


# ---------------------------------------------------------------- pure helpers ---------------------------------
def test_frame_signal_windows_are_centred():
    y = np.arange(1, 11, dtype=np.float32)
    fr = frame_signal(y, 4, 3, count_frames(10, 4, 3, True), 0)
    assert fr.shape == (4, 4)
    assert np.array_equal(fr[0], [0, 0, 1, 2]) and np.array_equal(fr[1], [2, 3, 4, 5])
    assert np.array_equal(fr[3], [8, 9, 10, 0])


def test_banded_mel_projection_equals_dense_product():
    rng = np.random.default_rng(5)
    power = rng.random((37, 1025)).astype(np.float32)
    basis_t = librosa.filters.mel(sr=SR, n_fft=2048, n_mels=128).T.astype(np.float32)
    basis_t[:, 40] = 0.0  # an empty band stays zero
    out = MelProjection(basis_t)(power, np.empty((37, 128), np.float32))
    assert np.allclose(out, power @ basis_t, rtol=1e-5, atol=1e-7) and np.all(out[:, 40] == 0)


def test_hnr_from_r_is_clipped_and_finite():
    r = np.array([-0.5, 0.0, 0.5, 0.9, 1.0, 1.5], np.float32)
    h = hnr_from_r(r, -20.0, 40.0)
    assert np.all(np.isfinite(h)) and h.min() == pytest.approx(-20) and h.max() == pytest.approx(40, abs=1e-3)
    assert h[2] == pytest.approx(0.0, abs=1e-5) and h[3] == pytest.approx(10 * np.log10(9), abs=1e-4)


def test_autocorr_pitch_rejects_short_window():
    with pytest.raises(ValueError, match="two periods"):
        autocorr_pitch(np.zeros((3, 300), np.float32), SR, f0_min=60.0)


# ---------------------------------------------------------------- benchmark script smoke test ------------------
def test_benchmark_script_writes_report(tmp_path):
    """``python -m benchmarks.extract`` runs end to end and reports; its numbers are not asserted (not a timed test)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    audio_dir = tmp_path / "wavs"
    audio_dir.mkdir()
    import soundfile as sf

    sf.write(audio_dir / "a.wav", _harmonic(150, 0.7), SR)
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "benchmarks.extract", "--seconds", "1.5", "--repeats", "1", "--utt-seconds", "0.5",
           "--features", "logmel40", "lld17", "glove", "no_such_feature", "--audio-dir", str(audio_dir),
           "--set", "lld17.f0_min=75", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["audio"]["source"] == "directory" and report["audio"]["seconds"] == pytest.approx(1.5)
    assert report["audio"]["utterances"] == 3 and report["audio"]["files_read"] == 3  # 0.7 s file looped
    res = report["results"]
    assert res["logmel40"]["status"] == "ok" and res["logmel40"]["rtf"] > 0 and res["logmel40"]["target_rtf"] == 1000
    assert res["logmel40"]["frames"] == 3 * (1 + 8000 // 160)
    assert res["lld17"]["config"]["f0_min"] == 75 and res["lld17"]["provenance"]["columns"][-1] == "zcr"
    assert res["glove"]["status"] == "skipped" and "text" in res["glove"]["reason"]
    assert res["no_such_feature"]["status"] == "skipped" and "unknown feature set" in res["no_such_feature"]["reason"]
    assert report["machine"]["pinned_cpu"] is not None and report["machine"]["librosa"] == librosa.__version__
