"""Corpus adapters: a miniature IEMOCAP tree in the real formats, the generic CSV/Parquet adapter, the demo adapter."""

from __future__ import annotations

import hashlib
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from pipeline.corpus import corpora
from pipeline.corpus.corpora import CorpusCountWarning, build_manifest, list_datasets
from pipeline.corpus.manifest import ManifestError, MissingAudioError, audio_checksum, validate_manifest


def build_quiet(*args, **kw):
    """build_manifest with the (expected) count warning for mini trees silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorpusCountWarning)
        return build_manifest(*args, **kw)


# ------------------------------------------------------------------------------------------------ IEMOCAP


def test_iemocap_default_4class(mini_iemocap):
    root, truth = mini_iemocap
    with pytest.warns(CorpusCountWarning, match=r"not the published 5531") as rec:
        df = build_manifest("iemocap", root)
    assert "10 utterances" in str(rec[0].message)
    kept = {u for u, t in truth.items() if t["code"] in ("neu", "hap", "exc", "ang", "sad")}
    assert set(df["utt_id"]) == kept and len(kept) == 10
    assert df["utt_id"].tolist() == sorted(kept)  # sorted, stable order
    assert df.attrs["label_counts"] == {"ang": 2, "hap": 4, "neu": 2, "sad": 2}
    for row in df.itertuples():
        t = truth[row.utt_id]
        assert row.label == {"exc": "hap"}.get(t["code"], t["code"])
        assert (row.session, row.speaker, row.gender, row.subset) == (t["session"], t["speaker"], t["gender"], t["subset"])
        assert row.transcript == t["transcript"]
        assert row.path == f"Session{t['session'][-1]}/sentences/wav/{t['dialog']}/{row.utt_id}.wav"
        assert row.duration == pytest.approx(t["duration"])
        assert np.isnan(row.start) and np.isnan(row.end)
        assert row.audio_sha256 == hashlib.sha256((root / row.path).read_bytes()).hexdigest()
    # speaker comes from the last token, not from the dialog's letter
    assert df.set_index("utt_id").loc["Ses01F_impro01_M000", "speaker"] == "Ses01M"
    assert df.set_index("utt_id").loc["Ses02M_script01_1_F000", "speaker"] == "Ses02F"
    # dialog times are carried along as extra columns
    assert df.set_index("utt_id").loc["Ses01F_impro01_F000", "dialog_start"] == pytest.approx(6.2901)
    validate_manifest(df)


def test_iemocap_subset_and_label_maps(mini_iemocap):
    root, truth = mini_iemocap
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusCountWarning)  # only the default 4-class/all protocol is checked
        impro = build_manifest("iemocap", root, subset="improvised")
        scripted = build_manifest("iemocap", root, subset="scripted")
        head = build_manifest("iemocap", root, subset="improvised", label_map="4class_exc")
        custom = build_manifest("iemocap", root, label_map={"fru": "frustrated", "xxx": "none"})
    assert impro["utt_id"].str.contains("_impro").all() and (impro["subset"] == "improvised").all()
    assert scripted["utt_id"].str.contains("_script").all() and (scripted["subset"] == "scripted").all()
    assert len(impro) + len(scripted) == 10
    # head-fusion protocol: exc is happy, hap is dropped (only scripted turns carry hap here)
    assert head.set_index("utt_id").loc["Ses01F_impro01_M000", "label"] == "hap"
    assert len(head) == 4
    assert custom.attrs["label_counts"] == {"frustrated": 2, "none": 2}


def test_iemocap_count_check_passes_when_counts_match(mini_iemocap, monkeypatch):
    root, _ = mini_iemocap
    monkeypatch.setattr(corpora, "IEMOCAP_4CLASS_COUNTS", {"ang": 2, "hap": 4, "neu": 2, "sad": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusCountWarning)
        build_manifest("iemocap", root)


def test_iemocap_parallel_checksums_identical(mini_iemocap):
    root, _ = mini_iemocap
    pd.testing.assert_frame_equal(build_quiet("iemocap", root, jobs=3), build_quiet("iemocap", root))


def test_iemocap_missing_emoevaluation(mini_iemocap):
    root, _ = mini_iemocap
    shutil.rmtree(root / "Session2" / "dialog" / "EmoEvaluation")
    with pytest.raises(ManifestError, match=r"Session2/dialog/EmoEvaluation: EmoEvaluation folder not found"):
        build_manifest("iemocap", root)


def test_iemocap_not_a_release(tmp_path):
    with pytest.raises(ManifestError, match=r"no Session1\.\.Session5 folders"):
        build_manifest("iemocap", tmp_path)
    with pytest.raises(ManifestError, match=r"IEMOCAP root folder not found"):
        build_manifest("iemocap", tmp_path / "nowhere")


def test_iemocap_missing_wav_error_or_skip(mini_iemocap):
    root, _ = mini_iemocap
    wav = root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    wav.unlink()
    with pytest.raises(MissingAudioError, match=r"Ses01F_impro01_F000\.wav") as e:
        build_quiet("iemocap", root)
    assert "missing_audio='skip'" in str(e.value)
    with pytest.warns(UserWarning, match=r"skipping 1 utterance"):
        df = build_quiet("iemocap", root, missing_audio="skip")
    assert "Ses01F_impro01_F000" not in set(df["utt_id"]) and len(df) == 9


def test_iemocap_malformed_label_line_names_file_and_line(mini_iemocap):
    root, _ = mini_iemocap
    f = root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    f.write_text(f.read_text() + "[7.0 - 8.0] Ses01F_impro01_F009 neu\n")
    with pytest.raises(ManifestError, match=r"Ses01F_impro01\.txt:\d+: malformed label line"):
        build_manifest("iemocap", root)


def test_iemocap_missing_transcription_warns_and_leaves_empty(mini_iemocap):
    root, _ = mini_iemocap
    (root / "Session2/dialog/transcriptions/Ses02M_script01_1.txt").unlink()
    with pytest.warns(UserWarning, match=r"Ses02M_script01_1\.txt: transcription file not found"):
        df = build_quiet("iemocap", root)
    t = df.set_index("utt_id")["transcript"]
    assert (t[t.index.str.startswith("Ses02M_script01_1")] == "").all()
    assert t["Ses01M_script01_1_M000"] == "Nothing, I guess."


def test_iemocap_bad_options(mini_iemocap):
    root, _ = mini_iemocap
    with pytest.raises(ManifestError, match=r"subset='impro' is not one of"):
        build_manifest("iemocap", root, subset="impro")
    with pytest.raises(ManifestError, match=r"unknown label_map '5class'"):
        build_manifest("iemocap", root, label_map="5class")
    with pytest.raises(ManifestError, match=r"does not take option\(s\) \['labels'\]"):
        build_manifest("iemocap", root, labels="x")


def test_unknown_dataset_lists_known():
    with pytest.raises(ManifestError, match=r"unknown dataset 'msp'; known datasets: combined, demo, iemocap, manifest"):
        build_manifest("msp", ".")
    assert {"demo", "iemocap", "manifest"} <= set(list_datasets())


# --------------------------------------------------------------------------------------- generic manifest


@pytest.fixture
def csv_corpus(tmp_path, wav_factory):
    root = tmp_path / "corpus"
    for i in range(4):
        wav_factory(root / "audio" / f"s{i}.wav", seconds=0.2 + 0.1 * i, freq=300.0 + 50 * i)
    lists = root / "lists"
    lists.mkdir()
    return root, lists


def test_generic_minimal_csv(csv_corpus):
    root, lists = csv_corpus
    (lists / "all.csv").write_text(
        "path,label\n../audio/s0.wav,angry\n../audio/s1.wav,NA\n" f"{root / 'audio' / 's2.wav'},01\n"
    )
    df = build_manifest("manifest", root, file="lists/all.csv")
    assert df["utt_id"].tolist() == ["s0", "s1", "s2"]  # from the stems
    assert df["path"].tolist() == ["audio/s0.wav", "audio/s1.wav", "audio/s2.wav"]  # relative to root
    assert df["label"].tolist() == ["angry", "NA", "01"]  # labels as written, no NaN/number parsing
    assert (df[["speaker", "session", "gender", "subset", "transcript"]] == "").all().all()
    assert df["duration"].tolist() == pytest.approx([0.2, 0.3, 0.4])
    assert df["audio_sha256"][0] == audio_checksum(root / "audio" / "s0.wav")
    # the table itself as root: its folder is the root; files outside it are stored as absolute POSIX paths
    df2 = build_manifest("manifest", lists / "all.csv")
    assert df2["path"][0] == (root / "audio" / "s0.wav").as_posix()
    assert df2["audio_sha256"].tolist() == df["audio_sha256"].tolist()
    # TSV (transcripts with commas need no quoting there)
    (lists / "all.tsv").write_text("path\tlabel\ttranscript\n../audio/s0.wav\tangry\tWell, no.\n")
    tsv = build_manifest("manifest", root, file="lists/all.tsv")
    assert tsv["transcript"].tolist() == ["Well, no."] and tsv["path"].tolist() == ["audio/s0.wav"]


def test_generic_full_columns_segments_and_gender(csv_corpus):
    root, _ = csv_corpus
    pd.DataFrame(
        {
            "utt_id": ["a", "b", "c"],
            "path": ["audio/s3.wav", "audio/s3.wav", "audio/s1.wav"],
            "label": ["hap", "sad", "neu"],
            "speaker": ["spk1", "spk1", "spk2"],
            "session": ["1", "1", "2"],
            "gender": ["female", "F", "x"],
            "transcript": ["  hello ", "", "bye"],
            "start": ["0.0", "0.25", ""],
            "end": ["0.25", "0.5", ""],
            "extra": ["ignored"] * 3,
        }
    ).to_csv(root / "m.csv", index=False)
    df = build_manifest("manifest", root / "m.csv").set_index("utt_id")
    assert df["duration"].tolist() == pytest.approx([0.25, 0.25, 0.3])
    assert df.loc["a", "audio_sha256"] == audio_checksum(root / "audio/s3.wav", 0.0, 0.25)
    assert df.loc["a", "audio_sha256"] != df.loc["b", "audio_sha256"]
    assert df["gender"].tolist() == ["F", "F", ""]
    assert df.loc["a", "transcript"] == "  hello "  # text kept verbatim
    assert "extra" not in df.columns


def test_generic_parquet_and_label_map(csv_corpus):
    root, _ = csv_corpus
    table = pd.DataFrame({"path": [f"audio/s{i}.wav" for i in range(4)], "label": [1, 2, 3, 8]})
    table.to_parquet(root / "ravdess.parquet")
    lm = {"1": "neu", "2": "neu", "3": "hap"}
    with pytest.raises(ManifestError, match=r"ravdess\.parquet: label\(s\) \['8'\] are not in label_map"):
        build_manifest("manifest", root, file="ravdess.parquet", label_map=lm)
    df = build_manifest("manifest", root, file="ravdess.parquet", label_map=lm, unknown_label="drop")
    assert df.set_index("utt_id")["label"].to_dict() == {"s0": "neu", "s1": "neu", "s2": "hap"}


def test_generic_duplicate_derived_ids(csv_corpus):
    root, _ = csv_corpus
    (root / "audio" / "other").mkdir()
    shutil.copy(root / "audio/s0.wav", root / "audio/other/s0.wav")
    (root / "dup.csv").write_text("path,label\naudio/s0.wav,a\naudio/other/s0.wav,b\n")
    with pytest.raises(ManifestError, match=r"dup\.csv: duplicate utt_id\(s\) \['s0'\].*add a unique utt_id"):
        build_manifest("manifest", root / "dup.csv")


@pytest.mark.parametrize(
    "text, match",
    [
        ("file,label\naudio/s0.wav,a\n", r"bad\.csv: missing column\(s\) \['path'\]"),
        ("path,label\naudio/s0.wav,\n", r"bad\.csv: empty label"),
        ("path,label\naudio/nope.wav,a\n", r"nope\.wav"),
        ("path,label,start,end\naudio/s0.wav,a,0.1,zz\n", r"bad\.csv: column 'end' must be seconds"),
        ("path,label,start,end\naudio/s0.wav,a,0.1,5.0\n", r"s0\.wav: segment end 5\.000 s is past the end"),
        ("path,label,start\naudio/s0.wav,a,0.1\n", r"start and end must both be set"),
    ],
)
def test_generic_bad_tables(csv_corpus, text, match):
    root, _ = csv_corpus
    (root / "bad.csv").write_text(text)
    with pytest.raises(ManifestError, match=match):
        build_manifest("manifest", root / "bad.csv")


def test_generic_needs_a_table(csv_corpus):
    root, _ = csv_corpus
    with pytest.raises(ManifestError, match=r"is a folder; pass file="):
        build_manifest("manifest", root)
    with pytest.raises(ManifestError, match=r"missing\.csv: corpus manifest not found"):
        build_manifest("manifest", root, file="missing.csv")


# ---------------------------------------------------------------------------------------------------- demo


def test_demo_adapter_reads_metadata(tmp_path, wav_factory):
    root = tmp_path / "demo"
    rows = []
    for i in range(6):
        rel = f"wav/spk{i % 3}/u{i}.wav"
        wav_factory(root / rel, seconds=0.1 + 0.05 * i, freq=150.0 + 40 * i)
        rows.append(
            {"utt_id": f"demo_{i:03d}", "path": rel, "label": ["neu", "hap", "ang"][i % 3], "speaker": f"spk{i % 3}",
             "session": f"sess{i % 2 + 1}", "gender": "FM"[i % 2], "transcript": f"sentence number {i}"}
        )
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    df = build_manifest("demo", root)
    assert df["utt_id"].tolist() == [f"demo_{i:03d}" for i in range(6)]
    assert df["path"].tolist() == [r["path"] for r in rows]
    assert df["duration"].tolist() == pytest.approx([0.1 + 0.05 * i for i in range(6)])
    assert df["transcript"].tolist() == [r["transcript"] for r in rows]
    assert df.attrs["dataset"] == "demo"
    pd.DataFrame(rows).drop(columns=["session"]).to_csv(root / "metadata.csv", index=False)
    with pytest.raises(ManifestError, match=r"metadata\.csv: missing column\(s\) \['session'\]"):
        build_manifest("demo", root)


def test_demo_adapter_missing_metadata(tmp_path):
    with pytest.raises(ManifestError, match=r"metadata\.csv: demo corpus metadata not found; generate"):
        build_manifest("demo", tmp_path)


@pytest.mark.filterwarnings("ignore:.*cannot stratify:UserWarning")  # 24 utterances: too few for 10 strata
def test_generated_demo_corpus_end_to_end(tmp_path):
    """The real demo generator's output → manifest → every fold plan (the `dvc repro` path on a fresh machine)."""
    demo = pytest.importorskip("pipeline.corpus.demo_corpus")
    from pipeline.corpus.folds import list_plans, make_folds
    from pipeline.corpus.manifest import read_manifest, write_manifest

    meta = demo.generate_demo_corpus(tmp_path / "demo", seed=1, n_speakers=6, n_sessions=3, utts_per_speaker=4,
                                     min_duration=0.5, max_duration=0.8)
    df = build_manifest("demo", tmp_path / "demo", jobs=2)
    assert sorted(df["utt_id"]) == sorted(meta["utt_id"])
    assert df["session"].nunique() == 3 and set(df["gender"]) <= {"F", "M"}
    assert ((df["duration"] >= 0.5 - 1e-3) & (df["duration"] <= 0.8 + 1e-3)).all()
    back = read_manifest(write_manifest(df, tmp_path / "manifest.parquet"))
    options = {"group_kfold": {"n_splits": 3}}  # its default (6 folds) needs more than the demo's 6 speakers
    for plan in (p for p in list_plans() if p != "cross_corpus"):  # that one needs a combined manifest
        folds = make_folds(plan, back, **options.get(plan, {}))
        assert set(folds["utt_id"]) == set(df["utt_id"])
