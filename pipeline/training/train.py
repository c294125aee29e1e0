"""Training and evaluation of one fold: seeded, device-agnostic, resumable, selected on validation only.

:func:`train_fold` trains ``models.create_model(name, **overrides)`` on a fold's train split, evaluates the
validation split after every epoch, keeps the epoch with the best validation WA or UA (``select_on``; never the
test split), optionally stops early (``patience``), then scores the test split with the selected weights.

Reproducibility
    Everything random is seeded from ``(seed, fold)`` and, per epoch, from ``(seed, fold, epoch)``: model init,
    dropout (torch's global RNG, reseeded at each epoch start), the DataLoader's shuffling generator (and so its
    workers' seeds), feature-domain noise. Reseeding per epoch is what makes a resumed run bit-identical to an
    uninterrupted one without restoring RNG states. ``torch.use_deterministic_algorithms(True)`` is on (CUDA:
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8``); ``deterministic: strict`` makes a nondeterministic op an error instead
    of a warning. torch's RNG and determinism flags are process-wide, so folds in the *same process* (Prefect's
    thread runner) train one at a time under a lock; use the ``processes`` or ``dask`` runner for parallel folds.

Checkpoints (``checkpoint_dir``)
    After every epoch: ``last.safetensors`` (model weights, safetensors) and ``state.pt`` (optimizer/scheduler
    state, epoch, selection state and history: tensors and plain Python values only, read back with
    ``torch.load(weights_only=True)`` — nothing arbitrary is unpickled). Both are written to temp files and renamed,
    weights first; the previous weights stay as ``prev.safetensors``, so a kill between the two writes resumes from
    the epoch ``state.pt`` names. ``best.safetensors`` holds the selected weights.
    A killed fold restarts from its last finished epoch.

AMP: on CUDA, autocast to bfloat16 where supported (else float16 with a GradScaler); CPU runs in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import random
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from features.errors import EmoflowError, disk_full_error, is_disk_full
from pipeline.corpus.dimensional import target_array, target_columns
from pipeline.training.data import (
    NORMALIZE_MODES,
    UNLABELED,
    Collate,
    DataError,
    FeatureDataset,
    Normalizer,
    check_augment,
    class_labels,
    feature_frame_shift,
    fit_normalizer,
    label_ids,
    make_segmenting,
    make_views,
    open_readers,
    resolve_dims,
    split_of_fold,
    stable_seed,
)
from pipeline.training.distill import (
    crossfit_probabilities,
    distill_loss,
    distill_settings,
    soften,
    speaker_groups,
    uses_unlabeled,
)
from pipeline.training.metrics import compute_metrics, dimensional_metrics

#: train settings the loop reads, with their defaults (the model's ``train`` dict overrides these, and
#: ``params.yaml`` overrides both; ``None`` in params means "keep the paper's value").
TRAIN_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",  # adam | adamw | sgd
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "momentum": 0.0,
    "weight_decay": 0.0,
    "batch_size": 32,
    "eval_batch_size": None,  # None: = batch_size
    "epochs": 10,
    "schedule": None,  # None | {type: step, step_epochs, gamma} | {type: cosine, eta_min_factor}
    "select_on": "val_wa",  # val_wa | val_ua | val_loss (mean cross-entropy: steadier on a small validation split)
    # | last (no selection: the final epoch's weights, for a fixed schedule; validation is still scored)
    "patience": None,  # epochs without validation improvement before stopping (None: never)
    "max_steps": None,  # cap on optimizer steps in total (smoke runs/demo)
    "grad_clip": None,
    "loss": "cross_entropy",
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "amp": True,  # CUDA only
    "deterministic": True,  # True | False | "strict"
    "num_workers": 0,
    "num_threads": None,  # torch intra-op threads (None: leave torch's default)
    "cache_in_memory": False,  # keep read arrays in RAM across epochs (same numbers; small corpora)
    "seed": 0,
    # input handling (see pipeline/training/data.py)
    "fixed_frames": None,
    "fixed_len": None,
    "max_len": None,
    "noise_snr_db": None,  # dB: white noise on train and val (paper A); "none" switches a paper's noise off
    "augment": None,  # small-corpus setting: {time_masks, time_width, freq_masks, freq_width, shift} (frames)
    "segment_s": None,  # paper E: window length (s); None = no segmentation
    "train_hop_s": None,
    "test_hop_s": None,
    "drop_short": None,  # None = True (the paper); false keeps short utterances as one padded window
    "subset": None,  # keep only manifest rows with this `subset` (paper E: improvised); None/"all" = all
    "layer_reduce": "mean",
    # small-corpus settings (None = the papers' recipes: no input normalisation, unweighted loss)
    "normalize": None,  # None | fold (training-split mean/std per dimension) | utterance (per-utterance CMVN)
    "class_weights": None,  # None | balanced (loss weights ∝ 1 / training-split class frequency)
    "fit": "gradient",  # gradient (the loop below) | sklearn (closed-form baselines with fit_arrays)
}
#: dimensional-target settings (README "Dimensional targets"). Kept out of TRAIN_DEFAULTS: a resolved config
#: holds them only when set, so classification runs' configs, cache keys and run.json stay as they were.
DIM_DEFAULTS: dict[str, Any] = {
    "task": "classification",  # classification | regression (V/A/D only) | multitask (classes + V/A/D)
    "dim_loss": "ccc",  # ccc (1 − CCC per dimension, averaged) | mse; unannotated values are masked out
    "dim_weight": 1.0,  # multitask: loss = cross-entropy + dim_weight · dimensional loss
}
#: small-corpus regularisers, likewise held by a resolved config only when set (no paper uses them)
REGULARISER_DEFAULTS: dict[str, Any] = {
    "mixup": None,  # None | alpha: mix pairs of training items and their targets, λ ~ Beta(α, α) (Zhang et al. 2018)
    # fraction of train/val items given the noise_snr_db noise (None = 1.0: every item, as before); the test
    # split is always clean, so 1.0 trains on a noise floor the test never has — 0.5 mixes clean and noisy items
    "noise_prob": None,
    # stochastic weight averaging (Izmailov et al. 2018): None | the first epoch whose weights enter the average.
    # The result is the mean of the weights after each epoch >= swa_start under the run's own lr schedule, with
    # batch-norm statistics recomputed on the training split; needs select_on: last (no pick on validation)
    "swa_start": None,
    # label smoothing (Szegedy et al. 2016; PyTorch's cross_entropy): None | ε in (0, 1), each target puts
    # 1 − ε on its class and ε spread evenly over all classes
    "label_smoothing": None,
    # seed ensemble: None | n models per fold, trained alike from seeds seed, seed+1, ... (init, dropout, shuffling);
    # the fold's predictions average their class probabilities (and dimensional outputs). n times the training
    "seed_ensemble": None,
    # knowledge distillation: None | {feature, pooling, weight, temperature, groups} — soft targets from a
    # cross-fitted linear probe on a frozen encoder's stored states (pipeline/training/distill.py)
    "distill": None,
    # the validation speakers join the training split (True; None/False: held out). Only where nothing is picked
    # on validation: a gradient loop with select_on: last and no early stopping; a closed-form fit (fit: sklearn)
    # picks its C on the held-out validation split first, then refits on train + validation with it (sklearn's
    # refit). Validation is still scored, but on training speakers: its figures say nothing about generalisation
    "train_on_val": None,
}
#: keys that only say *where/how fast* to run, not *what* is computed: left out of cache keys
RUNTIME_KEYS = ("device", "num_workers", "num_threads", "eval_batch_size", "cache_in_memory")
#: informational keys of models' train dicts that the loop does not read
INFO_KEYS = ("code_variant", "paper_text_variant", "seeds")
#: aliases used by models' train dicts → the loop's key
ALIASES = {"early_stopping_patience": "patience"}

_TRAIN_LOCK = threading.Lock()
SELECT_ON = ("val_wa", "val_ua", "val_loss", "val_ccc", "last")  # val_ccc: dimensional tasks only (_check_task)


class TrainError(EmoflowError, RuntimeError):
    """A fold that cannot be trained as configured; the message says what to change."""


def resolve_train_config(model_train: Mapping[str, Any], *overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Loop defaults ← the model's paper ``train`` dict ← each override in turn (``None`` values skipped).

    Unknown keys raise :class:`TrainError` naming them (a typo in ``params.yaml`` must not be ignored).

    >>> cfg = resolve_train_config({"lr": 1e-4, "epochs": 100}, {"epochs": 2, "lr": None})
    >>> cfg["lr"], cfg["epochs"]
    (0.0001, 2)
    """
    cfg = dict(TRAIN_DEFAULTS)
    cfg.update({ALIASES.get(k, k): v for k, v in model_train.items()})
    known = set(cfg) | set(INFO_KEYS) | set(ALIASES) | set(DIM_DEFAULTS) | set(REGULARISER_DEFAULTS)
    for ov in overrides:
        if not ov:
            continue
        unknown = sorted(set(ov) - known)
        if unknown:
            raise TrainError(f"unknown train setting(s) {unknown}; known: {', '.join(sorted(known))}")
        cfg.update({ALIASES.get(k, k): v for k, v in ov.items() if v is not None})
    if cfg["select_on"] not in SELECT_ON:
        raise TrainError(f"select_on must be one of {', '.join(SELECT_ON)} (validation only), "
                         f"got {cfg['select_on']!r}")
    if cfg["select_on"] == "last" and cfg["fit"] != "gradient":
        raise TrainError("select_on: last keeps the final epoch of a gradient loop; a closed-form fit "
                         "(fit: sklearn) selects its regularisation on val_ua, val_wa or val_loss")
    if cfg["class_weights"] not in (None, "balanced"):
        raise TrainError(f"class_weights must be null or 'balanced', got {cfg['class_weights']!r}")
    _check_task(cfg)
    if cfg["fit"] not in ("gradient", "sklearn"):
        raise TrainError(f"fit must be 'gradient' or 'sklearn', got {cfg['fit']!r}")
    if cfg["normalize"] not in NORMALIZE_MODES:
        raise TrainError(f"normalize must be null, 'fold' or 'utterance', got {cfg['normalize']!r}")
    if cfg["loss"] != "cross_entropy":
        raise TrainError(f"loss {cfg['loss']!r} is not supported (cross_entropy only)")
    _check_mixup(cfg)
    _check_swa(cfg)
    _check_train_on_val(cfg)
    _check_label_smoothing(cfg)
    _check_seed_ensemble(cfg)
    _check_distill(cfg)
    prob = cfg.get("noise_prob")
    if prob is not None and (isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 < prob <= 1):
        raise TrainError(f"noise_prob must be null (every item) or a fraction in (0, 1], got {prob!r}")
    noise = cfg["noise_snr_db"]
    if noise is not None and noise != "none" and (isinstance(noise, bool) or not isinstance(noise, (int, float))):
        raise TrainError(f"noise_snr_db must be a number (dB), null (the model's default) or 'none' (off), "
                         f"got {noise!r}")
    return cfg


