"""The bad-input matrix: every case either works as documented or stops with one clear error naming the file/key
and what to do — and never loses or alters what is already stored.

Most cases go through the real entry points (``pipeline.cli.stages.manifest/extract``, the ``emoflow`` CLI in-process
via typer's runner, a few as real subprocesses). For every extraction case a good corpus is extracted first and
the feature file's sha256 is compared after the failing run.
"""

from __future__ import annotations

import csv
import io
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from _rel import (
    SR,
    assert_one_line_error,
    manifest_rows,
    run_cli,
    run_cli_subprocess,
    sha256_file,
    tone,
    write_params,
    write_wav,
)

from features import get_extractor
from features.audio import AudioConfig, AudioError, load_audio
from features.store import FeatureReader, verify
from pipeline.cli import stages
from pipeline.corpus.manifest import ManifestError, read_manifest, write_manifest
from pipeline.extraction.extract import extract_features, source_checksums

ACOUSTIC = ("logmel40", "fbank128", "mfcc13", "lld17")


def _no_leftovers(h5: Path) -> None:
    """No temp file, no lock file next to a feature file once no writer runs."""
    left = [p.name for p in h5.parent.iterdir() if ".tmp" in p.name or p.name.endswith(".lock")]
    assert left == [], left


# =================================================================================================================
# unusable audio: refused with the file's name; the stored feature file stays byte-identical
# =================================================================================================================
def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _zero_length(p: Path) -> None:
    write_wav(p, np.zeros(0, np.float32))


def _truncated_header(p: Path) -> None:
    write_wav(p, tone(0.5))
    p.write_bytes(p.read_bytes()[:20])  # RIFF + half a fmt chunk


def _truncated_data(p: Path) -> None:
    write_wav(p, tone(0.5))
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])  # an interrupted copy: header intact, half the samples


def _not_audio(p: Path) -> None:
    p.write_text("utt_id,path,label\n" * 40)  # a CSV saved with a .wav name


def _nan_samples(p: Path) -> None:
    x = tone(0.5)
    x[1000:1010] = np.nan
    write_wav(p, x, subtype="FLOAT")


def _inf_samples(p: Path) -> None:
    x = tone(0.5)
    x[2000] = np.inf
    write_wav(p, x, subtype="FLOAT")


def _missing(p: Path) -> None:
    pass


# id, writer, load_audio/extract message, what the manifest stage says (None: it accepts the file)
BAD_AUDIO = [
    ("empty_file", _empty, "file is empty (0 bytes)", "cannot read audio header"),
    ("zero_length_audio", _zero_length, "no samples (zero-length audio)", "duration must be finite and > 0"),
    ("truncated_header", _truncated_header, "cannot decode audio", "cannot read audio header"),
    ("truncated_data", _truncated_data, "truncated file", None),
    ("non_audio_with_wav_name", _not_audio, "cannot decode audio", "cannot read audio header"),
    ("nan_samples_float_wav", _nan_samples, "contains NaN/inf samples", None),
    ("inf_samples_float_wav", _inf_samples, "contains NaN/inf samples", None),
    ("missing_file", _missing, "audio file not found", r"audio file\(s\) not found"),
]


