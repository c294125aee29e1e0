"""Baselines and small-corpus settings: the classical LR (closed form), the frozen-encoder probe, training-fold
normalisation, balanced class weights and input swaps — through the real store and training loop."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import models
from features.store import FeatureReader, FeatureWriter, FileMeta
from pipeline.corpus.folds import make_folds, write_folds
from pipeline.corpus.manifest import write_manifest
from pipeline.training.data import fit_normalizer, make_views
from pipeline.training.train import loss_weights, train_fold

LABELS = ("ang", "hap", "neu", "sad")


def _store(root, feature: str, arrays: dict[str, np.ndarray], frame_shift=None):
    sha = {u: f"{i:064x}" for i, u in enumerate(arrays)}
    dim = int(next(iter(arrays.values())).shape[-1])
    meta = FileMeta(feature, "1", {"synthetic": True}, f"cfg-{feature}", dim, frame_shift, "audio")
    with FeatureWriter(root / "features" / f"{feature}.h5", meta) as w:
        w.plan(sha)
        w.write_batch(arrays, sha)
        w.commit(sha)


def _corpus(root, n=96, seed=0):
    rng = np.random.default_rng(seed)
    utts = [f"u{i:03d}" for i in range(n)]
    labels = [LABELS[i % 4] for i in range(n)]
    m = pd.DataFrame({"utt_id": utts, "path": [f"{u}.wav" for u in utts], "start": np.nan, "end": np.nan,
                      "duration": 1.0, "label": labels, "speaker": [f"s{(i // 4) % 8}" for i in range(n)],
                      "session": [f"s{(i // 4) % 8}" for i in range(n)], "gender": "F",
                      "subset": "", "transcript": "", "audio_sha256": [f"{i:064x}" for i in range(n)]})
    write_manifest(m, root / "manifest.parquet")
    folds = make_folds("group_kfold", m, seed=0, n_splits=4, val_groups=1, balance=None)
    write_folds(folds, root / "folds" / "group_kfold.parquet")
    return m, folds, rng


def test_classical_fit_equals_sklearn_and_selects_c_on_validation():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    x = rng.normal(size=(200, 6)) * [1, 10, 100, 1, 1, 1] + np.eye(4, 6)[y] * 2.0
    model = models.create_model("classical", input_dim=6, c_grid=[0.1, 1.0]).eval()
    rec = model.fit_arrays(x[:150], y[:150], x[150:], y[150:])
    assert rec["C"] in (0.1, 1.0) and len(rec["grid"]) == 2
    sc = StandardScaler().fit(x[:150])
    ref = LogisticRegression(C=rec["C"], max_iter=5000, class_weight="balanced").fit(sc.transform(x[:150]), y[:150])
    with torch.no_grad():
        ours = torch.softmax(model(torch.as_tensor(x[150:], dtype=torch.float32)), dim=1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(sc.transform(x[150:])), atol=1e-4)


def test_classical_through_train_fold_learns_from_a_vector_feature(tmp_path):
    m, folds, rng = _corpus(tmp_path)
    arrays = {}
    for u, lab in zip(m["utt_id"], m["label"], strict=True):
        v = rng.normal(size=8).astype(np.float32)
        v[LABELS.index(lab)] += 3.0
        arrays[u] = v
    _store(tmp_path, "functionals", arrays)
    r = train_fold("classical", 0, manifest=m, folds=folds, features_dir=tmp_path / "features",
                   model_params={}, train_params={"seed": 0}, log=lambda s: None)
    assert r.model_config["input_dim"] == 8  # dimension read from the store
    assert r.test["ua"] > 80 and sum(h["selected"] for h in r.history) == 1  # one C chosen, on validation
    assert set(r.predictions) >= {"utt_id", "pred", "prob_ang"}


def test_fold_normalisation_uses_the_training_split_only(tmp_path):
    m, folds, rng = _corpus(tmp_path, n=40)
    arrays = {u: (rng.normal(size=(int(rng.integers(5, 15)), 3)) * 4 + 7).astype(np.float32) for u in m["utt_id"]}
    _store(tmp_path, "logmel40", arrays, frame_shift=0.01)
    reader = FeatureReader(tmp_path / "features" / "logmel40.h5")
    views = make_views(models.get_model_info("ilt").input_specs(), {})
    train = list(folds[(folds.fold == 0) & (folds.split == "train")]["utt_id"])
    norm = fit_normalizer("fold", {"logmel40": reader}, views, train)
    frames = np.concatenate([arrays[u] for u in train])
    np.testing.assert_allclose(norm.stats["x"][0], frames.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.stats["x"][1], frames.std(0), rtol=1e-4)
    test_u = folds[(folds.fold == 0) & (folds.split == "test")]["utt_id"].iloc[0]
    z = norm("x", arrays[test_u], "sequence")
    np.testing.assert_allclose(z, (arrays[test_u] - frames.mean(0)) / (frames.std(0) + 1e-5), rtol=1e-4)
    cmvn = fit_normalizer("utterance", {"logmel40": reader}, views, train)("x", arrays[test_u], "sequence")
    np.testing.assert_allclose(cmvn.mean(0), 0, atol=1e-5)
    assert fit_normalizer(None, {}, views, train) is None
    with pytest.raises(ValueError, match="normalize must be"):
        fit_normalizer("global", {}, views, train)


def test_speaker_normalisation_uses_each_speakers_own_frames(tmp_path):
    m, folds, rng = _corpus(tmp_path, n=40)
    offset = {s: rng.normal(size=3) * 20 for s in m["speaker"].unique()}  # a level per speaker, not per class
    spk = dict(zip(m["utt_id"], m["speaker"], strict=True))
    arrays = {u: (rng.normal(size=(int(rng.integers(5, 15)), 3)) + offset[spk[u]]).astype(np.float32)
              for u in m["utt_id"]}
    _store(tmp_path, "logmel40", arrays, frame_shift=0.01)
    reader = FeatureReader(tmp_path / "features" / "logmel40.h5")
    views = make_views(models.get_model_info("ilt").input_specs(), {})
    train = list(folds[(folds.fold == 0) & (folds.split == "train")]["utt_id"])
    test_u = folds[(folds.fold == 0) & (folds.split == "test")]["utt_id"].iloc[0]
    assert spk[test_u] not in {spk[u] for u in train}  # a speaker never seen in training
    norm = fit_normalizer("speaker", {"logmel40": reader}, views, train, speaker_of=spk)
    own = np.concatenate([arrays[u] for u in m["utt_id"] if spk[u] == spk[test_u]])
    z = norm("x", arrays[test_u], "sequence", test_u)
    np.testing.assert_allclose(z, (arrays[test_u] - own.mean(0)) / (own.std(0) + 1e-5), rtol=1e-4, atol=1e-5)
    frames = np.concatenate([arrays[u] for u in train])  # the fold statistics: the fallback
    np.testing.assert_allclose(norm("x", arrays[test_u], "sequence", "unknown-utterance"),
                               (arrays[test_u] - frames.mean(0)) / (frames.std(0) + 1e-5), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="speaker of every utterance"):
        fit_normalizer("speaker", {"logmel40": reader}, views, train)


def test_speaker_normalisation_removes_a_speaker_level_that_fold_statistics_keep(tmp_path):
    m, folds, rng = _corpus(tmp_path, n=96)
    offset = {s: rng.normal(size=8) * 6 for s in m["speaker"].unique()}
    arrays = {}
    for u, lab, s in zip(m["utt_id"], m["label"], m["speaker"], strict=True):
        v = rng.normal(size=8) * 0.5 + offset[s]
        v[LABELS.index(lab)] += 1.5
        arrays[u] = v.astype(np.float32)
    _store(tmp_path, "functionals", arrays)
    ua = {mode: np.mean([train_fold("classical", k, manifest=m, folds=folds, features_dir=tmp_path / "features",
                                    model_params={}, train_params={"seed": 0, "normalize": mode},
                                    log=lambda s: None).test["ua"] for k in range(4)])
          for mode in ("fold", "speaker")}
    assert ua["speaker"] > 90 and ua["speaker"] > ua["fold"] + 20, ua


def test_balanced_class_weights():
    w = loss_weights({"class_weights": "balanced"}, [0, 0, 1, 2], 3, torch.device("cpu"))
    np.testing.assert_allclose(w.numpy(), [4 / 6, 4 / 3, 4 / 3])
    assert loss_weights({"class_weights": None}, [0, 1], 2, torch.device("cpu")) is None


def test_probe_keeps_the_layer_axis_and_learns_layer_weights(tmp_path):
    m, folds, rng = _corpus(tmp_path, n=64)
    arrays = {}
    for u, lab in zip(m["utt_id"], m["label"], strict=True):
        a = rng.normal(size=(int(rng.integers(6, 12)), 3, 8)).astype(np.float32)
        a[:, 2, LABELS.index(lab)] += 3.0  # only layer 2 carries the class
        arrays[u] = a
    _store(tmp_path, "whisper", arrays, frame_shift=0.02)
    r = train_fold("probe", 0, manifest=m, folds=folds, features_dir=tmp_path / "features",
                   model_params={}, train_params={"epochs": 15, "patience": None, "lr": 0.01, "batch_size": 8, "seed": 0},
                   log=lambda s: None)
    assert r.model_config["n_layers"] == 3 and r.model_config["input_dim"] == 8
    w = r.extras["layer_weights"]
    assert len(w) == 3 and abs(sum(w) - 1) < 1e-5
    assert r.extras["normalize"] == "fold" and r.test["ua"] > 75
    assert int(np.argmax(w)) == 2  # the weighted sum found the informative layer


def test_input_swaps_are_checked_and_resolved_once():
    req = models.requirements("ks_transformer", {"inputs": {"audio": "whisper"}, "fold_plan": "group_kfold"})
    assert req.inputs == {"audio": "whisper", "text": "roberta"} and req.swapped == {"audio": "whisper"}
    assert req.fold_plan == "group_kfold"
    with pytest.raises(ValueError, match="'video' is not an input of ks_transformer"):
        models.requirements("ks_transformer", {"inputs": {"video": "whisper"}})
    with pytest.raises(ValueError, match="gives a vector, but ks_transformer's 'audio' takes a sequence"):
        models.requirements("ks_transformer", {"inputs": {"audio": "functionals"}})
    # the swap is not a config field: the model builds as before
    assert models.create_model("classical", input_dim=4, inputs={"x": "functionals"}).linear.in_features == 4


def test_cache_in_memory_changes_nothing_but_speed(tmp_path):
    m, folds, rng = _corpus(tmp_path, n=32)
    arrays = {u: rng.normal(size=(int(rng.integers(6, 12)), 2, 4)).astype(np.float32) for u in m["utt_id"]}
    _store(tmp_path, "whisper", arrays, frame_shift=0.02)
    runs = [train_fold("probe", 0, manifest=m, folds=folds, features_dir=tmp_path / "features", model_params={},
                       train_params={"epochs": 2, "seed": 0, "cache_in_memory": c}, log=lambda s: None)
            for c in (False, True)]
    assert runs[0].predictions == runs[1].predictions and runs[0].history == runs[1].history


def test_a_models_label_map_reads_corpus_labels_and_drops_the_rest(tmp_path):
    """Paper E's protocol on IEMOCAP: excited as happy, happy dropped — per model, from the corpus labels."""
    from pipeline.corpus.manifest import read_manifest
    from pipeline.orchestration.flows import apply_label_map, label_mapping

    m, folds, _ = _corpus(tmp_path, n=32)
    m["corpus_label"] = ["exc" if (lab == "hap" and (i // 4) % 2) else lab for i, lab in enumerate(m["label"])]
    write_manifest(m, tmp_path / "manifest.parquet")
    back = read_manifest(tmp_path / "manifest.parquet")
    assert list(back["corpus_label"]) == list(m["corpus_label"])  # kept on disk when it differs from label
    paper_e = {"neu": "neu", "exc": "hap", "ang": "ang", "sad": "sad"}
    m2, f2 = apply_label_map(back, folds, paper_e)
    assert set(m2["corpus_label"]) == {"neu", "exc", "ang", "sad"} and set(m2["label"]) == {"neu", "hap", "ang", "sad"}
    assert set(f2["utt_id"]) == set(m2["utt_id"]) and f2.groupby("fold").size().nunique() == 1
    assert label_mapping(m2) == dict(sorted(paper_e.items()))
    assert label_mapping(back)["exc"] == "hap" and label_mapping(back)["hap"] == "hap"  # the global 4-class map
    plain = m.drop(columns="corpus_label")
    write_manifest(plain, tmp_path / "plain.parquet")
    assert list(read_manifest(tmp_path / "plain.parquet")["corpus_label"]) == list(plain["label"])


def test_probe_closed_form_fit_equals_logistic_regression_on_pooled_statistics(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    m, folds, rng = _corpus(tmp_path, n=64)
    arrays = {}
    for u, lab in zip(m["utt_id"], m["label"], strict=True):
        a = rng.normal(size=(int(rng.integers(6, 12)), 2, 4)).astype(np.float32)
        a[:, 1, LABELS.index(lab)] += 1.5
        arrays[u] = a
    _store(tmp_path, "whisper", arrays, frame_shift=0.02)
    r = train_fold("probe", 0, manifest=m, folds=folds, features_dir=tmp_path / "features",
                   model_params={"c_grid": [0.1]}, train_params={"fit": "sklearn", "normalize": "none", "seed": 0},
                   log=lambda s: None)
    # the same recipe by hand: mean+std over frames of the layer mean, standardised, LR(C=0.1, balanced)
    def pooled(u):
        a = arrays[u].astype(np.float64).mean(axis=1)
        return np.concatenate([a.mean(0), a.std(0)])
    split = folds[folds.fold == 0].set_index("utt_id")["split"]
    tr = [u for u in m["utt_id"] if split[u] == "train"]
    sc = StandardScaler().fit([pooled(u) for u in tr])
    clf = LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced").fit(
        sc.transform([pooled(u) for u in tr]), [LABELS.index(lab) for lab in m.set_index("utt_id").loc[tr, "label"]])
    te = r.predictions["utt_id"]
    ref = clf.predict_proba(sc.transform([pooled(u) for u in te]))
    ours = np.stack([r.predictions[f"prob_{lab}"] for lab in sorted(LABELS)], axis=1)
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_a_baseline_on_another_models_plan_is_its_own_run_and_the_report_pairs_them(tmp_path):
    """train.baselines through the stage entry the generated train@classical-<plan> calls: the run lands in
    results/<name>/, says which model and plan it is, and the report pairs it with the model on that plan only."""
    import yaml

    from pipeline.cli import stages
    from pipeline.orchestration.dvc_stages import all_items
    from pipeline.orchestration.report import write_report

    m, _, rng = _corpus(tmp_path, n=64)
    write_folds(make_folds("group_kfold", m, seed=1, n_splits=2, val_groups=1, balance=None),
                tmp_path / "folds" / "other.parquet")
    vectors, frames = {}, {}
    for u, lab in zip(m["utt_id"], m["label"], strict=True):
        vectors[u] = rng.normal(size=8).astype(np.float32)
        vectors[u][LABELS.index(lab)] += 2.0
        frames[u] = rng.normal(size=(6, 2, 4)).astype(np.float32)
        frames[u][:, 1, LABELS.index(lab)] += 1.0
    _store(tmp_path, "functionals", vectors)
    _store(tmp_path, "whisper", frames, frame_shift=0.02)
    params = {"dataset": {"name": "demo"},
              "models": {"classical": {"fold_plan": "group_kfold"},
                         "probe": {"fold_plan": "other", "c_grid": [0.1], "train": {"fit": "sklearn"}}},
              "train": {"models": ["classical", "probe"], "baselines": ["classical"], "seed": 0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert list(all_items(params)) == ["classical", "probe", "classical-other"]  # the stages dvc.yaml would get

    res = tmp_path / "results"
    args = (tmp_path / "params.yaml", tmp_path / "manifest.parquet", tmp_path / "folds", tmp_path / "features", res)
    stages.train(args[0], "classical", *args[1:])
    stages.train(args[0], "classical", *args[1:], plan="other", name="classical-other")
    stages.train(args[0], "probe", *args[1:])

    run = json.loads((res / "classical-other" / "run.json").read_text())
    assert (run["model"], run["run_name"], run["fold_plan"]) == ("classical", "classical-other", "other")
    assert "run_name" not in json.loads((res / "classical" / "run.json").read_text())
    text = write_report(res, tmp_path / "report.md").read_text()
    assert all(f"| {r} | demo |" in text for r in ("classical", "classical-other", "probe")), text
    verdicts = [ln for ln in text.splitlines() if "UA points" in ln]
    assert len(verdicts) == 1 and "classical-other**" in verdicts[0] and "probe**" in verdicts[0], verdicts