def _set_number(cfg: Mapping[str, Any], key: str, ok, expected: str) -> bool:
    """Whether the optional number ``cfg[key]`` is set; raises when it is set and not a number that ``ok``."""
    value = cfg.get(key)
    if value is None:
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise TrainError(f"{key} must be null (off) or {expected}, got {value!r}")
    return True


def _check_mixup(cfg: Mapping[str, Any]) -> None:
    if not _set_number(cfg, "mixup", lambda a: a > 0, "a Beta concentration α > 0 (0.2–0.4 is usual)"):
        return
    if task_of(cfg) != "classification" or cfg["fit"] != "gradient":
        raise TrainError("mixup mixes class targets: it needs task: classification and fit: gradient")


def _check_label_smoothing(cfg: Mapping[str, Any]) -> None:
    if not _set_number(cfg, "label_smoothing", lambda e: 0 < e < 1, "ε in (0, 1) (0.1 is usual)"):
        return
    if task_of(cfg) == "regression" or cfg["fit"] != "gradient":
        raise TrainError("label_smoothing softens class targets: it needs a classification loss and fit: gradient")


def _check_seed_ensemble(cfg: Mapping[str, Any]) -> None:
    if not _set_number(cfg, "seed_ensemble", lambda n: isinstance(n, int) and n >= 1,
                       "a whole number of models per fold (1: one model, as the papers)"):
        return
    if cfg["seed_ensemble"] > 1 and cfg["fit"] != "gradient":
        raise TrainError("seed_ensemble averages models trained from different seeds: it needs fit: gradient "
                         "(a closed-form fit does not depend on the seed)")


def _check_distill(cfg: dict[str, Any]) -> None:
    if cfg.get("distill") is None:
        return  # unset: not held by the resolved config (cache keys of other runs unchanged)
    try:
        cfg["distill"] = distill_settings(cfg["distill"])
    except ValueError as e:
        raise TrainError(str(e)) from None
    if task_of(cfg) != "classification" or cfg["fit"] != "gradient" or cfg.get("mixup"):
        raise TrainError("distill trains against a teacher's class probabilities: it needs task: classification, "
                         "fit: gradient and mixup: null")


def extra_features(cfg: Mapping[str, Any]) -> list[str]:
    """Stored features a run reads besides its model's inputs: the ``distill`` teacher's (its cache key,
    provenance and DVC dependencies include them)."""
    d = cfg.get("distill")
    return [str(d["feature"])] if isinstance(d, Mapping) and d.get("feature") else []


def ensemble_size(cfg: Mapping[str, Any]) -> int:
    """Models trained per fold (``seed_ensemble``; 1 when unset)."""
    return int(cfg.get("seed_ensemble") or 1)


def member_checkpoint_dirs(ckpt: Path, n: int) -> list[Path]:
    """Where each of a fold's ``n`` models keeps its checkpoints: the fold's dir itself for one model, else
    ``member<k>/`` inside it (the fold's normalisation statistics stay in the fold's dir, shared)."""
    return [ckpt] if n == 1 else [ckpt / f"member{k}" for k in range(n)]