@pytest.mark.parametrize("case, make, message, manifest_message", BAD_AUDIO, ids=[c[0] for c in BAD_AUDIO])
def test_bad_audio_is_refused_and_nothing_stored_changes(case, make, message, manifest_message, good_store,
                                                         store_copy, tmp_path):
    bad = tmp_path / "incoming" / f"{case}.wav"
    bad.parent.mkdir()
    make(bad)

    # the reader itself
    with pytest.raises(AudioError) as e:
        load_audio(bad)
    assert str(bad) in str(e.value) and message in str(e.value)

    # the manifest stage on a corpus table that lists the file
    table = tmp_path / "incoming" / "corpus.csv"
    table.write_text(f"utt_id,path,label\nzz_{case},{bad.name},neu\n")
    params = write_params(tmp_path / "params.yaml", table)
    if manifest_message is None:
        stages.manifest(params, tmp_path / "m_only_bad.parquet")  # documented: the header is fine, extract refuses
    else:
        with pytest.raises(ManifestError, match=manifest_message) as e:
            stages.manifest(params, tmp_path / "m_only_bad.parquet")
        assert bad.name in str(e.value) or f"zz_{case}" in str(e.value)

    # the extract stage on the good manifest + this row (a stale or hand-edited manifest)
    df = pd.concat([good_store["manifest_df"], manifest_rows(tmp_path, [{"utt_id": f"zz_{case}", "path": str(bad)}])])
    write_manifest(df, tmp_path / "manifest.parquet")
    with pytest.raises(AudioError) as e:
        stages.extract(good_store["params"], "logmel40", tmp_path / "manifest.parquet", store_copy, progress=False)
    assert str(bad) in str(e.value) and message in str(e.value)
    assert sha256_file(store_copy) == good_store["sha"], "a refused run altered the stored feature file"
    _no_leftovers(store_copy)

    # what the user does: drop the row (or fix the file) and rerun — nothing is recomputed, nothing rewritten
    stages.extract(good_store["params"], "logmel40", good_store["manifest"], store_copy, progress=False)
    assert sha256_file(store_copy) == good_store["sha"]
    assert verify(store_copy, source_checksums(get_extractor("logmel40"), good_store["manifest_df"])) == []


def test_bad_audio_through_the_cli_is_one_red_line_and_new_good_batches_are_kept(good_store, store_copy, tmp_path):
    """Two new good utterances and a corrupt one in one run: the CLI exits 2 with one line naming the file; the
    final file is untouched; the finished batch of good utterances is kept and reused when the row is fixed."""
    write_wav(tmp_path / "a_new.wav", tone(0.4, freq=300))
    write_wav(tmp_path / "b_new.wav", tone(0.4, freq=350))
    _truncated_header(tmp_path / "z_bad.wav")
    rows = [{"utt_id": u, "path": str(tmp_path / f"{u}.wav")} for u in ("a_new", "b_new", "z_bad")]
    df = pd.concat([good_store["manifest_df"], manifest_rows(tmp_path, rows)])
    write_manifest(df, tmp_path / "m.parquet")
    code, _, err, exc = run_cli(["stage", "extract", "--feature", "logmel40", "--manifest", tmp_path / "m.parquet",
                                 "--out", store_copy, "--params", good_store["params"], "--jobs", "1",
                                 "--no-progress"])
    assert_one_line_error(code, err, exc, "z_bad.wav", "cannot decode audio", "drop it from the manifest")
    assert sha256_file(store_copy) == good_store["sha"]
    parts = store_copy.with_name(store_copy.name + ".parts")
    assert len(list(parts.glob("*.h5"))) == 1  # batch_size 2: [a_new, b_new] finished before [z_bad]

    # the user replaces the corrupt file: only it is computed, the good batch is resumed, the file verifies
    write_wav(tmp_path / "z_bad.wav", tone(0.4, freq=400))
    df = pd.concat([good_store["manifest_df"], manifest_rows(tmp_path, rows)])
    write_manifest(df, tmp_path / "m.parquet")
    res = extract_features(get_extractor("logmel40"), read_manifest(tmp_path / "m.parquet"), store_copy,
                           audio_root=good_store["root"], jobs=1, batch_size=2, progress=False)
    assert (res.total, res.reused, res.resumed, res.computed) == (7, 4, 2, 1)
    assert not parts.exists()
    assert verify(store_copy, source_checksums(get_extractor("logmel40"), read_manifest(tmp_path / "m.parquet"))) == []
    _no_leftovers(store_copy)


# =================================================================================================================
# unusual but valid audio: works, documented behaviour
# =================================================================================================================
def _frames(n16: int) -> int:
    """logmel40 frame count for ``n16`` samples at 16 kHz (center=True, hop 160)."""
    return 1 + n16 // 160


def _stereo():
    left, right = tone(1.0, freq=220, seed=1), tone(1.0, freq=330, seed=2)
    return np.stack([left, right], axis=1), SR, "PCM_16", (left + right) / 2


