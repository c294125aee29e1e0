"""Datasets/collate from the store and the fold training loop (CPU, tiny models, synthetic store)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_model, example_batch, get_model_info, list_models, tiny_config
from pipeline.training.data import (
    DataError,
    InputView,
    add_power_noise_db,
    collate,
    make_segmenting,
    make_views,
    reduce_layers,
    segment_starts,
)
from pipeline.training.train import TrainError, resolve_train_config, train_fold

torch.set_num_threads(1)

FAST = {"epochs": 2, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1}


# ----------------------------------------------------------------------------------------------- collate


def test_collate_pads_sequences_and_masks_padding():
    views = {"x": InputView("x", "logmel40", "sequence", "x_mask")}
    items = [
        {"x": np.ones((3, 2), np.float32), "label": 1, "index": 0},
        {"x": np.full((5, 2), 2, np.float32), "label": 0, "index": 1},
    ]
    b = collate(items, views)
    assert b["x"].shape == (2, 5, 2) and b["x"].dtype == torch.float32
    assert b["x_mask"].tolist() == [[False] * 3 + [True] * 2, [False] * 5]
    assert torch.all(b["x"][0, 3:] == 0) and torch.all(b["x"][0, :3] == 1)
    assert b["label"].tolist() == [1, 0] and b["index"].tolist() == [0, 1]


def test_fixed_len_cuts_and_pads_to_exactly_n():
    views = {"x": InputView("x", "f", "sequence", "x_mask", fixed_len=4)}
    items = [{"x": np.ones((2, 3), np.float32), "label": 0, "index": 0},
             {"x": np.arange(18, dtype=np.float32).reshape(6, 3)[:4], "label": 0, "index": 1}]
    b = collate(items, views)
    assert b["x"].shape == (2, 4, 3)
    assert b["x_mask"][0].tolist() == [False, False, True, True]
    assert not b["x_mask"][1].any()


def test_empty_sequence_becomes_one_unmasked_zero_step():
    views = {"g": InputView("g", "glove", "sequence", "g_mask")}
    b = collate([{"g": np.zeros((0, 4), np.float32), "label": 0, "index": 0}], views)
    assert b["g"].shape == (1, 1, 4) and b["g_mask"].tolist() == [[False]]


def test_phonemes_pad_to_words_and_phones_and_shared_mask_must_agree():
    views = {
        "phonemes": InputView("phonemes", "phonemes", "phonemes", "w_mask"),
        "glove": InputView("glove", "glove", "sequence", "w_mask"),
    }
    items = [
        {"phonemes": np.array([[3, 4, 0], [5, 0, 0]]), "glove": np.ones((2, 2), np.float32), "label": 0, "index": 0},
        {"phonemes": np.array([[6, 7, 8, 9]]), "glove": np.ones((1, 2), np.float32), "label": 1, "index": 1},
    ]
    b = collate(items, views)
    assert b["phonemes"].shape == (2, 2, 4) and b["phonemes"].dtype == torch.long
    assert b["phonemes"][1, 0].tolist() == [6, 7, 8, 9] and b["phonemes"][1, 1].tolist() == [0, 0, 0, 0]
    assert b["w_mask"].tolist() == [[False, False], [False, True]]
    items[1]["glove"] = np.ones((2, 2), np.float32)  # 2 GloVe rows but 1 phoneme word: misaligned
    with pytest.raises(DataError, match="w_mask"):
        collate(items, views)


def test_reduce_layers():
    a = np.stack([np.zeros((5, 4)), np.ones((5, 4)) * 2], axis=1)  # (T=5, L=2, H=4)
    assert reduce_layers(a, "mean").shape == (5, 4) and np.all(reduce_layers(a, "mean") == 1)
    assert np.all(reduce_layers(a, "last") == 2)
    with pytest.raises(DataError):
        reduce_layers(a, "first")


@pytest.mark.parametrize("name", list_models())
def test_collate_builds_what_every_model_accepts(name):
    """For every registered model: items shaped like the store's arrays → collate → the model's batch keys,
    dtypes and a forward pass."""
    cfg = tiny_config(name)
    info = get_model_info(name)
    specs = info.input_specs(**cfg)
    views = make_views(specs, resolve_train_config(info.train))
    ref = example_batch(name, **cfg)
    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        n_by_mask = {}
        it = {"label": i % 2, "index": i}
        for key, spec in specs.items():
            # lengths like the example batch's (models may need a minimum length, e.g. RLC's stride-10 stem)
            full = ref[key].shape[1] if ref[key].dim() >= 3 else 1
            n = n_by_mask.setdefault(spec.mask_key or key, int(rng.integers(max(full // 2, 1), full + 1)))
            if spec.kind == "sequence":
                T = full if spec.mask_key is None else n  # maskless inputs are fixed-size windows
                it[key] = rng.normal(size=(T, *ref[key].shape[2:])).astype(np.float32)  # (T, D) or (T, L, H)
            elif spec.kind == "vector":
                it[key] = rng.normal(size=(ref[key].shape[-1],)).astype(np.float32)
            else:
                it[key] = rng.integers(1, 5, size=(n, 3)).astype(np.int32)
        items.append(it)
    batch = collate(items, views)
    assert set(batch) - {"label", "index"} == set(ref)
    for k, v in ref.items():
        assert batch[k].dtype == v.dtype, k
        assert batch[k].dim() == v.dim(), k
    model = create_model(name, **cfg).eval()
    out = model(**{k: v for k, v in batch.items() if k not in ("label", "index")})
    assert out.shape == (3, 4) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------- segments, noise


def test_segment_windows_from_frame_shift():
    seg = make_segmenting({"segment_s": 2.0, "train_hop_s": 1.0, "test_hop_s": 0.4}, 512 / 16000)
    assert (seg.window, seg.train_hop, seg.test_hop, seg.drop_short) == (63, 31, 12, True)
    assert segment_starts(100, 63, 31, True) == [0, 31]  # 62 + 63 > 100: trailing partial window dropped
    assert segment_starts(63, 63, 12, True) == []  # ≤ 2 s dropped, as the paper
    assert segment_starts(40, 63, 12, False) == [0]  # kept as one padded window when asked
    assert make_segmenting({}, 0.01) is None


def test_power_noise_has_the_requested_snr():
    rng = np.random.default_rng(0)
    x = (10 * np.log10(rng.uniform(0.5, 2.0, size=(400, 40)))).astype(np.float32)
    y = add_power_noise_db(x, 20.0, np.random.default_rng(1))
    added = np.power(10, y / 10).mean() - np.power(10, x / 10).mean()
    snr = 10 * np.log10(np.power(10, x / 10).mean() / added)
    assert snr == pytest.approx(20.0, abs=0.3)
    assert np.all(y >= x - 1e-4)  # adding power never lowers a bin


def test_noise_prob_noises_that_fraction_of_train_and_val_items_and_never_test(synthetic_cv):
    from pipeline.training.data import FeatureDataset, open_readers

    cv = synthetic_cv()
    readers = open_readers(cv["features_dir"], ["logmel40"])
    views = {"x": InputView("x", "logmel40", "sequence", "x_mask")}

    def noised(split: str, prob: float, epoch: int = 1) -> list[bool]:
        ids = list(cv["folds"].query(f"fold == 0 and split == '{split}'")["utt_id"])
        ds = FeatureDataset(readers=readers, views=views, utt_ids=ids, labels=[0] * len(ids), split=split,
                            seed=3, noise_snr_db=30.0, noise_prob=prob)
        ds.set_epoch(epoch)
        return [not np.array_equal(ds[i]["x"], np.asarray(readers["logmel40"][u])) for i, u in enumerate(ids)]

    assert all(noised("train", 1.0)) and all(noised("val", 1.0))
    half = noised("train", 0.5)
    assert 0.2 < np.mean(half) < 0.8  # clean and noisy items, as the paper's augmented set has
    assert half != noised("train", 0.5, epoch=2)  # redrawn per epoch
    assert noised("val", 0.5) == noised("val", 0.5, epoch=2)  # a fixed validation set
    assert not any(noised("test", 1.0))
    for bad in (0, 1.5, True):
        with pytest.raises(TrainError, match="noise_prob"):
            resolve_train_config({}, {"noise_prob": bad})


# ----------------------------------------------------------------------------------------------- training


def _fold(cv, tmp_path=None, **train):
    return train_fold(
        "ilt", 0, manifest=cv["manifest"], folds=cv["folds"], features_dir=cv["features_dir"],
        model_params=tiny_config("ilt"), train_params={**FAST, **train},
        checkpoint_dir=tmp_path, log=lambda s: None,
    )


def test_same_seed_gives_identical_results_and_selection_is_on_validation(synthetic_cv):
    cv = synthetic_cv()
    a, b = _fold(cv), _fold(cv)
    assert a.test == b.test and a.val == b.val
    assert a.predictions == b.predictions
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    # the selected epoch is the first with the best *validation* WA
    val = [h["val_wa"] for h in a.history]
    assert a.best_epoch == 1 + int(np.argmax(val))
    assert a.val["wa"] == pytest.approx(max(val))
    test_ids = set(cv["folds"].query("fold == 0 and split == 'test'")["utt_id"])
    assert set(a.predictions["utt_id"]) == test_ids
    probs = np.array([a.predictions[f"prob_{c}"] for c in a.labels]).T
    assert np.allclose(probs.sum(axis=1), 1.0)
    c = _fold(cv, seed=1)
    assert c.history != a.history  # the seed matters


def test_resume_from_checkpoint_matches_an_uninterrupted_run(synthetic_cv, tmp_path):
    cv = synthetic_cv()
    full = _fold(cv, tmp_path / "full", epochs=3)
    # "killed" after epoch 2: the checkpoint holds 2 finished epochs; the rerun continues from there
    part = _fold(cv, tmp_path / "resumed", epochs=2)
    assert part.epochs_run == 2
    resumed = _fold(cv, tmp_path / "resumed", epochs=3)
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 3
    assert resumed.history == full.history[:2] + resumed.history[2:]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert resumed.test == full.test and resumed.predictions == full.predictions
    assert (tmp_path / "resumed" / "best.safetensors").exists()


def test_swa_averages_the_weights_of_its_epochs_recomputes_batchnorm_and_resumes(synthetic_cv, tmp_path):
    from safetensors.torch import load_file

    cv = synthetic_cv()
    last = {"select_on": "last"}
    _fold(cv, tmp_path / "e2", epochs=2, **last), _fold(cv, tmp_path / "e3", epochs=3, **last)
    w2, w3 = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("e2", "e3"))
    swa = _fold(cv, tmp_path / "swa", epochs=3, swa_start=2, **last)
    avg = load_file(str(tmp_path / "swa" / "best.safetensors"))
    params = [k for k in avg if "running_" not in k and "num_batches" not in k]
    for k in params:  # the mean of the weights after epochs 2 and 3, per-epoch seeding making them the same
        assert torch.allclose(avg[k], (w2[k] + w3[k]) / 2, atol=1e-6), k
    stats = [k for k in avg if "running_mean" in k]
    assert stats and not all(torch.equal(avg[k], w3[k]) for k in stats)  # re-estimated for the average
    assert swa.best_epoch == 3
    part = _fold(cv, tmp_path / "swa-resumed", epochs=2, swa_start=2, **last)
    assert part.epochs_run == 2
    resumed = _fold(cv, tmp_path / "swa-resumed", epochs=3, swa_start=2, **last)
    assert resumed.resumed_from_epoch == 2 and resumed.predictions == swa.predictions
    with pytest.raises(TrainError, match="select_on: last"):
        resolve_train_config({}, {"swa_start": 2, "epochs": 3})
    for bad in (0, 4, True, 1.5):
        with pytest.raises(TrainError, match="swa_start"):
            resolve_train_config({}, {"swa_start": bad, "epochs": 3, "select_on": "last"})


def test_max_steps_and_patience_stop_early(synthetic_cv):
    cv = synthetic_cv()
    r = _fold(cv, epochs=5, max_steps=3, batch_size=2)  # 8 train utterances: 4 steps per epoch
    assert r.steps == 3 and r.epochs_run == 1
    r = _fold(cv, epochs=6, patience=1, lr=0.0)  # lr 0: validation never improves after epoch 1
    assert r.best_epoch == 1 and r.epochs_run == 2


def test_segmented_model_averages_windows_per_utterance(synthetic_cv):
    cv = synthetic_cv(features={"mfcc13": (13, 0.032)})  # 30–90 frames ≈ 1–2.9 s
    params = {"epochs": 1, "batch_size": 8, "num_threads": 1, "drop_short": False}
    r = train_fold("head_fusion", 0, manifest=cv["manifest"], folds=cv["folds"], features_dir=cv["features_dir"],
                   model_params=tiny_config("head_fusion"), train_params=params, log=lambda s: None)
    n_test = len(cv["folds"].query("fold == 0 and split == 'test'"))
    assert len(r.predictions["utt_id"]) == n_test == r.n_test
    assert r.n_train >= len(cv["folds"].query("fold == 0 and split == 'train'"))  # ≥ one window per utterance
    # the paper's setting drops utterances of ≤ 2 s (63 frames): fewer test predictions
    dropped = train_fold("head_fusion", 0, manifest=cv["manifest"], folds=cv["folds"],
                         features_dir=cv["features_dir"], model_params=tiny_config("head_fusion"),
                         train_params={**params, "drop_short": True}, log=lambda s: None)
    assert dropped.test["n_dropped"] > 0
    assert len(dropped.predictions["utt_id"]) == n_test - dropped.test["n_dropped"]


def test_clear_errors_for_bad_settings(synthetic_cv, tmp_path):
    cv = synthetic_cv()
    with pytest.raises(TrainError, match="epochz"):
        _fold(cv, epochz=3)
    with pytest.raises(TrainError, match="validation only"):
        _fold(cv, select_on="test_wa")
    with pytest.raises(DataError, match="wav2vec2.h5"):
        train_fold("ks_transformer", 0, manifest=cv["manifest"], folds=cv["folds"],
                   features_dir=cv["features_dir"], model_params=tiny_config("ks_transformer"))


_KILL_SCRIPT = """
import sys, pandas as pd, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from pipeline.corpus.folds import read_folds
from pipeline.corpus.manifest import read_manifest
from pipeline.training.train import train_fold
from models import tiny_config
cv = {cv!r}
train_fold("ilt", 0, manifest=read_manifest(cv + "/manifest.parquet"),
           folds=read_folds(cv + "/folds/random_55_25_20.parquet"), features_dir=cv + "/features",
           model_params=tiny_config("ilt"), train_params={params!r}, checkpoint_dir={ckpt!r})