def class_loss(logits: torch.Tensor, y: torch.Tensor, cfg: Mapping[str, Any],
               weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, C) against ``y`` (B,), class-weighted and label-smoothed per ``cfg``;
    over the labelled items only (``y`` = UNLABELED: a teacher-only item), 0 for a batch without one."""
    labelled = y != UNLABELED
    if not bool(labelled.all()):
        if not bool(labelled.any()):
            return logits.sum() * 0.0  # keeps the graph: the batch's distillation term still trains
        logits, y = logits[labelled], y[labelled]
    return F.cross_entropy(logits, y, weight=weight, label_smoothing=float(cfg.get("label_smoothing") or 0.0))


def _check_swa(cfg: Mapping[str, Any]) -> None:
    start = cfg.get("swa_start")
    if start is None:
        return
    if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start <= int(cfg["epochs"]):
        raise TrainError(f"swa_start must be null (off) or an epoch in 1..epochs ({cfg['epochs']}), got {start!r}")
    if cfg["select_on"] != "last" or cfg["fit"] != "gradient":
        raise TrainError("swa_start averages the weights of the last epochs instead of picking one epoch on "
                         "validation: set select_on: last (with fit: gradient)")


def _check_train_on_val(cfg: Mapping[str, Any]) -> None:
    value = cfg.get("train_on_val")
    if value is None:
        return
    if not isinstance(value, bool):
        raise TrainError(f"train_on_val must be true or false, got {value!r}")
    if value and cfg["fit"] == "gradient" and (cfg["select_on"] != "last" or cfg.get("patience")):
        raise TrainError("train_on_val trains on the validation speakers, so nothing may be picked on them: set "
                         "select_on: last and patience: null (a fixed schedule), or train_on_val: false")


def task_of(cfg: Mapping[str, Any]) -> str:
    return str(cfg.get("task", DIM_DEFAULTS["task"]))


def _check_task(cfg: dict[str, Any]) -> None:
    """Validate the dimensional settings. ``task: regression`` has no class logits, so it always selects on
    the validation CCC (mean over dimensions); multitask may select on either."""
    from models.registry import TASKS

    task = task_of(cfg)
    if task not in TASKS:
        raise TrainError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "classification":
        if cfg["select_on"] == "val_ccc":
            raise TrainError("select_on: val_ccc needs dimensional targets (task: regression or multitask)")
        return
    if cfg.get("dim_loss", "ccc") not in ("ccc", "mse"):
        raise TrainError(f"dim_loss must be 'ccc' or 'mse', got {cfg['dim_loss']!r}")
    weight = cfg.get("dim_weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise TrainError(f"dim_weight must be a number ≥ 0, got {weight!r}")
    if cfg["fit"] != "gradient":
        raise TrainError(f"task {task!r} needs fit: gradient (the closed-form fits are classifiers)")
    if task == "regression":
        cfg["select_on"] = "val_ccc"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {device!r} requested but CUDA is not available; use device: auto or cpu")
    return dev


def set_determinism(mode: bool | str, device: torch.device) -> None:
    """Deterministic kernels where the device allows (process-wide)."""
    if not mode:
        torch.use_deterministic_algorithms(False)
        return
    if device.type == "cuda":
        # must be set before cuBLAS initialises; harmless when already set
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=(mode != "strict"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_optimizer(params, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = str(cfg["optimizer"]).lower()
    lr, wd = float(cfg["lr"]), float(cfg.get("weight_decay") or 0.0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(cfg["betas"]), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg["betas"]), weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum") or 0.0), weight_decay=wd)
    raise TrainError(f"optimizer {name!r} is not supported (adam, adamw, sgd)")


def build_scheduler(opt, cfg: Mapping[str, Any]):
    """Per-epoch LR schedule (stepped after each epoch) or None."""
    sch = cfg.get("schedule")
    if not sch or sch == "none":  # "none" switches a paper's schedule off (null keeps the paper's value)
        return None
    kind = sch.get("type")
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=int(sch["step_epochs"]), gamma=float(sch["gamma"]))
    if kind == "cosine":
        eta_min = float(sch.get("eta_min", float(cfg["lr"]) * float(sch.get("eta_min_factor", 1e-3))))
        t_max = int(sch.get("epochs", cfg["epochs"]))
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(t_max, 1), eta_min=eta_min)
    raise TrainError(f"schedule type {kind!r} is not supported (step, cosine)")


# ----------------------------------------------------------------------------------------------- data


@dataclass
class FoldData:
    """Everything needed to build one fold's datasets (cheap to construct: readers open lazily)."""

    model_name: str
    fold: int
    views: dict
    readers: dict
    splits: dict[str, list[str]]
    labels: list[str]
    label_of: dict[str, list[int]]
    model_overrides: dict[str, Any]
    segmenting: Any = None
    normalizer: Normalizer | None = None
    #: dimensional tasks: the manifest's V/A/D columns and each split's ``(n, K)`` targets (NaN = unannotated)
    target_names: tuple[str, ...] = ()
    targets: dict[str, np.ndarray] | None = None
    #: ``train.distill``: the teacher's tempered class probabilities ``(n_train, C)``, in ``splits["train"]`` order
    soft_targets: np.ndarray | None = None


def fold_targets(where: str, manifest: pd.DataFrame, splits: Mapping[str, list[str]],
                 task: str) -> tuple[tuple[str, ...], dict[str, np.ndarray] | None]:
    """``(names, {split: (n, K) float32})`` of the V/A/D targets for a dimensional ``task`` (``((), None)`` for
    classification). Unannotated values stay NaN and are masked out of the loss and the metrics; a split with
    fewer than 2 annotated values of a dimension (no CCC) raises, naming the counts."""
    if task == "classification":
        return (), None
    names = target_columns(manifest.columns)
    if not names:
        raise DataError(f"{where}: task {task!r} needs valence/arousal/dominance columns in the manifest and it "
                        "has none (the iemocap adapter keeps them; a manifest corpus: add the columns)")
    out = {s: target_array(manifest, ids, names) for s, ids in splits.items()}
    for s, t in out.items():
        for name, n_ok in zip(names, (~np.isnan(t)).sum(axis=0), strict=True):
            if n_ok < 2:
                raise DataError(f"{where}: only {n_ok} of the {len(t)} {s} utterances have a {name} value (CCC "
                                f"needs 2); annotate them, drop the {name} column, or use task: classification")
    return names, out


def prepare_fold(
    model_name: str,
    fold: int,
    *,
    manifest: pd.DataFrame,
    folds: pd.DataFrame,
    features_dir: str | Path,
    model_params: Mapping[str, Any] | None,
    train_cfg: Mapping[str, Any],
    labels: list[str] | None = None,
) -> FoldData:
    """Resolve a fold's inputs: feature readers, views, splits, labels and the model's dimension overrides."""
    from models import get_model_info

    info = get_model_info(model_name)
    overrides = dict(model_params or {})
    specs = info.input_specs(**overrides)
    readers = open_readers(features_dir, [s.feature for s in specs.values()])
    dims = resolve_dims(specs, readers, str(train_cfg.get("layer_reduce", "mean")))
    for k, v in dims.items():
        if k in overrides and overrides[k] != v:
            warnings.warn(f"{model_name}: {k}={overrides[k]} in params replaced by {v} found in the feature store",
                          stacklevel=2)
    overrides.update(dims)
    splits = split_of_fold(folds, fold)
    if labels is None:
        labels = class_labels(manifest, folds["utt_id"].astype(str))
    subset = train_cfg.get("subset")
    known_subsets = set(manifest["subset"].astype(str)) - {""}
    if subset and subset != "all" and not known_subsets:
        warnings.warn(f"{model_name}: train setting subset={subset!r} ignored: the manifest has no `subset` values "
                      "(every utterance is used)", stacklevel=2)
    elif subset and subset != "all":
        keep = set(manifest.loc[manifest["subset"].astype(str) == subset, "utt_id"].astype(str))
        splits = {s: [u for u in ids if u in keep] for s, ids in splits.items()}
        empty = [s for s, ids in splits.items() if not ids]
        if empty:
            raise DataError(
                f"{model_name} fold {fold}: no `{subset}` utterances in the {'/'.join(empty)} split(s) "
                f"(train setting subset: {subset}); use a corpus with a `subset` column or set subset: all"
            )
    if train_cfg.get("train_on_val"):  # validation stays scored; its speakers are training speakers too
        splits["train"] = sorted(splits["train"] + splits["val"])
    # after the subset filter: labels (and targets) must stay aligned with the utterances kept
    label_of = {s: label_ids(manifest, ids, labels) for s, ids in splits.items()}
    _check_unlabeled(model_name, fold, label_of, train_cfg)
    segmenting = None
    if train_cfg.get("segment_s"):
        seq = [v for v in specs.values() if v.kind == "sequence"]
        if not seq:
            raise TrainError(f"{model_name}: `segment_s` needs a sequence input")
        segmenting = make_segmenting(train_cfg, feature_frame_shift(readers[seq[0].feature]))
    views = make_views(specs, train_cfg)
    target_names, targets = fold_targets(f"{model_name} fold {fold}", manifest, splits, task_of(train_cfg))
    return FoldData(
        model_name=model_name,
        fold=fold,
        views=views,
        readers=readers,
        splits=splits,
        labels=labels,
        label_of=label_of,
        model_overrides=overrides,
        segmenting=segmenting,
        # statistics of the training split only: validation and test labels never inform the inputs (speaker
        # mode: each speaker's own unlabelled frames)
        normalizer=fit_normalizer(train_cfg.get("normalize"), readers, views, splits["train"],
                                  speaker_of=_speakers(manifest, splits) if train_cfg.get("normalize") == "speaker"
                                  else None),
        target_names=target_names,
        targets=targets,
    )


def _check_unlabeled(model_name: str, fold: int, label_of: Mapping[str, list[int]], train_cfg: Mapping[str, Any]) -> None:
    """Unlabeled utterances (``distill.unlabeled``) are training items only, and only with that setting on."""
    where = {s: sum(1 for y in ys if y == UNLABELED) for s, ys in label_of.items()}
    if where.get("val") or where.get("test"):
        raise DataError(f"{model_name} fold {fold}: unlabeled utterances in the validation/test split(s) {where}; "
                        "only training utterances may be kept without a label (distill.unlabeled)")
    if where.get("train") and not uses_unlabeled(train_cfg):
        raise DataError(f"{model_name} fold {fold}: {where['train']} training utterance(s) have no label; "
                        "every utterance needs one unless train.distill.unlabeled is set")
    if where.get("train") and all(y == UNLABELED for y in label_of["train"]):
        raise DataError(f"{model_name} fold {fold}: no labelled training utterance")