# id -> (data, file rate, subtype, expected 16 kHz waveform or None, tolerance)
GOOD_AUDIO = {
    "resample_8k": (tone(1.0, 8000), 8000, "PCM_16", None, None),
    "resample_44k1": (tone(1.0, 44100), 44100, "PCM_16", None, None),
    "resample_48k": (tone(1.0, 48000), 48000, "PCM_16", None, None),
    "stereo_downmix_mean": (*_stereo(), 2e-4),
    "pcm24": (tone(1.0), SR, "PCM_24", tone(1.0), 1e-6),
    "float32_wav": (tone(1.0), SR, "FLOAT", tone(1.0), 0.0),
    "silence_all_zero": (np.zeros(SR, np.float32), SR, "PCM_16", np.zeros(SR, np.float32), 0.0),
    "full_scale_clipping": (np.sign(tone(1.0, amp=1.0)).astype(np.float32), SR, "PCM_16", None, None),
    "short_50ms": (tone(0.05), SR, "PCM_16", tone(0.05), 2e-4),
}


@pytest.mark.parametrize("case", list(GOOD_AUDIO))
def test_unusual_valid_audio_loads_as_16k_mono_and_every_acoustic_set_is_finite(case, tmp_path):
    data, rate, subtype, expected, tol = GOOD_AUDIO[case]
    p = write_wav(tmp_path / f"{case}.wav", data, rate, subtype)
    y = load_audio(p)
    n_in = data.shape[0]
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == int(round(n_in * SR / rate))  # resampled length: duration preserved to the sample
    if expected is not None:
        np.testing.assert_allclose(y, expected, atol=tol, rtol=0)
    if case.startswith("resample"):
        # the 220 Hz tone is still a 220 Hz tone after resampling (the resampler did not alias or shift it)
        spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        assert abs(np.argmax(spec) * SR / len(y) - 220) < 2
    for name in ACOUSTIC:
        ex = get_extractor(name)
        f = ex.extract(y, SR)
        assert f.shape[0] >= 1 and f.shape[1] == ex.dim and np.all(np.isfinite(f)), name
        if hasattr(ex, "n_frames"):
            assert f.shape[0] == ex.n_frames(len(y)), name


def test_unusual_valid_audio_end_to_end_through_manifest_and_extract(tmp_path):
    """All the valid oddities in one corpus (the table itself as ``dataset.root``): manifest durations are the
    files' durations and each stored logmel40 array has the frame count of the 16 kHz waveform."""
    rows = ["utt_id,path,label,transcript"]
    for i, (case, (data, rate, subtype, _, _)) in enumerate(GOOD_AUDIO.items()):
        write_wav(tmp_path / "c" / f"{case}.wav", data, rate, subtype)
        rows.append(f"{case},{case}.wav,{('ang', 'hap', 'neu', 'sad')[i % 4]},")
    (tmp_path / "c" / "corpus.csv").write_text("\n".join(rows) + "\n")
    params = write_params(tmp_path / "params.yaml", tmp_path / "c" / "corpus.csv")
    stages.manifest(params, tmp_path / "m.parquet")
    m = read_manifest(tmp_path / "m.parquet")
    stages.extract(params, "logmel40", tmp_path / "m.parquet", tmp_path / "f.h5", progress=False)
    r = FeatureReader(tmp_path / "f.h5")
    for _, row in m.iterrows():
        data, rate = GOOD_AUDIO[row.utt_id][:2]
        assert row.duration == pytest.approx(data.shape[0] / rate)
        arr = r[row.utt_id]
        assert arr.shape == (_frames(int(round(data.shape[0] * SR / rate))), 40), row.utt_id
        assert np.all(np.isfinite(arr))
    r.close()
    assert verify(tmp_path / "f.h5", source_checksums(get_extractor("logmel40"), m)) == []


@pytest.fixture(scope="module")
def ten_minute_wav(tmp_path_factory):
    """600 s of a seeded tone + noise at 16 kHz, written once (a tiled 1 s block keeps it cheap)."""
    p = tmp_path_factory.mktemp("long") / "ten_minutes.wav"
    write_wav(p, np.tile(tone(1.0, seed=3), 600))
    return p