"""


@pytest.mark.slow
def test_fold_killed_with_sigkill_resumes_from_its_last_epoch(synthetic_cv, tmp_path):
    cv = synthetic_cv()
    ckpt = tmp_path / "ckpt"
    params = {**FAST, "epochs": 200}
    script = _KILL_SCRIPT.format(root=str(Path(__file__).resolve().parents[2]), cv=str(cv["root"]),
                                 params=params, ckpt=str(ckpt))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while not (ckpt / "state.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint written within 90 s"
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = torch.load(ckpt / "state.pt", weights_only=True)["epoch"]
    assert 1 <= done < 200
    r = _fold(cv, ckpt, epochs=done + 1)
    assert r.resumed_from_epoch == done and r.epochs_run == done + 1


def test_train_benchmark_runs_and_reports(tmp_path):
    """benchmarks/train.py end to end on one tiny model (numbers not asserted: not a timed test)."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train.py"
    spec = importlib.util.spec_from_file_location("_bench_train", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "train.json"
    bench.main(["--models", "head_fusion", "ks_transformer", "--tiny", "--repeats", "1", "--warmup", "0",
                "--batch-size", "4", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["torch_threads"] == 1
    hf, ks = report["models"]["head_fusion"], report["models"]["ks_transformer"]
    assert hf["input_shapes"]["mfcc"] == [4, 63, 13] and hf["samples_per_s"] > 0
    assert ks["input_shapes"]["audio_mask"] == [4, 225] and ks["input_shapes"]["text"][1] == 20


def test_subset_setting_keeps_only_that_subset(synthetic_cv):
    from pipeline.training.train import prepare_fold

    cv = synthetic_cv()
    man = cv["manifest"].copy()
    man.loc[man.index % 2 == 1, "subset"] = "scripted"
    cfg = resolve_train_config({}, {"subset": "improvised"})
    data = prepare_fold("ilt", 0, manifest=man, folds=cv["folds"], features_dir=cv["features_dir"],
                        model_params=tiny_config("ilt"), train_cfg=cfg)
    improvised = set(man.loc[man["subset"] == "improvised", "utt_id"])
    assert all(set(ids) <= improvised and ids for ids in data.splits.values())
    assert data.model_overrides["n_mels"] == 40  # dimension read from the store
    with pytest.warns(UserWarning, match="no `subset` values"):
        prepare_fold("ilt", 0, manifest=man.assign(subset=""), folds=cv["folds"], features_dir=cv["features_dir"],
                     model_params=tiny_config("ilt"), train_cfg=cfg)


# ----------------------------------------------------------------------------------------------- small-corpus settings


def _dataset(cv, split: str, augment=None, fixed_len=None):
    from pipeline.training.data import FeatureDataset, check_augment, open_readers

    ids = list(cv["folds"].query(f"fold == 0 and split == '{split}'")["utt_id"])
    readers = open_readers(cv["features_dir"], ["logmel40"])
    views = {"x": InputView("x", "logmel40", "sequence", "x_mask", fixed_len=fixed_len)}
    return FeatureDataset(readers=readers, views=views, utt_ids=ids, labels=[0] * len(ids), split=split,
                          seed=3, augment=check_augment(augment))


def test_augment_masks_train_items_per_epoch_and_leaves_evaluation_alone(synthetic_cv):
    from pipeline.training.data import spec_augment

    cv = synthetic_cv()
    aug = {"time_masks": 2, "time_width": 8, "freq_masks": 2, "freq_width": 6, "shift": 10}
    plain, train = _dataset(cv, "train", fixed_len=32), _dataset(cv, "train", aug, fixed_len=32)
    train.set_epoch(1)
    a1 = train[0]["x"]
    assert a1.shape[0] <= 32 and a1.shape[1] == plain[0]["x"].shape[1]  # fixed_len still holds after the shift
    assert np.array_equal(a1, train[0]["x"])  # same (epoch, item): same masks (resumable)
    train.set_epoch(2)
    assert not np.array_equal(a1, train[0]["x"])  # another epoch: other masks
    assert (a1 == 0).sum() > (plain[0]["x"] == 0).sum()  # something was masked
    val_aug, val = _dataset(cv, "val", aug), _dataset(cv, "val")
    assert all(np.array_equal(val_aug[i]["x"], val[i]["x"]) for i in range(len(val)))
    x = np.arange(40, dtype=np.float32).reshape(20, 2) + 1
    y = spec_augment(x, {"time_masks": 0, "time_width": 0, "freq_masks": 0, "freq_width": 0, "shift": 5},
                     np.random.default_rng(0))
    assert 15 <= len(y) <= 20 and np.array_equal(y, x[20 - len(y):])  # a shift only drops leading frames
    with pytest.raises(DataError, match="unknown augment key"):
        _dataset(cv, "train", {"time_mask": 2})


def test_speed_perturbation_stretches_time_and_warps_the_feature_axis_within_its_range():
    from pipeline.training.data import AUGMENT_KEYS, spec_augment

    off = dict.fromkeys(AUGMENT_KEYS, 0)
    ramp = np.tile(np.arange(100, dtype=np.float32)[:, None], (1, 4))  # value = frame index
    lengths = set()
    for seed in range(20):
        y = spec_augment(ramp, {**off, "time_stretch": 10}, np.random.default_rng(seed))
        assert 90 <= len(y) <= 112 and y.shape[1] == 4  # 100 frames at speed 0.9-1.1
        assert y[0, 0] == 0 and y[-1, 0] == 99  # same content, resampled: first and last frame kept
        assert np.all(np.diff(y[:, 0]) > 0)
        lengths.add(len(y))
    assert len(lengths) > 5  # the factor is drawn per call
    bins = np.tile(np.arange(40, dtype=np.float32), (30, 1))  # value = feature (Mel bin) index
    warped = [spec_augment(bins, {**off, "freq_warp": 10}, np.random.default_rng(s)) for s in range(20)]
    assert all(w.shape == bins.shape and np.all(w[:, 0] == 0) for w in warped)  # shape and bin 0 kept
    scale = [w[0, 20] / 20 for w in warped]  # a linear warp: bin f reads bin f / a
    assert all(1 / 1.1 - 1e-4 <= k <= 1 / 0.9 + 1e-4 for k in scale) and np.ptp(scale) > 0.05
    layered = np.ones((50, 3, 8), np.float32)  # stacked layers: stretched in time, never warped
    assert spec_augment(layered, {**off, "time_stretch": 20, "freq_warp": 20},
                        np.random.default_rng(0)).shape[1:] == (3, 8)


def _assert_checked_and_off_by_default(key, bad_values, good):
    """A class-target regulariser: bad values and a regression task are refused; unset, it is not in the config."""
    for bad in bad_values:
        with pytest.raises(TrainError, match=key):
            resolve_train_config({}, {key: bad})
    with pytest.raises(TrainError, match="classification"):
        resolve_train_config({}, {key: good, "task": "regression"})
    assert key not in resolve_train_config({})  # off: configs (and cache keys) stay as they were


def test_mixup_mixes_inputs_and_targets_reproducibly_and_rejects_what_it_cannot_mix(synthetic_cv):
    from pipeline.training.train import mix_batch

    torch.manual_seed(1)
    x = torch.arange(8, dtype=torch.float32).view(4, 2, 1)
    mask = torch.tensor([[False, True], [False, False], [False, True], [False, False]])
    mixed, perm, lam = mix_batch({"x": x, "x_mask": mask}, 0.4, "t")
    assert torch.allclose(mixed["x"], lam * x + (1 - lam) * x[perm])
    assert torch.equal(mixed["x_mask"], mask & mask[perm])  # a frame is padding only if both items pad it
    with pytest.raises(TrainError, match="tokens"):
        mix_batch({"tokens": torch.ones(2, 3, dtype=torch.long)}, 0.4, "t")
    _assert_checked_and_off_by_default("mixup", (0, -1.0, True, "0.2"), 0.2)
    cv = synthetic_cv()
    a, b, plain = _fold(cv, mixup=0.4), _fold(cv, mixup=0.4), _fold(cv)
    assert a.predictions == b.predictions  # seeded per (seed, fold, epoch)
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in plain.history]


def test_label_smoothing_softens_the_targets_of_the_loss_and_is_off_by_default(synthetic_cv):
    from pipeline.training.train import class_loss

    logits, y = torch.tensor([[4.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    eps = 0.2
    target = torch.nn.functional.one_hot(y, 2).float() * (1 - eps) + eps / 2  # ε spread over both classes
    expected = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert class_loss(logits, y, {"label_smoothing": eps}, None).item() == pytest.approx(expected.item(), rel=1e-6)
    plain = torch.nn.functional.cross_entropy(logits, y)
    assert class_loss(logits, y, {}, None).item() == pytest.approx(plain.item())
    assert class_loss(logits, y, {"label_smoothing": eps}, None).item() > plain.item()  # confident logits pay
    _assert_checked_and_off_by_default("label_smoothing", (0, 1, -0.1, True, "0.1"), 0.1)
    cv = synthetic_cv()
    smooth, plain_run = _fold(cv, label_smoothing=0.1), _fold(cv)
    assert [h["train_loss"] for h in smooth.history] != [h["train_loss"] for h in plain_run.history]


def test_seed_ensemble_averages_the_probabilities_of_the_runs_of_its_seeds_and_resumes(synthetic_cv, tmp_path):
    cv = synthetic_cv()
    runs = [_fold(cv, seed=s) for s in (3, 4)]
    ens = _fold(cv, tmp_path / "ens", seed=3, seed_ensemble=2)
    probs = {c: (np.array(runs[0].predictions[f"prob_{c}"]) + runs[1].predictions[f"prob_{c}"]) / 2
             for c in ens.labels}
    for c in ens.labels:  # member k is exactly the run with seed 3 + k
        assert np.allclose(ens.predictions[f"prob_{c}"], probs[c])
    best = np.array([probs[c] for c in ens.labels]).argmax(axis=0)
    assert ens.predictions["pred"] == [ens.labels[i] for i in best]
    assert [m["seed"] for m in ens.extras["seed_ensemble"]] == [3, 4]
    assert ens.history == runs[0].history  # the fold's loop record is member 0's
    assert all((tmp_path / "ens" / f"member{k}" / "best.safetensors").exists() for k in (0, 1))
    again = _fold(cv, tmp_path / "ens", seed=3, seed_ensemble=2)  # both members come back from their checkpoints
    assert [m["resumed_from_epoch"] for m in again.extras["seed_ensemble"]] == [FAST["epochs"]] * 2
    assert again.predictions == ens.predictions
    assert _fold(cv, seed=3, seed_ensemble=1).predictions == runs[0].predictions  # one member: a plain run
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(TrainError, match="seed_ensemble"):
            resolve_train_config({}, {"seed_ensemble": bad})
    with pytest.raises(TrainError, match="fit: gradient"):
        resolve_train_config({}, {"seed_ensemble": 2, "fit": "sklearn"})
    assert "seed_ensemble" not in resolve_train_config({})  # off: configs (and cache keys) stay as they were


def test_ensemble_outputs_average_probabilities_and_dimensional_values():
    from pipeline.training.train import ensemble_outputs

    a = np.array([[2.0, 0.0, 0.5], [np.nan, np.nan, np.nan]])
    b = np.array([[0.0, 2.0, 1.5], [np.nan, np.nan, np.nan]])
    out = ensemble_outputs([a, b], 2)
    assert np.allclose(np.exp(out[0, :2]), [0.5, 0.5]) and out[0, 2] == 1.0  # probabilities, then the mean value
    assert np.isnan(out[1]).all()  # a dropped utterance stays dropped
    assert ensemble_outputs([a], 2) is a


def test_select_on_val_loss_picks_the_epoch_of_lowest_validation_cross_entropy(synthetic_cv):
    from sklearn.metrics import log_loss

    from pipeline.training.train import split_loss

    logits = np.array([[2.0, 0.0], [0.0, 1.0], [np.nan, np.nan]])
    p = np.exp(logits[:2]) / np.exp(logits[:2]).sum(axis=1, keepdims=True)
    assert split_loss(logits, [0, 0, 1]) == pytest.approx(log_loss([0, 0], p, labels=[0, 1]))
    cv = synthetic_cv()
    r = _fold(cv, epochs=3, select_on="val_loss")
    losses = [h["val_loss"] for h in r.history]
    assert r.best_epoch == 1 + int(np.argmin(losses))
    with pytest.raises(TrainError, match="select_on"):
        resolve_train_config({}, {"select_on": "test_ua"})


def test_select_on_last_keeps_the_final_epoch_whatever_validation_says(synthetic_cv):
    cv = synthetic_cv()
    r = _fold(cv, epochs=3, select_on="last")
    assert r.best_epoch == r.epochs_run == 3 and len(r.history) == 3
    assert all("val_ua" in h for h in r.history)  # validation is still scored and recorded
    with pytest.raises(TrainError, match="closed-form"):
        resolve_train_config({}, {"select_on": "last", "fit": "sklearn"})
