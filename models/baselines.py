"""Baselines run the same way as the paper models (same flows, folds, metrics and report):

* ``classical`` — utterance functionals (``functionals`` feature: MFCC + Δ mean/std, log-energy and log-F0
  statistics, duration), standardised with training-fold statistics, multinomial logistic regression fitted
  by scikit-learn (L-BFGS); the inverse regularisation ``C`` is chosen from ``c_grid`` on the fold's
  validation split only. The fitted scaler and coefficients live in the torch module's buffers, so checkpoints,
  evaluation and prediction are the same as for every other model.
* ``probe`` — the SUPERB / EmoBox frozen-encoder protocol: a learnable softmax-weighted sum of the stored
  encoder layers (``whisper`` by default; ``wav2vec2`` works the same) → pooling over the valid frames (mean,
  mean+std, or attention) → a linear or one-hidden-layer MLP head, trained with the normal loop.

Neither is from a paper: ``paper`` rows are empty and reports list them as baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.blocks import masked_mean
from models.registry import InputSpec, PaperModel, random_lengths, random_sequence, register_model

BASELINE_PAPER = {"title": "baseline (not from a paper)", "wa": None, "ua": None, "protocol": None,
                  "row": None}


# ----------------------------------------------------------------------------------------------- classical


@dataclass
class ClassicalConfig:
    #: length of the functionals vector (set from the store)
    input_dim: int = 63
    #: candidate C values (inverse L2 strength); the one with the best validation score is kept
    c_grid: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    #: "balanced" reweights classes by inverse frequency (sklearn's class_weight); None = unweighted
    class_weight: str | None = "balanced"
    max_iter: int = 5000
    feature: str = "functionals"


@register_model(
    "classical",
    train={"select_on": "val_ua", "epochs": 1, "fit": "sklearn"},
    paper=BASELINE_PAPER,
    fold_plan="loso",
    description="baseline: utterance MFCC/energy/F0 functionals, standardised, logistic regression",
)
class ClassicalLR(PaperModel):
    """Standardise → linear layer: ``x (B, D)`` → logits ``(B, C)``; weights come from :meth:`fit_arrays`.

    >>> from models import create_model, example_batch
    >>> create_model("classical", input_dim=5).eval()(**example_batch("classical", input_dim=5)).shape
    torch.Size([2, 4])
    """

    Config = ClassicalConfig

    def __init__(self, config: ClassicalConfig, num_classes: int):
        super().__init__(config, num_classes)
        d = int(config.input_dim)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.linear = nn.Linear(d, num_classes)

    @staticmethod
    def input_specs(config: ClassicalConfig) -> dict[str, InputSpec]:
        return {"x": InputSpec(config.feature, "vector", "input_dim")}

    @staticmethod
    def example_batch(config: ClassicalConfig, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"x": torch.randn(batch_size, int(config.input_dim), generator=gen)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, input_dim)`` → logits ``(B, num_classes)``."""
        return self.linear((x - self.mean) / self.scale)

    def features_for_fit(self, x: torch.Tensor) -> torch.Tensor:
        """What the closed-form fit sees: the raw vector ``(B, input_dim)`` (standardised inside the fit)."""
        return x

    def fit_arrays(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                   select_on: str = "ua", c_grid: Sequence[float] | None = None) -> dict:
        """Fit scaler + logistic regression for every C of ``c_grid`` on ``(x, y)``, keep the one with the best
        validation ``select_on`` (``ua`` or ``wa``), load it into this module; returns the selection record."""
        w, b, mean, scale, record = fit_logistic(x, y, x_val, y_val, self.num_classes, self.config, select_on, c_grid)
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
            self.linear.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        return record