def test_ten_minute_file_works_with_bounded_memory_and_exact_frame_count(ten_minute_wav, tmp_path):
    ex = get_extractor("logmel40")
    ex.extract(tone(0.5), SR)  # warm-up (mel basis, window) outside the measurement
    tracemalloc.start()
    try:
        y = load_audio(ten_minute_wav)
        f = ex.extract(y, SR)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(y) == 600 * SR and f.shape == (_frames(600 * SR), 40) == (60001, 40)
    # the waveform is 38 MB and the features 9.6 MB; the STFT works in cache-sized blocks, so no
    # (frames x n_fft) matrix (96 M floats) is ever materialised
    assert peak < 256e6, f"peak {peak / 1e6:.0f} MB for a 10-minute file"
    # and through the store
    df = manifest_rows(ten_minute_wav.parent, [{"utt_id": "long", "path": ten_minute_wav.name, "duration": 600.0}])
    res = extract_features(ex, df, tmp_path / "long.h5", audio_root=ten_minute_wav.parent, jobs=1, progress=False)
    assert res.computed == 1
    with FeatureReader(tmp_path / "long.h5") as r:
        np.testing.assert_array_equal(r["long"], f)


def test_segment_outside_or_reversed_is_refused_with_the_file_name(tmp_path):
    p = write_wav(tmp_path / "seg.wav", tone(1.0))
    with pytest.raises(AudioError, match="segment .* is empty"):
        load_audio(p, 0.8, 0.2)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(p, 5.0, 6.0)  # a label file pointing past the end
    assert len(load_audio(p, 0.25, 0.5)) == 4000


# =================================================================================================================
# transcripts: text features give the documented shapes
# =================================================================================================================
TRANSCRIPTS = {
    "missing_csv_cell": None,  # an empty CSV cell (NaN for pandas' default reader)
    "empty_quoted": "",
    "whitespace_only": "   ",
    "non_ascii": "Café naïve — Straße 日本語 don’t",
    "punctuation_only": "?!... -- ,,;",
    "markup_only": "[LAUGHTER] <noise>",
    "normal": "I don't know, really!",
}


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory):
    """A corpus table whose transcripts are the cases above, through the manifest stage."""
    from _rel import write_corpus

    root = tmp_path_factory.mktemp("text")
    n = len(TRANSCRIPTS)
    write_corpus(root / "c", n=n, transcripts=["x"] * n)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["utt_id", "path", "label", "transcript"])
    for i, (case, text) in enumerate(TRANSCRIPTS.items()):
        w.writerow([case, f"wav/g{i}.wav", "neu", "" if text is None else text])
    # csv writes an empty string and a missing value alike (an empty cell); make one of them an explicit ""
    text = buf.getvalue().replace("empty_quoted,wav/g1.wav,neu,\n", 'empty_quoted,wav/g1.wav,neu,""\n')
    (root / "c" / "corpus.csv").write_text(text, encoding="utf-8")
    params = write_params(root / "params.yaml", root / "c" / "corpus.csv",
                          features={"phonemes": {}, "glove": {}, "word2vec": {}})
    stages.manifest(params, root / "m.parquet")
    return {"root": root, "params": params, "manifest": root / "m.parquet"}


@pytest.mark.parametrize("feature, dim, dtype", [("phonemes", 32, np.int32), ("glove", 50, np.float32),
                                                 ("word2vec", 50, np.float32)])
