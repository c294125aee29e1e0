"""`emoflow predict` / `emoflow export`: a real (tiny) run — demo audio → manifest → folds → logmel40 → the
Prefect cross_validate flow — then prediction on the run's own audio files, compared with its predictions.parquet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from models import tiny_config
from pipeline.orchestration.predict import collect_inputs, ensemble, extract_inputs, predict
from pipeline.training.bundle import PredictError, export_predictor, load_bundle, load_run

torch.set_num_threads(1)
TRAIN = {"epochs": 2, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1, "normalize": "fold"}


def build_run(root: Path, model: str = "ilt", feature: str = "logmel40", model_params: dict | None = None,
              train: dict | None = None, columns=None) -> dict:
    """The smallest real pipeline: 16 synthetic demo utterances, 2 folds of random_55_25_20, one feature set
    (``columns``: manifest → manifest with extra columns, e.g. V/A/D ratings)."""
    from features import get_extractor
    from features.audio import AudioConfig
    from pipeline.corpus.corpora import build_manifest
    from pipeline.corpus.demo_corpus import generate_demo_corpus
    from pipeline.corpus.folds import make_folds, write_folds
    from pipeline.corpus.manifest import write_manifest
    from pipeline.extraction.extract import extract_features
    from pipeline.orchestration.flows import run_cross_validation

    corpus = root / "corpus"
    if not (corpus / "metadata.csv").is_file():
        generate_demo_corpus(corpus, n_speakers=2, n_sessions=1, utts_per_speaker=8, min_duration=0.6,
                             max_duration=1.2)
    manifest = build_manifest("demo", corpus)
    if columns is not None:
        manifest = columns(manifest)
    write_manifest(manifest, root / "manifest.parquet")
    folds = make_folds("random_55_25_20", manifest, seed=0, n_splits=2, val_fraction=0.25)
    write_folds(folds, root / "folds" / "random_55_25_20.parquet")
    extract_features(get_extractor(feature), manifest, root / "features" / f"{feature}.h5", audio_root=corpus,
                     audio=AudioConfig(), jobs=1, progress=False)
    run_cross_validation(
        model, manifest_path=root / "manifest.parquet", folds_dir=root / "folds", features_dir=root / "features",
        results_dir=root / "results",
        params={"models": {model: model_params or tiny_config(model)}, "train": {**TRAIN, **(train or {})},
                "dataset": {"name": "demo"}},
        storage_dir=root / "storage", runs_dir=root / "runs", plan="random_55_25_20",
    )
    return {"root": root, "corpus": corpus, "manifest": manifest, "results": root / "results", "model": model,
            "preds": pd.read_parquet(root / "results" / model / "predictions.parquet")}


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("predict"))


def _files_of(run: dict, utt_ids) -> list[str]:
    m = run["manifest"].set_index("utt_id")
    return [str(run["corpus"] / m.loc[u, "path"]) for u in utt_ids]


def _prob_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("prob_")]


def test_fold_checkpoint_reproduces_cv_predictions(run, tmp_path):
    p = load_run("ilt", run["results"])
    assert sorted(p.folds) == [0, 1] and all(fm.normalization for fm in p.folds.values())  # normalize: fold
    for fold in (0, 1):
        cv = run["preds"][run["preds"]["fold"] == fold].sort_values("utt_id")
        out = predict(p, collect_inputs(_files_of(run, cv["utt_id"])), fold=fold, store_dir=tmp_path / "store")
        np.testing.assert_allclose(out[_prob_cols(out)].to_numpy(), cv[_prob_cols(cv)].to_numpy(), atol=1e-5)
        assert out["pred"].tolist() == cv["pred"].tolist()
        assert (out["folds"] == str(fold)).all()


def test_ensemble_batch_size_and_store_reuse(run, tmp_path):
    p = load_run("ilt", run["results"])
    inputs = collect_inputs([run["corpus"] / "wav"])  # a folder: every file of the corpus
    assert len(inputs) == len(run["manifest"])
    readers, ids, computed = extract_inputs(p, inputs, tmp_path / "s")
    assert computed == {"logmel40": len(inputs)}
    one, many = (ensemble(p, readers, ids, batch_size=b) for b in (1, 16))
    assert (one.argmax(axis=1) == many.argmax(axis=1)).all()
    np.testing.assert_allclose(one, many, atol=1e-5)
    # the ensemble is the mean of the two folds' probabilities, which differ
    f0, f1 = (ensemble(p, readers, ids, fold=k) for k in (0, 1))
    np.testing.assert_allclose(one, (f0 + f1) / 2, atol=1e-6)
    assert np.abs(f0 - f1).max() > 1e-3
    np.testing.assert_allclose(one.sum(axis=1), 1.0, atol=1e-6)
    for r in readers.values():
        r.close()
    # a second call on the same store computes nothing (content ids: a copy under another name is reused too)
    shutil.copy(inputs["path"][0], tmp_path / "renamed.wav")
    again = collect_inputs([*inputs["path"][:3], tmp_path / "renamed.wav"])
    readers, ids2, computed = extract_inputs(p, again, tmp_path / "s")
    assert computed == {"logmel40": 0} and ids2[3] == ids2[0] == ids[0]
    assert len(list((tmp_path / "s").glob("logmel40-*.h5"))) == 1
    for r in readers.values():
        r.close()


def test_bad_inputs(run, tmp_path):
    from features.audio import AudioError

    p = load_run("ilt", run["results"])
    src = _files_of(run, run["preds"]["utt_id"][:1])[0]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    with pytest.raises(AudioError, match="broken.wav"):
        predict(p, collect_inputs([src, bad]))
    # another sample rate is resampled by the training audio settings: same length, close probabilities
    x, sr = sf.read(src, dtype="float32")
    import librosa

    sf.write(tmp_path / "at44k.wav", librosa.resample(x, orig_sr=sr, target_sr=44100), 44100)
    sf.write(tmp_path / "silence.wav", np.zeros(sr, np.float32), sr)
    out = predict(p, collect_inputs([src, tmp_path / "at44k.wav", tmp_path / "silence.wav"]))
    assert abs(out["duration_s"][1] - out["duration_s"][0]) < 1e-3
    np.testing.assert_allclose(out[_prob_cols(out)].iloc[1], out[_prob_cols(out)].iloc[0], atol=0.05)
    assert out["warning"][0] == "" and "silent" in out["warning"][2] and out["pred"][2] in p.labels
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="no audio files"):
        collect_inputs([tmp_path / "empty"])


def test_missing_or_partial_run(run, tmp_path):
    with pytest.raises(PredictError, match=r"train it first .*dvc repro train@ilt"):
        load_run("ilt", tmp_path / "nowhere")
    partial = tmp_path / "results"
    shutil.copytree(run["results"], partial)
    (partial / "ilt" / "run.json").unlink()
    with pytest.raises(PredictError, match=r"partial run \(run\.json missing\)"):
        load_run("ilt", partial)
    shutil.copy(run["results"] / "ilt" / "run.json", partial / "ilt" / "run.json")
    rec = json.loads((partial / "ilt" / "run.json").read_text())
    ckpt = Path(rec["checkpoints"]["1"])
    moved = ckpt.with_name(ckpt.name + ".moved")
    ckpt.rename(moved)
    try:
        with pytest.raises(PredictError, match=r"fold 1: .*best\.safetensors is missing"):
            load_run("ilt", partial)
    finally:
        moved.rename(ckpt)
    rec["train"]["seed_ensemble"] = 2  # a seed ensemble's folds are read from member dirs, which this run lacks
    (partial / "ilt" / "run.json").write_text(json.dumps(rec))
    with pytest.raises(PredictError, match=r"fold 0: .*member0/best\.safetensors is missing"):
        load_run("ilt", partial)


def test_seed_ensemble_run_predicts_and_exports_with_every_member(prefect_harness, tmp_path):
    """predict/export of a seed_ensemble run give the run's own test predictions: the members' mean probabilities."""
    run = build_run(tmp_path / "ens", train={"seed_ensemble": 2})
    p = load_run("ilt", run["results"])
    assert all(len(fm.states) == 2 for fm in p.folds.values())
    assert any((a != b).any() for a, b in zip(p.folds[0].states[0].values(), p.folds[0].states[1].values(),
                                              strict=True))  # two seeds, two models
    bundle = load_bundle(export_predictor(p, tmp_path / "exported"))
    assert [len(fm.states) for fm in bundle.folds.values()] == [2, 2]
    cv = run["preds"][run["preds"]["fold"] == 1].sort_values("utt_id")
    for predictor in (p, bundle):
        out = predict(predictor, collect_inputs(_files_of(run, cv["utt_id"])), fold=1, store_dir=tmp_path / "store")
        np.testing.assert_allclose(out[_prob_cols(out)].to_numpy(), cv[_prob_cols(cv)].to_numpy(), atol=1e-5)
        assert out["pred"].tolist() == cv["pred"].tolist()


def test_export_roundtrip_and_refusal(run, tmp_path):
    p = load_run("ilt", run["results"])
    out = export_predictor(p, tmp_path / "ilt-model")
    files = _files_of(run, run["preds"]["utt_id"][:4])
    a = predict(p, collect_inputs(files))
    # self-contained: with the run's results, feature files and checkpoints out of the way
    shutil.copytree(out, tmp_path / "copy")
    away = [run["root"] / d for d in ("results", "features", "storage")]
    for d in away:
        d.rename(d.with_name(d.name + ".away"))
    try:
        q = load_bundle(tmp_path / "copy")
        b = predict(q, collect_inputs(files))
    finally:
        for d in away:
            d.with_name(d.name + ".away").rename(d)
    np.testing.assert_allclose(a[_prob_cols(a)], b[_prob_cols(b)], atol=1e-7)
    assert json.loads((tmp_path / "copy" / "metrics.json").read_text()) == json.loads(
        (run["results"] / "ilt" / "metrics.json").read_text())
    doc_path = tmp_path / "copy" / "emoflow-model.json"
    doc = json.loads(doc_path.read_text())
    assert doc["features"]["logmel40"]["config"]["n_mels"] == 40 and len(doc["code_version"]) == 64
    assert doc["labels"] == p.labels and doc["run"]["n_folds"] == 2 and sorted(doc["folds"]) == ["0", "1"]
    # a bundle made by another extractor config or code version is refused, naming the mismatch
    doc["features"]["logmel40"]["config_hash"] = "0" * 64
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(PredictError, match=r"feature logmel40: config hash 000000000000 recorded"):
        load_bundle(tmp_path / "copy")
    doc["features"]["logmel40"]["config_hash"] = p.features["logmel40"].config_hash
    doc["code_version"] = "f" * 64
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(PredictError, match=r"code version ffffffffffff recorded.*--force"):
        load_bundle(tmp_path / "copy")
    with pytest.warns(UserWarning, match="code version"):
        assert load_bundle(tmp_path / "copy", force=True).model == "ilt"
    # a damaged copy is named
    (tmp_path / "copy" / "fold0" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(PredictError, match=r"fold0/model\.safetensors: missing or changed"):
        load_bundle(tmp_path / "copy", force=True)


def test_cli_predict_and_export(run, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.main import app

    cli = CliRunner()
    files = _files_of(run, run["preds"]["utt_id"][:2])
    res = cli.invoke(app, ["predict", "--model", "ilt", "--results", str(run["results"]), *files,
                           "--fold", "0", "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "p.csv")
    assert table["file"].tolist() == files and len(_prob_cols(table)) == len(run["preds"]["label"].unique())
    assert Path(files[0]).name in res.output
    res = cli.invoke(app, ["export", "--model", "ilt", "--results", str(run["results"]), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["predict", "--from", str(tmp_path / "m"), *files, "--out", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    assert [r["file"] for r in json.loads((tmp_path / "p.json").read_text())] == files
    res = cli.invoke(app, ["predict", "--model", "ilt", "--results", str(tmp_path / "none"), *files])
    assert res.exit_code == 2 and "error:" in res.output and len(res.output.strip().splitlines()) == 1


def test_transcripts_for_text_models(run, tmp_path):
    from pipeline.training.bundle import FeatureSpec

    p = load_run("ilt", run["results"])
    p.features["glove"] = FeatureSpec("glove", "1", {}, "0" * 64, {}, input="text")  # as a multimodal model has
    files = _files_of(run, run["preds"]["utt_id"][:2])
    with pytest.raises(PredictError, match=r"reads transcripts and 2 input\(s\) have none.*--asr"):
        extract_inputs(p, collect_inputs(files), tmp_path / "s")
    with pytest.raises(PredictError, match="--transcript is for one file"):
        collect_inputs(files, transcript="hello")
    assert collect_inputs(files[:1], transcript="hello")["transcript"].tolist() == ["hello"]
    table = tmp_path / "t.csv"
    pd.DataFrame({"utt_id": ["a", "b"], "path": [Path(f).relative_to(run["corpus"]) for f in files],
                  "transcript": ["one", ""]}).to_csv(table, index=False)
    shutil.copytree(run["corpus"] / "wav", tmp_path / "wav")
    got = collect_inputs(manifest=table)
    assert got["file"].tolist() == ["a", "b"] and got["transcript"][0] == "one" and pd.isna(got["transcript"][1])
    assert got["path"].tolist() == [str(tmp_path / Path(f).relative_to(run["corpus"])) for f in files]


@pytest.mark.slow
def test_asr_fills_only_missing_transcripts(run, tmp_path):
    pytest.importorskip("faster_whisper")
    from pipeline.orchestration.predict import transcribe_missing

    files = _files_of(run, run["preds"]["utt_id"][:2])
    inputs = collect_inputs(files)
    inputs.loc[0, "transcript"] = "given"
    out = transcribe_missing(inputs, tmp_path / "asr.h5")
    assert out["transcript"][0] == "given" and isinstance(out["transcript"][1], str)
    assert inputs["transcript"].isna().sum() == 1  # the caller's table is not changed


@pytest.mark.slow
@pytest.mark.parametrize("model, feature, train", [
    # paper E's segment voting: windows of 0.5 s (the demo utterances are 0.6-1.2 s), logits averaged per utterance
    ("head_fusion", "mfcc13", {"segment_s": 0.5, "train_hop_s": 0.25, "test_hop_s": 0.2, "drop_short": False,
                               "fixed_frames": None, "normalize": None, "subset": "all"}),
    # closed form: the fitted scaler and weights are buffers of the module
    ("classical", "functionals", {"fixed_frames": None, "normalize": None}),
])
def test_other_input_paths_reproduce_cv_predictions(prefect_harness, tmp_path, model, feature, train):
    run = build_run(tmp_path, model, feature, train=train)
    p = load_run(model, run["results"])
    cv = run["preds"][run["preds"]["fold"] == 0].sort_values("utt_id")
    out = predict(p, collect_inputs(_files_of(run, cv["utt_id"])), fold=0)
    np.testing.assert_allclose(out[_prob_cols(out)].to_numpy(), cv[_prob_cols(cv)].to_numpy(), atol=1e-5)
    assert out["pred"].tolist() == cv["pred"].tolist()
    if model == "head_fusion":  # with drop_short (the paper), audio shorter than a window gets no prediction
        x, sr = sf.read(_files_of(run, cv["utt_id"][:1])[0], dtype="float32")
        sf.write(tmp_path / "short.wav", x[: int(0.3 * sr)], sr)
        p.train["drop_short"] = True
        out = predict(p, collect_inputs([tmp_path / "short.wav", *_files_of(run, cv["utt_id"][:1])]))
        assert pd.isna(out["pred"][0]) and "too short" in out["warning"][0] and out["pred"][1] in p.labels


def _with_vad(m: pd.DataFrame) -> pd.DataFrame:
    """Class-related valence/arousal ratings, as tests/pipeline/test_dimensional_training.py gives its corpus."""
    k = m["label"].map({"ang": 0, "hap": 1, "neu": 2, "sad": 3}).astype(float)
    rng = np.random.default_rng(1)
    return m.assign(valence=1.5 + k + rng.normal(0, 0.3, len(m)), arousal=4.5 - k + rng.normal(0, 0.3, len(m)))


@pytest.mark.parametrize("task", ["regression", "multitask"])
def test_dimensional_checkpoints_reproduce_cv_predictions(prefect_harness, tmp_path, task):
    from pipeline.orchestration.predict import format_table

    run = build_run(tmp_path, train={"task": task}, columns=_with_vad)
    p = load_run("ilt", run["results"])
    assert p.task == task and p.targets == ["valence", "arousal"]
    dims = ["pred_valence", "pred_arousal"]
    for fold in (0, 1):
        cv = run["preds"][run["preds"]["fold"] == fold].sort_values("utt_id")
        out = predict(p, collect_inputs(_files_of(run, cv["utt_id"])), fold=fold, store_dir=tmp_path / "store")
        np.testing.assert_allclose(out[dims].to_numpy(), cv[dims].to_numpy(), atol=1e-5)
        if task == "multitask":
            np.testing.assert_allclose(out[_prob_cols(out)].to_numpy(), cv[_prob_cols(cv)].to_numpy(), atol=1e-5)
            assert out["pred"].tolist() == cv["pred"].tolist()
        else:  # no class head: no label, no probabilities
            assert "pred" not in out.columns and not _prob_cols(out)
    assert "pred_arousal" in format_table(out, p.labels)
    # the export keeps the head and the target names
    q = load_bundle(export_predictor(p, tmp_path / "m"))
    assert q.targets == p.targets and json.loads((tmp_path / "m" / "emoflow-model.json").read_text())["targets"] == [
        "valence", "arousal"]
    files = _files_of(run, cv["utt_id"])
    np.testing.assert_allclose(predict(q, collect_inputs(files))[dims], predict(p, collect_inputs(files))[dims],
                               atol=1e-7)


def test_write_table_by_suffix(tmp_path):
    from pipeline.orchestration.predict import format_table, write_table

    df = pd.DataFrame({"file": ["a.wav", "b.wav"], "pred": ["ang", None], "prob_ang": [0.9, np.nan],
                       "prob_sad": [0.1, np.nan], "warning": ["", "too short"]})
    for suffix, read in ((".csv", pd.read_csv), (".parquet", pd.read_parquet),
                         (".json", lambda f: pd.DataFrame(json.loads(Path(f).read_text())))):
        back = read(write_table(df, tmp_path / f"t{suffix}"))
        assert back["file"].tolist() == ["a.wav", "b.wav"] and back["prob_ang"][0] == 0.9
    with pytest.raises(PredictError, match=r"\.csv, \.json or \.parquet"):
        write_table(df, tmp_path / "t.txt")
    text = format_table(df, ["ang", "sad"])
    assert "0.900" in text and "warning: b.wav: too short" in text
