"""Cross-corpus evaluation: the ``combined`` adapter and the ``cross_corpus`` fold plan, on the demo corpus and a
handful of real RAVDESS files (read in place from ../shared/corpora/ravdess, never copied)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.corpus.combined import parse_corpora, reconcile_labels
from pipeline.corpus.corpora import build_manifest
from pipeline.corpus.folds import FoldError, make_folds
from pipeline.corpus.manifest import ManifestError
from pipeline.extraction.extract import audio_root_of
from tests.conftest import RAVDESS

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["ang", "hap", "neu", "sad"]


def test_crosscorpus_params_are_valid():
    """params.crosscorpus.yaml: its corpora parse, every model runs the cross_corpus plan on extracted features."""
    import models
    from pipeline.core.params import load_params

    p = load_params(ROOT / "params.crosscorpus.yaml")
    ds = p["dataset"]
    assert ds["name"] == "combined" and [c.id for c in parse_corpora(ds["options"]["corpora"])] == ["demo", "rav"]
    assert ds["options"]["classes"] == CLASSES and p["folds"]["plans"] == ["cross_corpus"]
    assert p["folds"]["options"]["cross_corpus"]["test"] == "rav"
    for name in p["train"]["models"]:
        req = models.requirements(name, p["models"].get(name))
        assert req.fold_plan == "cross_corpus", name
        assert set(req.features) <= set(p["extract"]["features"]), name


def test_reconcile_lists_every_unmapped_label_of_every_corpus():
    with pytest.raises(ManifestError) as e:
        reconcile_labels({"a": ["ang", "happy", "cal"], "b": ["neu", "fru"]}, CLASSES, {"a": {"cal": None}})
    msg = str(e.value)
    assert "a: ['happy'] not mapped" in msg and "b: ['fru'] not mapped" in msg and "cal" not in msg
    with pytest.raises(ManifestError, match=r"targets \['happy→joy'\] are not classes"):
        reconcile_labels({"a": ["happy"]}, CLASSES, {"a": {"happy": "joy"}})
    maps = reconcile_labels({"a": ["ang", "happy", "cal"]}, CLASSES, {"a": {"happy": "hap", "cal": None}})
    assert maps == {"a": {"ang": "ang", "happy": "hap", "cal": None}}


def test_corpora_entries_are_checked():
    ok = {"id": "d", "name": "demo", "root": "x"}
    with pytest.raises(ManifestError, match="at least two"):
        parse_corpora([ok])
    with pytest.raises(ManifestError, match="unique"):
        parse_corpora([ok, ok])
    with pytest.raises(ManifestError, match="must be letters"):
        parse_corpora([ok, {**ok, "id": "a:b"}])
    with pytest.raises(ManifestError, match="unknown dataset 'nope'"):
        parse_corpora([ok, {**ok, "id": "e", "name": "nope"}])
    with pytest.raises(ManifestError, match=r"unknown key\(s\) \['labels'\]"):
        parse_corpora([ok, {**ok, "id": "e", "labels": {}}])


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    """A small demo corpus and 24 RAVDESS utterances (2 actors × 4 shared classes × 2, + 8 'calm' to drop), as a
    CSV of absolute paths into the shared copy."""
    if not (RAVDESS / "manifest.csv").is_file():
        pytest.skip(f"RAVDESS not found at {RAVDESS} (set EMOFLOW_RAVDESS to the folder holding manifest.csv)")
    from pipeline.corpus.demo_corpus import generate_demo_corpus

    root = tmp_path_factory.mktemp("cc")
    generate_demo_corpus(root / "demo", seed=1, n_speakers=4, n_sessions=2, utts_per_speaker=8, min_duration=1.0,
                         max_duration=1.5)
    rav = pd.read_csv(RAVDESS / "manifest.csv", dtype=str, keep_default_na=False)
    sub = pd.concat([rav[(rav.speaker == s) & (rav.label == lab)].head(2)
                     for s in ("01", "02") for lab in (*CLASSES, "cal")])
    sub["path"] = [str(RAVDESS / p) for p in sub["path"]]
    sub.to_csv(root / "rav.csv", index=False)
    corpora = [{"id": "demo", "name": "demo", "root": str(root / "demo")},
               {"id": "rav", "name": "manifest", "root": str(root / "rav.csv"), "label_map": {"cal": None}}]
    return root, corpora


def test_combined_manifest_prefixes_ids_and_keeps_the_corpus(two_corpora):
    root, corpora = two_corpora
    df = build_manifest("combined", root / "demo", corpora=corpora, classes=CLASSES)
    counts = df.groupby("corpus")["label"].value_counts().to_dict()
    assert counts == {**{("demo", c): 8 for c in CLASSES}, **{("rav", c): 4 for c in CLASSES}}  # calm dropped
    assert df["utt_id"].is_unique and all(u.split(":")[0] == c for u, c in zip(df["utt_id"], df["corpus"],
                                                                               strict=True))
    assert set(df.loc[df.corpus == "rav", "speaker"]) == {"rav:01", "rav:02"}
    audio = audio_root_of(root / "demo")
    assert all((audio / p).is_file() for p in df["path"])  # demo paths relative to the root, RAVDESS absolute
    assert df.loc[df.corpus == "demo", "path"].str.startswith("wav/").all()
    with pytest.raises(ManifestError, match=r"rav: \['cal'\] not mapped"):
        build_manifest("combined", root / "demo", corpora=[corpora[0], {**corpora[1], "label_map": {}}],
                       classes=CLASSES)


def test_cross_corpus_plan_tests_on_the_unseen_corpus(two_corpora):
    root, corpora = two_corpora
    df = build_manifest("combined", root / "demo", corpora=corpora, classes=CLASSES)
    f = make_folds("cross_corpus", df, seed=0, test="rav").merge(df[["utt_id", "corpus", "speaker"]], on="utt_id")
    assert f["fold"].unique().tolist() == [0]
    assert set(f.loc[f.split == "test", "corpus"]) == {"rav"} and (f.corpus == "rav").sum() == 16
    assert set(f.loc[f.split != "test", "corpus"]) == {"demo"}
    val, train = (set(f.loc[f.split == s, "speaker"]) for s in ("val", "train"))
    assert len(val) == 1 and not val & train  # 10 % of 4 demo speakers → 1, never also a training speaker
    both = make_folds("cross_corpus", df, seed=0, test=["demo", "rav"])
    assert (both[both.split == "test"].groupby("utt_id").size() == 1).all()  # each utterance tested once
    with pytest.raises(FoldError, match="must name corpora"):
        make_folds("cross_corpus", df, test="iemocap")
    with pytest.raises(FoldError, match=r"missing column\(s\) \['corpus'\]"):
        make_folds("cross_corpus", df.drop(columns="corpus"), test="rav")


def test_demo_to_ravdess_through_the_pipeline_stages(two_corpora, prefect_harness, tmp_path, monkeypatch):
    """manifest → folds → extract → train (the Prefect flow) → report, the stages `dvc repro` runs."""
    from pipeline.cli import stages

    root, corpora = two_corpora
    params = yaml.safe_load((ROOT / "params.crosscorpus.yaml").read_text())
    params["dataset"].update(root=str(root / "demo"), options={"classes": CLASSES, "corpora": corpora})
    params["extract"]["features"] = ["functionals"]
    params["train"]["models"] = ["classical"]
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "data"
    stages.manifest(p, d / "manifest.parquet")
    stages.folds(p, "cross_corpus", d / "manifest.parquet", d / "folds" / "cross_corpus.parquet")
    stages.extract(p, "functionals", d / "manifest.parquet", d / "features" / "functionals.h5", progress=False)
    stages.train(p, "classical", d / "manifest.parquet", d / "folds", d / "features", tmp_path / "results",
                 storage_dir=tmp_path / ".emoflow", runs_dir=tmp_path / "runs")
    preds = pd.read_parquet(tmp_path / "results" / "classical" / "predictions.parquet")
    assert len(preds) == 16 and preds["utt_id"].str.startswith("rav:").all()  # tested on RAVDESS only
    stages.report(p, tmp_path / "results", tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert "| classical | demo+ravdess |" in report and "cross_corpus (1)" in report