def test_transcript_cases_give_documented_shapes(feature, dim, dtype, text_corpus):
    from features.text import tokenize_words

    m = read_manifest(text_corpus["manifest"])
    texts = dict(zip(m["utt_id"], m["transcript"], strict=True))
    assert texts["missing_csv_cell"] == "" and texts["empty_quoted"] == ""  # missing → "" (documented)
    out = text_corpus["root"] / f"{feature}.h5"
    stages.extract(text_corpus["params"], feature, text_corpus["manifest"], out, progress=False)
    ex = get_extractor(feature)
    assert verify(out, source_checksums(ex, m)) == []
    with FeatureReader(out) as r:
        for case in TRANSCRIPTS:
            arr = r[case]
            words = tokenize_words(texts[case])
            assert arr.dtype == dtype and arr.ndim == 2 and arr.shape[1] == dim, case
            if feature == "word2vec":  # letters only, OOV dropped (paper D): at most one row per word
                assert arr.shape[0] <= len(words), case
            else:  # one row per word (aligned phonemes/glove rows)
                assert arr.shape[0] == len(words), case
            if not words:  # empty, missing, whitespace, punctuation, markup only: a valid empty array
                assert arr.shape == (0, dim), case
    # letters of any script are words, a dash is not, the curly apostrophe is unified
    assert tokenize_words(TRANSCRIPTS["non_ascii"]) == ["Café", "naïve", "Straße", "日本語", "don't"]


def test_missing_transcript_in_a_parquet_corpus_table_is_empty_text(tmp_path):
    from _rel import write_corpus

    write_corpus(tmp_path / "c", n=2)
    table = pd.DataFrame({"utt_id": ["a", "b"], "path": ["wav/g0.wav", "wav/g1.wav"], "label": ["neu", "ang"],
                          "transcript": [None, "hello"]})
    table.to_parquet(tmp_path / "c" / "corpus.parquet")
    params = write_params(tmp_path / "params.yaml", tmp_path / "c" / "corpus.parquet")
    stages.manifest(params, tmp_path / "m.parquet")
    m = read_manifest(tmp_path / "m.parquet")
    assert m.set_index("utt_id")["transcript"].to_dict() == {"a": "", "b": "hello"}