def fit_logistic(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, num_classes: int, config,
                 select_on: str = "ua", c_grid: Sequence[float] | None = None):
    """StandardScaler + multinomial logistic regression (scikit-learn, L-BFGS) for each C of ``c_grid`` (default
    ``config.c_grid``); the C with the best validation score wins. Returns ``(W (C, D), b (C,), mean (D,),
    scale (D,), record)``; classes absent from the training split get a bias of -1e4 (never predicted)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss
    from sklearn.preprocessing import StandardScaler

    if select_on not in ("ua", "wa", "loss"):
        raise ValueError(f"select_on must be val_ua, val_wa or val_loss, got val_{select_on}")
    score_fn = {"ua": balanced_accuracy_score, "wa": accuracy_score}.get(select_on)
    scaler = StandardScaler().fit(x)
    xs, xv = scaler.transform(x), scaler.transform(x_val)
    best, history = None, []
    for c in config.c_grid if c_grid is None else c_grid:
        clf = LogisticRegression(C=float(c), max_iter=int(config.max_iter), class_weight=config.class_weight)
        clf.fit(xs, y)
        if score_fn is None:  # val_loss: higher is better throughout, so the negated cross-entropy
            score = -float(log_loss(y_val, clf.predict_proba(xv), labels=clf.classes_))
        else:
            score = float(score_fn(y_val, clf.predict(xv)))
        history.append({"C": float(c), f"val_{select_on}": score})
        if best is None or score > best[0]:
            best = (score, float(c), clf)
    assert best is not None
    _, c, clf = best
    w = np.zeros((num_classes, x.shape[1]))
    b = np.full(num_classes, -1e4)
    w[clf.classes_] = clf.coef_ if len(clf.classes_) > 2 else np.vstack([-clf.coef_[0], clf.coef_[0]]) / 2
    b[clf.classes_] = clf.intercept_ if len(clf.classes_) > 2 else np.array([-1, 1]) * clf.intercept_[0] / 2
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return w, b, scaler.mean_, scale, {"C": c, "grid": history}


# ----------------------------------------------------------------------------------------------- probe


@dataclass
class ProbeConfig:
    #: encoder state size (set from the store)
    input_dim: int = 512
    #: number of stored layers (set from the store; 1 for a single-layer file)
    n_layers: int = 1
    #: mean | meanstd | attention — pooling over the valid frames
    pooling: str = "meanstd"
    #: linear | mlp (one hidden layer of `hidden` units, ReLU, dropout)
    head: str = "linear"
    hidden: int = 256
    dropout: float = 0.2
    feature: str = "whisper"
    #: `train.fit: sklearn` only (linear head): the pooled statistics of the layer mean, standardised, logistic
    #: regression with C chosen on validation (the EmoBox/linear-probe recipe fitted to convergence)
    c_grid: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    class_weight: str | None = "balanced"
    max_iter: int = 5000


@register_model(
    "probe",
    train={"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "batch_size": 32, "epochs": 30,
           "schedule": None, "select_on": "val_ua", "patience": 8, "normalize": "fold", "class_weights": "balanced"},
    paper=BASELINE_PAPER,
    fold_plan="loso",
    description="baseline: frozen encoder states → weighted layer sum → pooling → linear/MLP (SUPERB/EmoBox)",
)
class Probe(PaperModel):
    """Frozen-encoder probe: ``x (B, T, L, H)`` or ``(B, T, H)`` + ``x_mask (B, T)`` → logits ``(B, C)``.

    >>> from models import create_model, example_batch
    >>> kw = dict(input_dim=8, n_layers=3)
    >>> create_model("probe", **kw).eval()(**example_batch("probe", **kw)).shape
    torch.Size([2, 4])
    """

    Config = ProbeConfig

    def __init__(self, config: ProbeConfig, num_classes: int):
        super().__init__(config, num_classes)
        if config.pooling not in ("mean", "meanstd", "attention"):
            raise ValueError(f"probe: pooling must be mean, meanstd or attention, got {config.pooling!r}")
        if config.head not in ("linear", "mlp"):
            raise ValueError(f"probe: head must be linear or mlp, got {config.head!r}")
        h = int(config.input_dim)
        self.layer_logits = nn.Parameter(torch.zeros(int(config.n_layers)))
        self.attention = nn.Linear(h, 1) if config.pooling == "attention" else None
        pooled = 2 * h if config.pooling == "meanstd" else h
        self.dropout = nn.Dropout(config.dropout)
        if config.head == "linear":
            self.head = nn.Linear(pooled, num_classes)
        else:
            self.head = nn.Sequential(nn.Linear(pooled, config.hidden), nn.ReLU(), nn.Dropout(config.dropout),
                                      nn.Linear(config.hidden, num_classes))

    @property
    def output_layer(self) -> str:
        return "head" if isinstance(self.head, nn.Linear) else "head.3"

    @staticmethod
    def input_specs(config: ProbeConfig) -> dict[str, InputSpec]:
        return {"x": InputSpec(config.feature, "sequence", "input_dim", mask_key="x_mask",
                               layers_param="n_layers")}

    @staticmethod
    def example_batch(config: ProbeConfig, batch_size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        lengths = random_lengths(batch_size, 12, gen)
        x, mask = random_sequence(lengths, int(config.n_layers) * int(config.input_dim), gen)
        if int(config.n_layers) > 1:
            x = x.view(batch_size, -1, int(config.n_layers), int(config.input_dim))
        return {"x": x, "x_mask": mask}

    def layer_weights(self) -> torch.Tensor:
        """Softmax weights of the stored layers ``(n_layers,)`` (what the probe learned to use)."""
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, T, L, H)`` (or ``(B, T, H)``), ``x_mask`` ``(B, T)`` True = pad → logits ``(B, C)``."""
        return self.head(self.dropout(self.pool(x, x_mask)))

    def features_for_fit(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled statistics ``(B, pooled)`` the closed-form fit uses (layer weights as they are: uniform)."""
        return self.pool(x, x_mask)

    def fit_arrays(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                   select_on: str = "ua", c_grid: Sequence[float] | None = None) -> dict:
        """``fit: sklearn``: logistic regression on pooled statistics; the scaler is folded into the linear head."""
        if not isinstance(self.head, nn.Linear):
            raise ValueError("probe: fit: sklearn needs head: linear")
        w, b, mean, scale, record = fit_logistic(x, y, x_val, y_val, self.num_classes, self.config, select_on, c_grid)
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(w / scale, dtype=torch.float32))
            self.head.bias.copy_(torch.as_tensor(b - (w / scale) @ mean, dtype=torch.float32))
        return record

    def pool(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted layer sum, then pooling over the valid frames → ``(B, pooled)``."""
        if x.dim() == 4:
            x = (x * self.layer_weights().view(1, 1, -1, 1)).sum(dim=2)
        if self.attention is not None:
            scores = self.attention(x).squeeze(-1)
            if x_mask is not None:
                scores = scores.masked_fill(x_mask, float("-inf"))
            pooled = (torch.softmax(scores, dim=1).unsqueeze(-1) * x).sum(dim=1)
        else:
            pooled = masked_mean(x, x_mask)
            if self.config.pooling == "meanstd":
                sq = masked_mean(x * x, x_mask)
                pooled = torch.cat([pooled, (sq - pooled * pooled).clamp_min(1e-6).sqrt()], dim=-1)
        return pooled
