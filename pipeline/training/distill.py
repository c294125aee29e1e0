"""Knowledge distillation from a frozen pretrained encoder's linear probe (a small-corpus setting).

``train.distill: {feature: whisper, weight: 0.5, temperature: 2.0, groups: 4}`` trains a model on its own
inputs (a paper model keeps its log-Mels, LLDs, ...) against a mix of the true labels and the class
probabilities of a *teacher*: the closed-form ``probe`` (pooled frozen-encoder statistics + logistic
regression, :func:`models.baselines.fit_logistic`) on ``feature``. At test time only the student runs.

The teacher never sees a test utterance, and never scores a training utterance it was fitted on: the fold's
training speakers are dealt into ``groups`` groups, and each group's soft targets come from a teacher fitted on
the other groups (cross-fitting), with its regularisation chosen on the fold's validation split as the probe's
is. A teacher scoring its own training items would return near one-hot targets that carry nothing beyond the
labels. Loss: ``(1 − weight) · task loss + weight · T² · KL(teacher_T ‖ student_T)`` (Hinton et al. 2015).

``unlabeled: true`` widens the transfer set (Hinton et al. train the student on a transfer set, not only the
labelled data): the fold's *training* speakers' utterances whose corpus label is outside the model's
``label_map`` (RAVDESS's calm/fearful/disgust/surprised beside a 4-class task) join the training split with no
label. They get the teacher's soft targets (from a teacher fitted on the other speaker groups' labelled
utterances) and no task loss; validation and test keep only labelled utterances of the model's classes, and no
utterance of a validation or test speaker is ever added.

Pure functions (arrays in, arrays out); :mod:`pipeline.training.train` reads the teacher's features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.training.data import UNLABELED

#: keys of ``train.distill`` with their defaults (``feature`` has none: it names a stored encoder feature)
DISTILL_DEFAULTS: dict[str, Any] = {"feature": None, "pooling": "meanstd", "weight": 0.5, "temperature": 2.0,
                                    "groups": 4}
#: optional keys, held by the resolved setting only when given (so the cache keys of runs without them stay)
DISTILL_OPTIONAL: dict[str, Any] = {"unlabeled": False}


def distill_settings(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``train.distill`` checked and completed with :data:`DISTILL_DEFAULTS`; ``None`` when off.

    >>> distill_settings({"feature": "whisper"})["temperature"]
    2.0
    >>> distill_settings({"feature": "whisper", "wieght": 1})
    Traceback (most recent call last):
    ...
    ValueError: distill: unknown key(s) ['wieght']; known: feature, groups, pooling, temperature, unlabeled, weight
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"distill must be null (off) or a mapping like {{feature: whisper}}, got {value!r}")
    unknown = sorted(set(value) - set(DISTILL_DEFAULTS) - set(DISTILL_OPTIONAL))
    if unknown:
        known = sorted({*DISTILL_DEFAULTS, *DISTILL_OPTIONAL})
        raise ValueError(f"distill: unknown key(s) {unknown}; known: {', '.join(known)}")
    out = {**DISTILL_DEFAULTS, **value}
    if not isinstance(out["feature"], str) or not out["feature"]:
        raise ValueError("distill.feature must name a stored encoder feature (e.g. whisper), the teacher's input")
    if out["pooling"] not in ("mean", "meanstd"):
        raise ValueError(f"distill.pooling must be mean or meanstd, got {out['pooling']!r}")
    if not 0.0 < float(out["weight"]) <= 1.0:
        raise ValueError(f"distill.weight must be in (0, 1] (the teacher's share of the loss), got {out['weight']!r}")
    if not float(out["temperature"]) > 0.0:
        raise ValueError(f"distill.temperature must be > 0, got {out['temperature']!r}")
    if isinstance(out["groups"], bool) or not isinstance(out["groups"], int) or out["groups"] < 2:
        raise ValueError(f"distill.groups must be a whole number ≥ 2 (speaker groups), got {out['groups']!r}")
    if not isinstance(out.get("unlabeled", False), bool):
        raise ValueError(f"distill.unlabeled must be true or false, got {out['unlabeled']!r}")
    return out


def uses_unlabeled(train_cfg: Mapping[str, Any]) -> bool:
    """Whether a resolved train config adds unlabeled training utterances (``distill.unlabeled``)."""
    d = train_cfg.get("distill")
    return isinstance(d, Mapping) and bool(d.get("unlabeled"))


def speaker_groups(speakers: Sequence[str], n_groups: int) -> np.ndarray:
    """Group id per item: the sorted distinct speakers dealt round-robin into ``min(n_groups, #speakers)`` groups.

    >>> speaker_groups(["b", "a", "c", "a"], 2).tolist()
    [1, 0, 0, 0]
    """
    order = {s: i % max(1, min(n_groups, len(set(speakers)))) for i, s in enumerate(sorted(set(speakers)))}
    return np.array([order[s] for s in speakers], dtype=np.int64)


def crossfit_probabilities(x: np.ndarray, y: np.ndarray, groups: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                           num_classes: int, fit_config: Any) -> tuple[np.ndarray, list[float]]:
    """Out-of-group teacher probabilities ``(N, num_classes)`` for training items ``x`` ``(N, D)``: rows of group
    g come from a logistic regression fitted on the other groups' labelled items (``y`` of an unlabeled item is
    :data:`UNLABELED`; it is scored, never fitted on), C chosen on ``(x_val, y_val)``.
    Returns the probabilities and the C chosen for each group."""
    from models.baselines import fit_logistic

    probs = np.zeros((len(x), num_classes))
    chosen = []
    for g in np.unique(groups):
        held = groups == g
        fit = ~held & (y != UNLABELED)
        w, b, mean, scale, record = fit_logistic(x[fit], y[fit], x_val, y_val, num_classes, fit_config, "ua")
        logits = ((x[held] - mean) / scale) @ w.T + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        probs[held] = p / p.sum(axis=1, keepdims=True)
        chosen.append(float(record["C"]))
    return probs, chosen


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise: the teacher's distribution at temperature ``T`` (1: unchanged).

    >>> soften(np.array([[0.8, 0.2]]), 1.0).round(3).tolist()
    [[0.8, 0.2]]
    >>> soften(np.array([[0.8, 0.2]]), 2.0).round(3).tolist()
    [[0.667, 0.333]]
    """
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def distill_loss(logits: torch.Tensor, soft: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(soft ‖ softmax(logits / T))``, batch mean; ``logits`` ``(B, C)``, ``soft`` ``(B, C)`` the
    teacher's probabilities already at temperature ``T`` (:func:`soften`). Zero when the student's tempered
    distribution equals the teacher's.

    >>> p = torch.tensor([[0.7, 0.3]])
    >>> float(distill_loss(torch.log(p) * 2.0, p, 2.0)) < 1e-6
    True
    """
    t = float(temperature)
    return F.kl_div(F.log_softmax(logits / t, dim=-1), soft, reduction="batchmean") * t * t