# =================================================================================================================
# corpus tables and label files
# =================================================================================================================
def _mini_iemocap(root: Path) -> Path:
    """One session, one dialog, two labelled turns, in the release's layout."""
    sdir = root / "Session1"
    dialog = "Ses01F_impro01"
    emo = sdir / "dialog" / "EmoEvaluation"
    emo.mkdir(parents=True)
    (sdir / "dialog" / "transcriptions").mkdir(parents=True)
    lines, trans = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], []
    for k, (suffix, code) in enumerate((("F000", "neu"), ("M000", "ang"))):
        utt = f"{dialog}_{suffix}"
        lines.append(f"[{k:.4f} - {k + 1:.4f}]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]")
        trans.append(f"{utt} [{k:08.4f}-{k + 1:08.4f}]: hello")
        write_wav(sdir / "sentences" / "wav" / dialog / f"{utt}.wav", tone(0.2, freq=200 + 50 * k))
    (emo / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    (sdir / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(trans) + "\n")
    return emo / f"{dialog}.txt"


def _table(tmp_path: Path, text: str) -> Path:
    for name in ("a", "b"):
        write_wav(tmp_path / "c" / "wav" / f"{name}.wav", tone(0.2, freq=300 if name == "a" else 400))
    write_wav(tmp_path / "c" / "other" / "a.wav", tone(0.2, freq=500))
    (tmp_path / "c" / "t.csv").write_text(text)
    return tmp_path / "c" / "t.csv"


CORPUS_CASES = [
    # id, table text, adapter options, error regex (None: works), expected utterances when it works
    ("duplicate_utt_ids", "utt_id,path,label\nu1,wav/a.wav,neu\nu1,wav/b.wav,ang\n", {}, r"duplicate utt_id.*'u1'", None),
    ("duplicate_ids_from_file_names", "path,label\nwav/a.wav,neu\nother/a.wav,ang\n", {},
     r"duplicate utt_id.*derived from the file name", None),
    ("label_not_in_label_map", "path,label\nwav/a.wav,neutral\nwav/b.wav,bored\n",
     {"label_map": {"neutral": "neu"}}, r"label\(s\) \['bored'\] are not in label_map.*unknown_label='drop'", None),
    ("label_not_in_label_map_dropped", "path,label\nwav/a.wav,neutral\nwav/b.wav,bored\n",
     {"label_map": {"neutral": "neu"}, "unknown_label": "drop"}, None, {"a": "neu"}),
    ("unknown_label_map_name", "path,label\nwav/a.wav,neu\n", {"label_map": "7class"}, r"unknown label_map '7class'",
     None),
    ("empty_label", "path,label\nwav/a.wav,neu\nwav/b.wav,\n", {}, r"empty label in data row\(s\) \[2\]", None),
    ("missing_audio", "path,label\nwav/a.wav,neu\nwav/gone.wav,ang\n", {}, r"not found.*gone\.wav.*missing_audio='skip'",
     None),
    ("missing_audio_skipped", "path,label\nwav/a.wav,neu\nwav/gone.wav,ang\n", {"missing_audio": "skip"}, None,
     {"a": "neu"}),
    ("unknown_option", "path,label\nwav/a.wav,neu\n", {"labelmap": {}}, r"does not take option\(s\) \['labelmap'\]", None),
    ("missing_label_column", "path,emotion\nwav/a.wav,neu\n", {}, r"missing column\(s\) \['label'\]", None),
    ("bad_start_seconds", "path,label,start,end\nwav/a.wav,neu,zero,0.1\n", {}, r"column 'start' must be seconds", None),
]


@pytest.mark.parametrize("case, text, options, error, expected", CORPUS_CASES, ids=[c[0] for c in CORPUS_CASES])
def test_corpus_table_cases_through_the_manifest_stage(case, text, options, error, expected, tmp_path):
    table = _table(tmp_path, text)
    params = write_params(tmp_path / "params.yaml", table)
    cfg = yaml.safe_load(params.read_text())
    cfg["dataset"]["options"] = options
    params.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "m.parquet"
    if error is None:
        if case == "missing_audio_skipped":
            with pytest.warns(UserWarning, match="gone.wav"):
                stages.manifest(params, out)
        else:
            stages.manifest(params, out)
        assert read_manifest(out).set_index("utt_id")["label"].to_dict() == expected
        return
    with pytest.raises(ManifestError, match=error) as e:
        stages.manifest(params, out)
    assert "t.csv" in str(e.value) or "option" in str(e.value) or "label_map" in str(e.value)
    assert not out.exists()  # nothing half-written


def test_missing_emoevaluation_folder_and_label_file(tmp_path):
    from pipeline.corpus.corpora import build_manifest

    label_file = _mini_iemocap(tmp_path / "IEMOCAP_full_release")
    assert len(build_manifest("iemocap", tmp_path / "IEMOCAP_full_release")) == 2
    label_file.unlink()  # the folder is there, the dialog's label file is not
    with pytest.raises(ManifestError, match="no label files .*EmoEvaluation|EmoEvaluation.*no label files"):
        build_manifest("iemocap", tmp_path / "IEMOCAP_full_release")
    label_file.parent.rmdir()
    with pytest.raises(ManifestError, match="EmoEvaluation folder not found; the IEMOCAP copy is incomplete"):
        build_manifest("iemocap", tmp_path / "IEMOCAP_full_release")


def test_malformed_emoevaluation_line_names_file_and_line(tmp_path):
    from pipeline.corpus.corpora import build_manifest

    label_file = _mini_iemocap(tmp_path / "IEMOCAP_full_release")
    label_file.write_text(label_file.read_text() + "[3.0 - oops]\tSes01F_impro01_F001\tneu\n")
    with pytest.raises(ManifestError, match=rf"{label_file.name}:\d+: malformed label line"):
        build_manifest("iemocap", tmp_path / "IEMOCAP_full_release")


def test_iemocap_codes_outside_the_label_map_are_dropped_as_documented(tmp_path):
    from pipeline.corpus.corpora import build_manifest

    label_file = _mini_iemocap(tmp_path / "IEMOCAP_full_release")
    label_file.write_text(label_file.read_text().replace("\tang\t", "\tfru\t"))  # fru is not in 4class
    with pytest.warns(UserWarning, match="not the published 5531"):
        m = build_manifest("iemocap", tmp_path / "IEMOCAP_full_release")
    assert list(m["label"]) == ["neu"]


def test_manifest_with_duplicate_utt_ids_is_refused_when_read(tmp_path, good_store):
    df = pd.concat([good_store["manifest_df"], good_store["manifest_df"].iloc[:1]])
    from pyarrow import Table, parquet

    parquet.write_table(Table.from_pandas(df, preserve_index=False), tmp_path / "dup.parquet")
    with pytest.raises(ManifestError, match="duplicate utt_id.*'g0'"):
        read_manifest(tmp_path / "dup.parquet")


# =================================================================================================================
# unknown names and malformed params.yaml: one red line (exit 2), no traceback, the store untouched
# =================================================================================================================
def _params_with(tmp_path: Path, good_store, text: str | None = None, **sections) -> Path:
    p = tmp_path / "params.yaml"
    if text is not None:
        p.write_text(text)
        return p
    return write_params(p, good_store["root"] / "corpus.csv", **sections)


PARAMS_CASES = [
    # id, params.yaml text or sections, needles in the one error line
    ("bad_yaml", "dataset: {name: manifest\nextract: [\n", ["params.yaml:2:", "not valid YAML", "fix the file"]),
    ("jobs_not_int", {"extract": {"jobs": "two"}}, ["extract.jobs must be int", "'two'", "fix params.yaml"]),
    ("batch_size_zero", {"extract": {"jobs": 1, "batch_size": 0}}, ["extract.batch_size must be", "fix params.yaml"]),
    ("unknown_feature_key", {"features": {"logmel40": {"n_melz": 40}}},
     ["features.logmel40", "unknown parameter(s) ['n_melz']", "known parameters"]),
    ("feature_value_wrong_type", {"features": {"logmel40": {"n_mels": "forty"}}},
     ["features.logmel40.n_mels: expected int", "'forty'"]),
    ("feature_section_not_a_mapping", {"features": {"logmel40": [40]}}, ["features.logmel40 must be dict"]),
    ("unknown_audio_key", {"extract": {"jobs": 1, "audio": {"sample_rat": 8000}}},
     ["extract.audio: unknown key(s) ['sample_rat']", "fix params.yaml"]),
    ("bad_resampler", {"extract": {"jobs": 1, "audio": {"res_type": "best"}}}, ["extract.audio.res_type 'best'"]),
    ("top_level_not_a_mapping", "- logmel40\n", ["top level must be a mapping"]),
    ("missing_dataset_root", "dataset: {name: manifest}\nextract: {jobs: 1}\n", ["'dataset.root' not found"]),
]


@pytest.mark.parametrize("case, spec, needles", PARAMS_CASES, ids=[c[0] for c in PARAMS_CASES])
def test_malformed_params_one_line_error_store_untouched(case, spec, needles, good_store, store_copy, tmp_path):
    params = _params_with(tmp_path, good_store, spec) if isinstance(spec, str) else _params_with(tmp_path, good_store,
                                                                                                  **spec)
    code, _, err, exc = run_cli(["stage", "extract", "--feature", "logmel40", "--manifest", good_store["manifest"],
                                 "--out", store_copy, "--params", params, "--no-progress"])
    assert_one_line_error(code, err, exc, *needles)
    assert sha256_file(store_copy) == good_store["sha"]
    _no_leftovers(store_copy)


NAME_CASES = [
    ("unknown_feature", ["stage", "extract", "--feature", "logmel41", "--manifest", "{manifest}", "--out", "{out}"],
     ["unknown feature set 'logmel41'", "logmel40"]),
    ("unknown_plan", ["stage", "folds", "--plan", "loso2", "--manifest", "{manifest}", "--out", "{folds}"],
     ["loso2", "loso"]),
    ("unknown_dataset", ["stage", "manifest", "--out", "{folds}"], ["unknown dataset 'iemocapp'", "iemocap"]),
    ("missing_params_file", ["stage", "extract", "--feature", "logmel40", "--manifest", "{manifest}", "--out", "{out}",
                             "--params", "{missing}"], ["nope.yaml: not found", "--params"]),
    ("missing_manifest", ["stage", "extract", "--feature", "logmel40", "--manifest", "{missing}", "--out", "{out}"],
     ["nope.yaml: manifest not found"]),
]


@pytest.mark.parametrize("case, argv, needles", NAME_CASES, ids=[c[0] for c in NAME_CASES])
def test_unknown_names_one_line_error(case, argv, needles, good_store, store_copy, tmp_path):
    params = write_params(tmp_path / "params.yaml", good_store["root"] / "corpus.csv")
    if case == "unknown_dataset":
        params.write_text(params.read_text().replace("name: manifest", "name: iemocapp"))
    subst = {"{manifest}": good_store["manifest"], "{out}": store_copy, "{folds}": tmp_path / "folds.parquet",
             "{missing}": tmp_path / "nope.yaml"}
    args = [subst.get(a, a) for a in argv]
    if "--params" not in args:
        args += ["--params", params]
    code, _, err, exc = run_cli(args)
    assert_one_line_error(code, err, exc, *needles)
    assert sha256_file(store_copy) == good_store["sha"]
    assert not (tmp_path / "folds.parquet").exists()


def test_unknown_model_name_lists_the_known_ones():
    from models import get_model_info, list_models

    with pytest.raises(ValueError, match="unknown model 'ilt2'; known models: .*ilt"):
        get_model_info("ilt2")
    assert "ilt" in list_models()


@pytest.mark.parametrize("case", ["unknown_model", "missing_fold_plan"])
def test_train_stage_fails_fast_with_one_line_before_starting_prefect(case, good_store, tmp_path):
    """No temporary Prefect server (~20 s) and no flow-run traceback for a typo or a missing input."""
    import time

    # import prefect (via the flows module) outside the CLI runner: Prefect's log handler keeps the stderr it
    # first sees, and the runner closes its captured stderr afterwards (later flow tests would log to it)
    import pipeline.orchestration.flows  # noqa: F401

    model = "ilt2" if case == "unknown_model" else "ilt"
    (tmp_path / "folds").mkdir()
    t0 = time.perf_counter()
    code, _, err, exc = run_cli(["stage", "train", "--model", model, "--manifest", good_store["manifest"],
                                 "--folds-dir", tmp_path / "folds", "--features-dir", good_store["h5"].parent,
                                 "--out", tmp_path / "results", "--params", good_store["params"]])
    needles = (["unknown model 'ilt2'", "known models", "ilt"] if case == "unknown_model"
               else ["random_55_25_20.parquet: not found", "dvc repro folds@random_55_25_20"])
    assert_one_line_error(code, err, exc, *needles)
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("case", ["bad_yaml", "unknown_feature_key"])
def test_real_cli_subprocess_exit_2_one_line_no_traceback(case, good_store, store_copy, tmp_path):
    """The installed entry point, as a user runs it (fresh interpreter, real stderr)."""
    spec, needles = {c[0]: (c[1], c[2]) for c in PARAMS_CASES}[case]
    params = _params_with(tmp_path, good_store, spec) if isinstance(spec, str) else _params_with(tmp_path, good_store,
                                                                                                  **spec)
    proc = run_cli_subprocess(["stage", "extract", "--feature", "logmel40", "--manifest", good_store["manifest"],
                               "--out", store_copy, "--params", params, "--no-progress"], cwd=tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, None, *needles)
    assert sha256_file(store_copy) == good_store["sha"]


def test_audio_config_refuses_bad_values_directly():
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        AudioConfig(sample_rate=0)
    with pytest.raises(ValueError, match="unknown key"):
        AudioConfig(**{"samplerate": 16000})
    assert AudioConfig(8000, "kaiser_best").to_dict() == {"sample_rate": 8000, "res_type": "kaiser_best",
                                                          "downmix": "mean"}


def test_raw_samples_at_the_wrong_rate_are_refused_by_extractors(tmp_path):
    """An extractor handed file samples without load_audio (a 44.1 kHz array) says what to do."""
    data, _ = sf.read(str(write_wav(tmp_path / "x.wav", tone(0.2, 44100), 44100)), dtype="float32")
    with pytest.raises(ValueError, match="needs 16000 Hz mono; load it with features.audio.load_audio"):
        get_extractor("logmel40").extract(data, 44100)