def _speakers(manifest: pd.DataFrame, splits: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Utterance → speaker for every utterance of the fold's splits (``normalize: speaker``)."""
    wanted = {u for ids in splits.values() for u in ids}
    rows = manifest[manifest["utt_id"].astype(str).isin(wanted)]
    return dict(zip(rows["utt_id"].astype(str), rows["speaker"].astype(str), strict=True))


def make_dataset(data: FoldData, split: str, train_cfg: Mapping[str, Any]) -> FeatureDataset:
    ds = FeatureDataset(
        readers=data.readers,
        views=data.views,
        utt_ids=data.splits[split],
        labels=data.label_of[split],
        targets=None if data.targets is None else data.targets[split],
        soft_targets=data.soft_targets if split == "train" else None,
        segmenting=data.segmenting,
        split=split,
        noise_snr_db=None if train_cfg.get("noise_snr_db") == "none" else train_cfg.get("noise_snr_db"),
        noise_prob=float(train_cfg.get("noise_prob") or 1.0),
        augment=check_augment(train_cfg.get("augment")),
        seed=stable_seed(train_cfg["seed"], data.fold),
        normalizer=data.normalizer,
        cache_in_memory=bool(train_cfg.get("cache_in_memory")),
    )
    if len(ds) == 0:
        raise DataError(
            f"{data.model_name} fold {data.fold}: the {split} split is empty after segmentation "
            f"({len(ds.dropped)} utterance(s) of ≤ one window dropped); set the train setting drop_short: false"
        )
    return ds


def _loader(ds: FeatureDataset, data: FoldData, cfg: Mapping[str, Any], *, shuffle: bool, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    bs = int(cfg["batch_size"] if shuffle else (cfg.get("eval_batch_size") or cfg["batch_size"]))
    nw = int(cfg.get("num_workers") or 0)
    return DataLoader(
        ds,
        batch_size=bs,
        shuffle=shuffle,
        num_workers=nw,
        collate_fn=Collate(data.views, data.segmenting.window if data.segmenting else None),
        generator=gen,
        drop_last=False,
        persistent_workers=False,
        # Forked workers of a process that runs Prefect (its background services) die at exit with code 1;
        # forkserver workers start clean. The dataset and collate are picklable (readers reopen per process).
        multiprocessing_context="forkserver" if nw > 0 else None,
    )


def _model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in ("label", "index", "target", "soft")}


def _autocast(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: DataLoader, n_utts: int, utt_index: list[int], device: torch.device, amp: bool
) -> np.ndarray:
    """Outputs per utterance ``(n_utts, W)`` (logits, then dimensional targets: see :func:`models.registry.
    set_task_head`): the mean over an utterance's items (windows for paper E; a single item otherwise).
    Utterances without any item (dropped as too short) are NaN rows."""
    model.eval()
    sums: np.ndarray | None = None
    counts = np.zeros(n_utts, np.int64)
    for batch in loader:
        with _autocast(device, amp):
            logits = model(**_model_inputs(batch, device))
        logits = logits.float().cpu().numpy().astype(np.float64)
        if sums is None:
            sums = np.zeros((n_utts, logits.shape[1]), np.float64)
        rows = np.asarray([utt_index[i] for i in batch["index"].tolist()])
        np.add.at(sums, rows, logits)
        np.add.at(counts, rows, 1)
    assert sums is not None
    with np.errstate(invalid="ignore"):
        return sums / counts[:, None]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.nanmax(x, axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def split_loss(logits: np.ndarray, true_ids: list[int]) -> float:
    """Mean cross-entropy of per-utterance logits ``(N, C)`` (unweighted; NaN rows of dropped utterances skipped)."""
    ok = ~np.isnan(logits).any(axis=1)
    z = logits[ok] - logits[ok].max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = np.asarray(true_ids)[ok]
    return float(-logp[np.arange(len(y)), y].mean()) if len(y) else float("nan")


def score_split(logits: np.ndarray, true_ids: list[int], labels: list[str]) -> tuple[dict, np.ndarray]:
    """Metrics over utterances with predictions; returns (metrics, mask of scored utterances)."""
    ok = ~np.isnan(logits).any(axis=1)
    pred = logits[ok].argmax(axis=1)
    y = np.asarray(true_ids)[ok]
    m = compute_metrics([labels[i] for i in y], [labels[i] for i in pred], labels)
    m["n_dropped"] = int((~ok).sum())
    return m, ok


def n_logits(task: str, n_classes: int) -> int:
    """How many leading output columns are class logits (the rest are dimensional targets)."""
    return 0 if task == "regression" else n_classes


def score_outputs(outputs: np.ndarray, data: FoldData, split: str, task: str) -> tuple[dict, np.ndarray]:
    """:func:`score_split` of the logits columns (none for regression) and, for dimensional tasks, ``dims``
    (CCC, Pearson, MAE per dimension, NaN targets left out) and ``ccc`` (their mean: ``select_on: val_ccc``)."""
    if task == "classification":
        return score_split(outputs, data.label_of[split], data.labels)
    n_cls = n_logits(task, len(data.labels))
    ok = ~np.isnan(outputs).any(axis=1)
    if n_cls:
        m, _ = score_split(outputs[:, :n_cls], data.label_of[split], data.labels)
    else:
        m = {"n": int(ok.sum()), "n_dropped": int((~ok).sum())}
    pred, true = outputs[ok, n_cls:], data.targets[split][ok]
    m["dims"] = {n: dimensional_metrics(true[:, k], pred[:, k]) for k, n in enumerate(data.target_names)}
    finite = [d["ccc"] for d in m["dims"].values() if math.isfinite(d["ccc"])]
    m["ccc"] = float(np.mean(finite)) if finite else float("nan")
    return m, ok


def _val_record(vm: Mapping[str, Any]) -> dict[str, float]:
    """The validation scores of an epoch's history row (classification: val_wa, val_ua, as before)."""
    rec = {"val_wa": vm["wa"], "val_ua": vm["ua"]} if "wa" in vm else {}
    return {**rec, "val_ccc": vm["ccc"]} if "ccc" in vm else rec


def _val_text(vm: Mapping[str, Any]) -> str:
    text = f"val WA {vm['wa']:.2f} UA {vm['ua']:.2f}" if "wa" in vm else "val"
    return f"{text} CCC {vm['ccc']:.3f}" if "ccc" in vm else text


# ----------------------------------------------------------------------------------------------- results


@dataclass
class FoldResult:
    """Outcome of one fold (plain values only: JSON-serialisable for Prefect's result store)."""

    model: str
    fold: int
    labels: list[str]
    best_epoch: int
    epochs_run: int
    steps: int
    val: dict[str, Any]
    test: dict[str, Any]
    predictions: dict[str, list]  # utt_id, label, pred, prob_<class> ... (test split)
    history: list[dict[str, float]]
    runtime_s: float
    train_samples_per_s: float
    n_train: int
    n_val: int
    n_test: int
    device: str
    model_config: dict[str, Any]
    resumed_from_epoch: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- checkpoints


def _atomic(path: Path, write: Callable[[Path], None], needed: int | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as e:
        full = _disk_full_errno(e)
        if full is None:
            raise
        kept = f"the previous {path.name} is kept" if path.exists() else f"{path.name} was not written"
        raise disk_full_error(path, OSError(full, os.strerror(full)), needed, kept + " (a rerun resumes from the last complete checkpoint)") from None
    finally:
        tmp.unlink(missing_ok=True)


def _disk_full_errno(e: BaseException) -> int | None:
    """ENOSPC/EFBIG/EDQUOT behind a failed write: an OSError, or safetensors'/torch's wrapped "os error N"."""
    import errno
    import re

    if isinstance(e, OSError):
        return e.errno if is_disk_full(e) else None
    m = re.search(r"os error (\d+)", str(e))
    code = int(m.group(1)) if m else None
    return code if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else None


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def _nbytes(state: Mapping[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))


def _save_weights(path: Path, state: dict[str, torch.Tensor], epoch: int) -> None:
    _atomic(path, lambda p: save_file(state, str(p), metadata={"epoch": str(epoch)}), _nbytes(state))


def _keep_previous_weights(last: Path, prev: Path) -> None:
    """Hard-link ``last`` to ``prev`` (a copy where links are refused) so a kill between the weights and the
    state write still leaves the weights of the epoch ``state.pt`` names."""
    if not last.exists():
        return
    tmp = prev.with_name(prev.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError:
        shutil.copyfile(last, tmp)
    os.replace(tmp, prev)


def save_checkpoint(ckpt_dir: Path, model, opt, sched, state: dict[str, Any]) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    weights = _cpu_state(model)
    last = ckpt_dir / "last.safetensors"
    _keep_previous_weights(last, ckpt_dir / "prev.safetensors")
    _save_weights(last, weights, state["epoch"])
    payload = dict(state, optimizer=opt.state_dict(), scheduler=sched.state_dict() if sched else None)
    # Serialised in memory first: torch's zip writer reports a full disk as an opaque iostream RuntimeError,
    # a plain file write as ENOSPC/EFBIG, which _atomic turns into a DiskFullError with the size needed.
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getbuffer()
    _atomic(ckpt_dir / "state.pt", lambda p: p.write_bytes(data), data.nbytes)


def _weights_epoch(path: Path) -> str | None:
    from safetensors import safe_open

    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("epoch")


def load_checkpoint(ckpt_dir: Path, model, opt, sched, device) -> dict[str, Any] | None:
    """Restore the last finished epoch, or None when there is no consistent checkpoint.

    ``state.pt`` is written last, so it names the last finished epoch; its weights are ``last.safetensors``,
    or ``prev.safetensors`` when the process died after the new weights but before the new state.
    """
    spath = ckpt_dir / "state.pt"
    if not spath.exists():
        return None
    try:
        state = torch.load(spath, map_location="cpu", weights_only=True)
        epoch = str(state.get("epoch"))
        mpath = next((p for p in (ckpt_dir / "last.safetensors", ckpt_dir / "prev.safetensors")
                      if _weights_epoch(p) == epoch), None)
        if mpath is None:
            warnings.warn(f"{ckpt_dir}: no weights for epoch {epoch} named by state.pt; starting over",
                          stacklevel=2)
            return None
        model.load_state_dict(load_file(str(mpath), device=str(device)))
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        return state
    except Exception as e:  # a corrupt checkpoint is not fatal: retrain the fold
        warnings.warn(f"{ckpt_dir}: unusable checkpoint ({e}); starting the fold over", stacklevel=2)
        return None


# ----------------------------------------------------------------------------------------------- the loop


def train_fold(
    model_name: str,
    fold: int,
    *,
    manifest: pd.DataFrame,
    folds: pd.DataFrame,
    features_dir: str | Path,
    model_params: Mapping[str, Any] | None = None,
    train_params: Mapping[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    labels: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> FoldResult:
    """Train and evaluate ``model_name`` on fold ``fold`` of a fold plan.

    ``manifest``: the manifest table (utt_id, label, ...); ``folds``: the plan table (utt_id, fold, split);
    ``features_dir``: folder of ``<feature>.h5``; ``model_params``: ``create_model`` overrides (feature
    dimensions are taken from the store); ``train_params``: overrides of the model's paper training settings
    (see :data:`TRAIN_DEFAULTS`); ``checkpoint_dir``: where to checkpoint every epoch (resumes from it).
    """
    from models import create_model, get_model_info

    cfg = resolve_train_config(get_model_info(model_name).train, train_params)
    with _TRAIN_LOCK:
        return _train_fold_locked(model_name, fold, cfg, manifest, folds, features_dir, model_params,
                                  checkpoint_dir, labels, log, create_model)


@dataclass
class LoopState:
    """What a fold's loop carries between epochs (checkpointed in ``state.pt`` as plain values)."""

    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_samples: int = 0
    train_time: float = 0.0
    swa_n: int = 0  # epochs averaged so far (swa_start); the average is checkpointed in swa.safetensors

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def loss_weights(cfg: Mapping[str, Any], train_labels: list[int], n_classes: int,
                 device: torch.device) -> torch.Tensor | None:
    """``class_weights: balanced`` → ``n / (C · count_c)`` from the training split (sklearn's rule), else None."""
    if cfg.get("class_weights") != "balanced":
        return None
    y = np.asarray(train_labels, dtype=np.int64)
    counts = np.bincount(y[y != UNLABELED], minlength=n_classes).astype(np.float64)  # labelled items only
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32, device=device)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − CCC per dimension of ``pred``/``target`` ``(B, K)``, averaged over the dimensions with ≥ 2 annotated
    values in the batch (NaN targets masked out); 0 (with a graph) when none has."""
    valid = ~torch.isnan(target)
    losses = []
    for k in range(target.shape[1]):
        v = valid[:, k]
        if int(v.sum()) < 2:  # one value has no variance: CCC undefined
            continue
        p, t = pred[v, k], target[v, k]
        pm, tm = p.mean(), t.mean()
        cov = ((p - pm) * (t - tm)).mean()
        denom = p.var(unbiased=False) + t.var(unbiased=False) + (pm - tm) ** 2
        losses.append(1.0 - 2.0 * cov / denom.clamp_min(1e-8))
    return torch.stack(losses).mean() if losses else pred.sum() * 0.0


def dimensional_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """``dim_loss`` of ``pred``/``target`` ``(B, K)``: ``ccc`` (:func:`ccc_loss`) or ``mse`` over annotated values."""
    if kind == "ccc":
        return ccc_loss(pred, target)
    valid = ~torch.isnan(target)
    sq = torch.where(valid, pred - torch.nan_to_num(target), torch.zeros_like(pred)) ** 2
    return sq.sum() / valid.sum().clamp_min(1)


def task_loss(out: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, cfg: Mapping[str, Any],
              weight: torch.Tensor | None) -> torch.Tensor:
    """The training loss of a batch: ``out`` (B, W) model outputs, ``y`` (B,) class ids, ``target`` (B, K)."""
    task = task_of(cfg)
    if task == "classification":
        return class_loss(out, y, cfg, weight)
    k = target.shape[1]
    dim = dimensional_loss(out[:, out.shape[1] - k:], target.to(out.device), str(cfg.get("dim_loss", "ccc")))
    if task == "regression":
        return dim
    return class_loss(out[:, : out.shape[1] - k], y, cfg, weight) + float(cfg.get("dim_weight", 1.0)) * dim


def _batches(loader, where: str):
    """``loader``'s batches; a DataLoader worker that died (SIGKILL, usually the kernel's OOM killer) ends the
    fold with one line instead of PyTorch's traceback. The epoch checkpoints stay: a rerun resumes from them."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (RuntimeError, ConnectionError, EOFError) as e:
            died, err = None, e
            for _ in range(2):  # PyTorch's SIGCHLD handler may interrupt the first try with the same news
                try:
                    died = _dead_worker(it, err)
                    break
                except RuntimeError as again:
                    err = again
            if died is None:
                raise
            raise TrainError(f"{where}: {died} (often out of memory: see `dmesg`); set train.num_workers: 0 or a "
                             "smaller batch_size, then rerun (the fold resumes from its last epoch checkpoint)") from None
        yield batch


def _dead_worker(it, e: BaseException) -> str | None:
    """PyTorch's message when ``e`` comes from a dead DataLoader worker (it may first surface as a reset
    connection while a batch was in transit), else None. Stops the remaining workers either way."""
    import signal

    from torch.utils.data._utils.signal_handling import _error_if_any_worker_fails

    if not hasattr(it, "_shutdown_workers"):
        return None
    # PyTorch's SIGCHLD handler would raise the same news again, asynchronously: hold it until the workers
    # are shut down (they are then no longer watched)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    try:
        msg = str(e).splitlines()[0] if "DataLoader worker" in str(e) else None
        for _ in range(40):
            if msg is None:
                try:
                    _error_if_any_worker_fails()  # workers forked by this process
                except RuntimeError as dead:
                    msg = str(dead).splitlines()[0]
            if msg is not None and "signal" in msg:  # PyTorch named the cause
                break
            gone = [w for w in getattr(it, "_workers", []) if not w.is_alive()]  # forkserver/spawn workers
            if gone:
                code = gone[0].exitcode
                how = f"killed by signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
                # PyTorch's own "exited unexpectedly" (its watchdog can win the race under load) gets the cause
                msg = f"DataLoader worker (pid {gone[0].pid}) died ({how})" if msg is None else f"{msg} ({how})"
                break
            time.sleep(0.05)  # a connection reset can arrive just before the worker is reaped
        it._shutdown_workers()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return msg


def fit_epoch(model, loader, opt, cfg, st: LoopState, device, amp: bool, scaler, weight, where: str) -> tuple[int, float, bool]:
    """One pass over the training loader; returns (items seen, summed loss, max_steps reached)."""
    max_steps = cfg.get("max_steps")
    model.train()
    n_seen, loss_sum = 0, 0.0
    for batch_no, batch in enumerate(_batches(loader, f"{where} epoch {st.epoch + 1}")):
        inputs, y = _model_inputs(batch, device), batch["label"].to(device)
        mixed = mix_batch(inputs, float(cfg["mixup"]), where) if cfg.get("mixup") else None
        opt.zero_grad(set_to_none=True)
        try:
            with _autocast(device, amp):
                if mixed is None:
                    logits = model(**inputs)
                    loss = task_loss(logits.float(), y, batch.get("target"), cfg, weight)
                    if "soft" in batch:
                        w, t = float(cfg["distill"]["weight"]), float(cfg["distill"]["temperature"])
                        loss = (1.0 - w) * loss + w * distill_loss(logits.float(), batch["soft"].to(device), t)
                else:
                    inputs, perm, lam = mixed
                    logits = model(**inputs).float()
                    loss = lam * class_loss(logits, y, cfg, weight) + (1.0 - lam) * class_loss(
                        logits, y[perm], cfg, weight)
            if not torch.isfinite(loss):
                raise TrainError(f"{where} epoch {st.epoch + 1} batch {batch_no}: loss is {loss.item()}; "
                                 "lower the lr, set grad_clip, or set normalize: fold (and check the inputs: "
                                 "`emoflow features verify <feature>`)")
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
        except torch.cuda.OutOfMemoryError:
            bs = cfg.get("batch_size")
            raise TrainError(f"{where} epoch {st.epoch + 1} batch {batch_no}: out of GPU memory at batch_size "
                             f"{bs}; set train.batch_size: {max(1, int(bs or 2) // 2)} (or models.<name>.train."
                             "batch_size, a smaller fixed_frames/max_len, amp: true, or --device cpu)") from None
        if cfg.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["grad_clip"]))
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        st.step += 1
        n_seen += len(y)
        loss_sum += float(loss.detach()) * len(y)
        if max_steps is not None and st.step >= int(max_steps):
            return n_seen, loss_sum, True
    return n_seen, loss_sum, False


def mix_batch(inputs: dict[str, torch.Tensor], alpha: float, where: str
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """Mixup of a batch: ``(mixed inputs, perm, λ)`` with ``x' = λ·x + (1 − λ)·x[perm]``, λ ~ Beta(α, α).

    Float inputs are mixed; boolean padding masks (True = pad) keep a frame unless both items pad it. Draws
    from torch's generator, which the loop seeds per (seed, fold, epoch): a resumed run mixes the same pairs.

    >>> _ = torch.manual_seed(0)
    >>> x = {"x": torch.ones(4, 3, 2), "x_mask": torch.zeros(4, 3, dtype=torch.bool)}
    >>> m, perm, lam = mix_batch(x, 0.4, "demo")
    >>> m["x"].shape, sorted(perm.tolist()), 0.0 <= lam <= 1.0
    (torch.Size([4, 3, 2]), [0, 1, 2, 3], True)
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    n = next(iter(inputs.values())).shape[0]
    perm = torch.randperm(n).to(next(iter(inputs.values())).device)
    out = {}
    for k, v in inputs.items():
        if v.dtype == torch.bool:
            out[k] = v & v[perm]
        elif v.is_floating_point():
            out[k] = lam * v + (1.0 - lam) * v[perm]
        else:
            raise TrainError(f"{where}: mixup cannot mix input {k!r} of dtype {v.dtype} (token ids or lengths); "
                             "set mixup: null for this model")
    return out, perm, lam


@torch.no_grad()
def _fit_arrays(model, ds: FeatureDataset, data: FoldData, cfg, device) -> tuple[np.ndarray, np.ndarray]:
    """``(model.features_for_fit(batch) for the whole split, labels)`` — the model's own view of its inputs."""
    model.eval()
    xs, ys = [], []
    for batch in _loader(ds, data, cfg, shuffle=False, seed=0):
        xs.append(model.features_for_fit(**_model_inputs(batch, device)).double().cpu().numpy())
        ys.append(batch["label"].numpy())
    return np.concatenate(xs), np.concatenate(ys)


def fit_closed_form(model, ds: dict[str, FeatureDataset], data: FoldData, cfg: Mapping[str, Any], device,
                    where: str) -> LoopState:
    """``fit: sklearn``: the model's ``fit_arrays`` on the training split, selected on validation."""
    if not hasattr(model, "fit_arrays"):
        raise TrainError(f"{where}: fit: sklearn needs a model with fit_arrays (the classical baseline, the "
                         "probe); use fit: gradient")
    t0 = time.perf_counter()
    x, y = _fit_arrays(model, ds["train"], data, cfg, device)
    xv, yv = _fit_arrays(model, ds["val"], data, cfg, device)
    select_on = cfg["select_on"].removeprefix("val_")
    try:
        if cfg.get("train_on_val"):  # C picked on the held-out validation split, then refitted on train + val
            held_out = _held_out_mask(ds["train"], ds["val"], len(y), where)
            record = model.fit_arrays(x[held_out], y[held_out], xv, yv, select_on=select_on)
            model.fit_arrays(x, y, xv, yv, select_on=select_on, c_grid=(record["C"],))
            record["refit_on"] = "train+val"
        else:
            record = model.fit_arrays(x, y, xv, yv, select_on=select_on)
    except ValueError as e:
        raise TrainError(f"{where}: {e}") from None
    hist = [{"epoch": 1, "selected": float(g["C"] == record["C"]), **g} for g in record["grid"]]
    return LoopState(epoch=1, step=1, best_score=0.0, best_epoch=1, history=hist, train_samples=len(y),
                     train_time=time.perf_counter() - t0)


def _held_out_mask(train: FeatureDataset, val: FeatureDataset, n: int, where: str) -> np.ndarray:
    """``train_on_val``: which of the (merged) training split's ``n`` items are not validation items."""
    if len(train.utt_ids) != n:
        raise TrainError(f"{where}: train_on_val with a closed-form fit needs one item per utterance "
                         f"({n} items for {len(train.utt_ids)} utterances); set train_on_val: false")
    return ~np.isin(np.asarray(train.utt_ids), np.asarray(val.utt_ids))


def _train_fold_locked(model_name, fold, cfg, manifest, folds, features_dir, model_params, checkpoint_dir, labels,
                       log, create_model) -> FoldResult:
    t_start = time.perf_counter()
    device = resolve_device(str(cfg["device"]))
    set_determinism(cfg["deterministic"], device)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg["num_threads"]))
    where = f"{model_name} fold {fold}"
    data = prepare_fold(model_name, fold, manifest=manifest, folds=folds, features_dir=features_dir,
                        model_params=model_params, train_cfg=cfg, labels=labels)
    if cfg.get("distill"):
        data.soft_targets = teacher_targets(data, manifest, folds, features_dir, cfg, device, where, log)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None and data.normalizer is not None and data.normalizer.stats:
        ckpt.mkdir(parents=True, exist_ok=True)
        _atomic(ckpt / "normalization.safetensors",
                lambda p: save_file(data.normalizer.to_tensors(), str(p), metadata={"mode": data.normalizer.mode}))
    amp = bool(cfg["amp"]) and device.type == "cuda"
    n, seed = ensemble_size(cfg), int(cfg["seed"])
    ckpts = member_checkpoint_dirs(ckpt, n) if ckpt is not None else [None] * n
    members = []
    for k, member_ckpt in enumerate(ckpts):  # member k is the model a run with seed + k would train
        member_cfg = cfg if n == 1 else {**cfg, "seed": seed + k}
        member_where = where if n == 1 else f"{where} member {k} (seed {seed + k})"
        members.append(_train_member(model_name, data, member_cfg, member_ckpt, device, amp, member_where, log,
                                     create_model))
    return _final_result(members, data, cfg, device, amp, t_start)


def teacher_targets(data: FoldData, manifest: pd.DataFrame, folds: pd.DataFrame, features_dir, cfg, device,
                    where: str, log) -> np.ndarray:
    """``train.distill``: the cross-fitted probe's tempered probabilities for the fold's training utterances."""
    from models import create_model, get_model_info
    from models.baselines import fit_logistic

    d = cfg["distill"]
    teacher_cfg = resolve_train_config(get_model_info("probe").train, {"device": cfg["device"]})
    teacher_cfg.update(normalize=None, subset=cfg.get("subset"), fixed_frames=None, max_len=None, segment_s=None,
                       train_on_val=cfg.get("train_on_val"), distill=d)  # d: the teacher's split takes d's unlabeled
    tdata = prepare_fold("probe", data.fold, manifest=manifest, folds=folds, features_dir=features_dir,
                         model_params={"feature": d["feature"], "pooling": d["pooling"], "head": "linear"},
                         train_cfg=teacher_cfg, labels=data.labels)
    if tdata.splits["train"] != data.splits["train"]:
        raise TrainError(f"{where}: distill: the teacher's training utterances differ from the model's")
    teacher = create_model("probe", num_classes=len(data.labels), **tdata.model_overrides).to(device)
    ds = {s: make_dataset(tdata, s, teacher_cfg) for s in ("train", "val")}
    x, y = _fit_arrays(teacher, ds["train"], tdata, teacher_cfg, device)
    xv, yv = _fit_arrays(teacher, ds["val"], tdata, teacher_cfg, device)
    speaker = _speakers(manifest, {"train": data.splits["train"]})
    groups = speaker_groups([speaker[u] for u in data.splits["train"]], int(d["groups"]))
    fit_config = teacher.config
    try:
        if cfg.get("train_on_val"):  # one C, picked on the held-out validation split as the probe's refit does
            held_out = _held_out_mask(ds["train"], ds["val"], len(y), where) & (y != UNLABELED)
            c = fit_logistic(x[held_out], y[held_out], xv, yv, len(data.labels), fit_config, "ua")[4]["C"]
            fit_config = dataclasses.replace(fit_config, c_grid=(c,))
        probs, chosen = crossfit_probabilities(x, y, groups, xv, yv, len(data.labels), fit_config)
    except ValueError as e:
        raise TrainError(f"{where}: distill teacher: {e}") from None
    from sklearn.metrics import balanced_accuracy_score

    labelled = y != UNLABELED
    extra = f"; {int((~labelled).sum())} unlabeled training utterances scored" if not labelled.all() else ""
    log(f"{where}: distill teacher (probe on {d['feature']}, {len(np.unique(groups))} speaker groups, C {chosen}): "
        f"cross-fitted training UA {100 * balanced_accuracy_score(y[labelled], probs[labelled].argmax(axis=1)):.1f}"
        f"{extra}")
    return soften(probs, float(d["temperature"]))


@dataclass
class Member:
    """One trained model of a fold (a seed ensemble has several): its selected weights loaded, its loop state."""

    model: torch.nn.Module
    seed: int
    datasets: dict[str, FeatureDataset]
    val_loader: DataLoader
    state: LoopState
    resumed_from: int


def _train_member(model_name, data: FoldData, cfg, ckpt, device, amp, where, log, create_model) -> Member:
    """Build, train (or fit) one model of the fold with ``cfg["seed"]`` and load its selected weights."""
    seed = int(cfg["seed"])
    ds = {s: make_dataset(data, s, cfg) for s in ("train", "val", "test")}
    seed_everything(stable_seed(seed, data.fold, "init"))
    model = create_model(model_name, num_classes=len(data.labels), **data.model_overrides)
    from models.registry import set_task_head

    model = set_task_head(model, model_name, task_of(cfg), len(data.target_names)).to(device)
    val_loader = _loader(ds["val"], data, cfg, shuffle=False, seed=0)
    resumed_from = 0
    if cfg["fit"] == "sklearn":
        st = fit_closed_form(model, ds, data, cfg, device, where)
        best_state = _cpu_state(model)
        if ckpt is not None:  # the fitted scaler/weights are buffers: saved like a gradient fold's best epoch
            ckpt.mkdir(parents=True, exist_ok=True)
            _save_weights(ckpt / "best.safetensors", best_state, 1)
        chosen = next(h for h in st.history if h["selected"])
        log(f"{where}: fitted in closed form; validation selected {chosen}")
    else:
        st, best_state, resumed_from = _gradient_loop(model, data, ds, cfg, val_loader, ckpt, device, amp, seed,
                                                      where, log)
    model.load_state_dict({k: v.to(device) for k, v in best_state.items()})
    return Member(model, seed, ds, val_loader, st, resumed_from)


def _gradient_loop(model, data: FoldData, ds, cfg, val_loader, ckpt, device, amp, seed, where, log):
    """Epochs with validation after each, best-epoch selection, early stopping and checkpoints."""
    fold = data.fold
    opt = build_optimizer(model.parameters(), cfg)
    sched = build_scheduler(opt, cfg)
    scaler = torch.amp.GradScaler("cuda") if amp and not torch.cuda.is_bf16_supported() else None
    weight = loss_weights(cfg, data.label_of["train"], len(data.labels), device)
    st, resumed_from = LoopState(), 0
    if ckpt is not None:
        loaded = load_checkpoint(ckpt, model, opt, sched, device)
        if loaded is not None:
            st = LoopState(**{k: loaded[k] for k in st.to_dict() if k in loaded})
            resumed_from = st.epoch
            log(f"{where}: resuming after epoch {resumed_from}")
    best_state = None
    if ckpt is not None and (ckpt / "best.safetensors").exists() and st.best_epoch > 0:
        best_state = load_file(str(ckpt / "best.safetensors"))
    averaged = _weight_average(model, cfg, ckpt, st, device, where)
    max_steps, epochs, patience = cfg.get("max_steps"), int(cfg["epochs"]), cfg.get("patience")
    sel = cfg["select_on"].removeprefix("val_")
    task = task_of(cfg)
    n_cls = n_logits(task, len(data.labels))
    stopped = (max_steps is not None and st.step >= int(max_steps)) or (
        patience is not None and st.bad_epochs >= int(patience))
    while st.epoch < epochs and not stopped:
        epoch = st.epoch + 1
        # per-epoch seeding: dropout, shuffling and noise depend only on (seed, fold, epoch) → resumable exactly
        seed_everything(stable_seed(seed, fold, epoch))
        ds["train"].set_epoch(epoch)
        loader = _loader(ds["train"], data, cfg, shuffle=True, seed=stable_seed(seed, fold, epoch, "loader"))
        t0 = time.perf_counter()
        n_seen, loss_sum, stopped = fit_epoch(model, loader, opt, cfg, st, device, amp, scaler, weight, where)
        st.train_time += time.perf_counter() - t0
        st.train_samples += n_seen
        if sched is not None:
            sched.step()
        val_logits = evaluate(model, val_loader, len(ds["val"].utt_ids), ds["val"].utt_index, device, amp)
        vm, _ = score_outputs(val_logits, data, "val", task)
        if n_cls:  # of the logits columns (all of them for classification)
            vm["loss"] = split_loss(val_logits[:, :n_cls], data.label_of["val"])
        rec = {"epoch": epoch, "train_loss": loss_sum / max(n_seen, 1), **_val_record(vm),
               "lr": float(opt.param_groups[0]["lr"])}
        if sel == "loss":
            rec["val_loss"] = vm["loss"]
        st.history.append(rec)
        # higher is better; "last": each epoch beats the one before, so the final weights are kept
        score = float(epoch) if sel == "last" else -vm["loss"] if sel == "loss" else vm[sel]
        if score > st.best_score:
            st.best_score, st.best_epoch, st.bad_epochs = float(score), epoch, 0
            best_state = _cpu_state(model)
            if ckpt is not None:
                ckpt.mkdir(parents=True, exist_ok=True)
                _save_weights(ckpt / "best.safetensors", best_state, epoch)
        else:
            st.bad_epochs += 1
        if patience is not None and st.bad_epochs >= int(patience):
            stopped = True
        st.epoch = epoch
        log(f"{where} epoch {epoch}: loss {rec['train_loss']:.4f} {_val_text(vm)}"
            f"{' *' if st.best_epoch == epoch else ''}")
        if averaged is not None and epoch >= int(cfg["swa_start"]):
            averaged.update_parameters(model)
            st.swa_n += 1
            if ckpt is not None:  # before state.pt: a resume never averages an epoch twice
                _save_weights(ckpt / "swa.safetensors", _cpu_state(averaged), epoch)
        if ckpt is not None:
            save_checkpoint(ckpt, model, opt, sched, st.to_dict())
    if best_state is None:
        raise TrainError(f"{where}: no epoch was trained (epochs={epochs}, max_steps={max_steps})")
    if averaged is not None and st.swa_n:
        best_state = _finish_average(model, averaged, ds["train"], data, cfg, device, amp)
        if ckpt is not None:
            _save_weights(ckpt / "best.safetensors", best_state, st.epoch)
        log(f"{where}: weights averaged over epochs {cfg['swa_start']}-{st.epoch} ({st.swa_n}); batch-norm "
            "statistics recomputed on the training split")
    return st, best_state, resumed_from


def _weight_average(model, cfg, ckpt, st: LoopState, device, where: str):
    """The running weight average of ``swa_start`` (torch's ``AveragedModel``), restored from a checkpoint
    when resuming, or None when the setting is off."""
    if cfg.get("swa_start") is None:
        return None
    from torch.optim.swa_utils import AveragedModel

    averaged = AveragedModel(model)
    path = None if ckpt is None else ckpt / "swa.safetensors"
    if st.swa_n and path is not None and path.exists():
        averaged.load_state_dict(load_file(str(path), device=str(device)))
        if int(averaged.n_averaged) != st.swa_n:
            raise TrainError(f"{where}: {path} averages {int(averaged.n_averaged)} epochs, the checkpoint says "
                             f"{st.swa_n}; delete {ckpt} to train the fold again")
    elif st.swa_n:
        raise TrainError(f"{where}: resuming after epoch {st.epoch} needs {path}, which is missing; delete "
                         f"{ckpt} to train the fold again")
    return averaged


def _finish_average(model, averaged, train_ds, data: FoldData, cfg, device, amp) -> dict[str, torch.Tensor]:
    """Load the averaged weights into ``model`` and recompute its batch-norm statistics on the training split
    (the running statistics of single epochs do not describe averaged weights); returns the state."""
    with torch.no_grad():
        mean = dict(averaged.module.named_parameters())
        for name, p in model.named_parameters():
            p.copy_(mean[name])
    seed_everything(stable_seed(cfg["seed"], data.fold, "swa"))  # dropout is on while the statistics are taken
    recompute_batchnorm(model, _loader(train_ds, data, cfg, shuffle=False, seed=0), device, amp)
    return _cpu_state(model)


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> bool:
    """Running mean/var of every batch-norm layer re-estimated over ``loader`` (a cumulative average, as
    ``torch.optim.swa_utils.update_bn``, which cannot pass keyword inputs); False when the model has none."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for batch in loader:
        with _autocast(device, amp):
            model(**_model_inputs(batch, device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return True


def ensemble_outputs(outputs: list[np.ndarray], n_cls: int) -> np.ndarray:
    """One output array ``(N, W)`` from several models' ``(N, W)`` (:func:`evaluate`): the class columns become
    the log of the mean class probability (so softmax/argmax give the averaged prediction), the dimensional
    columns the mean value. NaN rows (dropped utterances) stay NaN; a single array is returned as it is.

    >>> a, b = np.array([[2.0, 0.0]]), np.array([[0.0, 1.0]])
    >>> np.round(np.exp(ensemble_outputs([a, b], 2)), 3)
    array([[0.575, 0.425]])
    """
    if len(outputs) == 1:
        return outputs[0]
    out = np.mean(outputs, axis=0)
    ok = ~np.isnan(out).any(axis=1)
    if n_cls:
        probs = np.mean([_softmax(o[ok, :n_cls]) for o in outputs], axis=0)
        with np.errstate(divide="ignore"):
            out[ok, :n_cls] = np.log(probs)
    return out


def _final_result(members: list[Member], data: FoldData, cfg, device, amp, t_start) -> FoldResult:
    """Score validation and test with the selected weights (the members' averaged probabilities for a seed
    ensemble); the test predictions and the fold's record."""
    fold, task = data.fold, task_of(cfg)
    n_cls = n_logits(task, len(data.labels))
    first = members[0]
    ds = first.datasets

    def outputs(split: str, loader: DataLoader) -> np.ndarray:
        return ensemble_outputs([evaluate(m.model, loader, len(ds[split].utt_ids), ds[split].utt_index, device, amp)
                                 for m in members], n_cls)

    val_logits = outputs("val", first.val_loader)
    val_m, _ = score_outputs(val_logits, data, "val", task)
    test_loader = _loader(ds["test"], data, cfg, shuffle=False, seed=0)
    test_logits = outputs("test", test_loader)
    test_m, ok = score_outputs(test_logits, data, "test", task)
    test_ids = [u for u, k in zip(data.splits["test"], ok, strict=True) if k]
    y = np.asarray(data.label_of["test"])[ok]
    preds: dict[str, list] = {
        "utt_id": test_ids,
        "fold": [fold] * len(test_ids),
        "label": [data.labels[i] for i in y],
    }
    if n_cls:
        probs = _softmax(test_logits[ok][:, :n_cls])
        preds["pred"] = [data.labels[i] for i in probs.argmax(axis=1)]
        for j, lab in enumerate(data.labels):
            preds[f"prob_{lab}"] = probs[:, j].astype(float).tolist()
    if data.targets is not None:  # true values beside predictions: the pooled metrics are recomputable
        true, pred = data.targets["test"][ok], test_logits[ok][:, n_cls:]
        for k, name in enumerate(data.target_names):
            preds[name] = [None if math.isnan(v) else float(v) for v in true[:, k]]
        for k, name in enumerate(data.target_names):
            preds[f"pred_{name}"] = pred[:, k].astype(float).tolist()
    model, st = first.model, first.state
    cfg_obj = dataclasses.asdict(model.config) if dataclasses.is_dataclass(getattr(model, "config", None)) else {}
    extras = {"dropped_test": ds["test"].dropped, "dropped_train": len(ds["train"].dropped)}
    if data.normalizer is not None:
        extras["normalize"] = data.normalizer.mode
    if cfg.get("train_on_val"):  # the `val` figures are on training speakers
        extras["val_in_train"] = True
    n_unlabeled = sum(1 for y in data.label_of["train"] if y == UNLABELED)
    if n_unlabeled:  # distill.unlabeled: teacher-only training items
        extras["unlabeled_in_train"] = n_unlabeled
    if hasattr(model, "layer_weights"):
        extras["layer_weights"] = [float(v) for v in model.layer_weights().detach().cpu()]
    if data.targets is not None:  # utterances without a value for some dimension: masked, counted here
        extras.update(task=task, targets=list(data.target_names),
                      unannotated={s: int(np.isnan(t).any(axis=1).sum()) for s, t in data.targets.items()})
    if len(members) > 1:  # the fold's record is member 0's loop; each member's own is kept here
        extras["seed_ensemble"] = [{"seed": m.seed, "best_epoch": int(m.state.best_epoch),
                                    "epochs_run": int(m.state.epoch), "resumed_from_epoch": m.resumed_from}
                                   for m in members]
    samples, seconds = sum(m.state.train_samples for m in members), sum(m.state.train_time for m in members)
    return FoldResult(
        model=data.model_name,
        fold=int(fold),
        labels=list(data.labels),
        best_epoch=int(st.best_epoch),
        epochs_run=int(st.epoch),
        steps=int(st.step),
        val=val_m,
        test=test_m,
        predictions=preds,
        history=list(st.history),
        runtime_s=time.perf_counter() - t_start,
        train_samples_per_s=samples / seconds if seconds > 0 else float("nan"),
        n_train=len(ds["train"]),
        n_val=len(data.splits["val"]),
        n_test=len(data.splits["test"]),
        device=str(device),
        model_config={k: list(v) if isinstance(v, tuple) else v for k, v in cfg_obj.items()},
        resumed_from_epoch=first.resumed_from,
        extras=extras,
    )
