"""Model registry: every paper model and baseline, by name.

A model class is registered with :func:`register_model` and must provide

* ``Config``: a dataclass whose defaults are the paper's values (NF values are our choice, marked in the
  class docstring);
* ``__init__(self, config, num_classes)``;
* ``input_specs(config) -> dict[str, InputSpec]`` (staticmethod): batch key → feature-store feature, kind
  and the config field holding its dimension;
* ``forward(**batch) -> logits (B, num_classes)``.

Batch conventions: a sequence input ``k`` is a float tensor ``(B, T, D)`` with a bool ``k_mask`` ``(B, T)``
(True = padding); an utterance vector is ``(B, D)``; phonemes are a LongTensor ``(B, W, P)`` with 0 = pad.

>>> "ilt" in list_models()
True
>>> model = create_model("ilt", d_model=16, lstm_hidden=8, d_ff=32, cnn_channels=[4, 4]).eval()
>>> model(**example_batch("ilt", d_model=16, lstm_hidden=8, d_ff=32, cnn_channels=[4, 4])).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from features.errors import ConfigError
from models.blocks import count_parameters

#: feature kinds an input can have
KINDS = ("sequence", "vector", "phonemes")


@dataclass(frozen=True)
class InputSpec:
    """How a model consumes one feature set from the store.

    ``feature``: feature-store name (e.g. ``"wav2vec2"``); ``kind``: ``sequence`` (B, T, D) + ``<key>_mask``,
    ``vector`` (B, D), or ``phonemes`` (B, W, P) ids with 0 = pad; ``dim_param``: the config field the training
    code must set to the dimension it finds in the store (for phonemes: the vocabulary size);
    ``mask_key``: batch key of the padding mask (None when there is none); ``layers_param``: for a model
    that consumes stacked encoder layers ``(T, L, H)`` itself (the probe), the config field set to ``L`` — the
    data pipeline then keeps the layer axis instead of reducing it.
    """

    feature: str
    kind: str
    dim_param: str
    mask_key: str | None = None
    optional: bool = False
    layers_param: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What the training flow needs to know about a registered model (read by pipeline/)."""

    name: str
    model_cls: type
    config_cls: type
    train: dict[str, Any]
    paper: dict[str, Any]  # title, wa, ua (as published, %, None where not reported), protocol, source
    fold_plan: str
    description: str = ""

    @property
    def inputs(self) -> dict[str, str]:
        """Batch key → feature-store name for the default config (e.g. ``{"x": "logmel40"}``)."""
        return self.inputs_for()

    def inputs_for(self, **overrides) -> dict[str, str]:
        """Batch key → feature-store name for the config with ``overrides`` applied (RLC adds ``text``)."""
        return {k: s.feature for k, s in self.input_specs(**overrides).items()}

    def input_specs(self, **overrides) -> dict[str, InputSpec]:
        """The model's inputs for ``overrides``; ``inputs={key: feature}`` swaps the feature of an input whose
        paper input is a representation (e.g. ``{"audio": "whisper"}`` for KS-Transformer's wav2vec2)."""
        swaps = overrides.pop("inputs", None) or {}
        cfg = make_config(self.name, **overrides)
        specs = dict(self.model_cls.input_specs(cfg))
        return swap_inputs(self.name, specs, swaps)

    def deviations_for(self, **overrides) -> list[str]:
        """Why the model with ``overrides`` is not the paper's: the registered ``paper["deviations"]`` and the
        architecture options that replace a part of it; [] for the paper's architecture at any width."""
        overrides.pop("inputs", None)
        config = make_config(self.name, **overrides)
        return list(self.paper.get("deviations") or []) + list(self.model_cls.config_deviations(config))


#: what kind of array each feature set stores, for checking ``inputs`` swaps (others: frame sequences)
FEATURE_KINDS = {"functionals": "vector", "bert_cls": "vector", "phonemes": "phonemes"}


def swap_inputs(model: str, specs: dict[str, InputSpec], swaps: dict[str, str]) -> dict[str, InputSpec]:
    """``specs`` with ``feature`` replaced per ``swaps``; an unknown key or a feature of another kind
    (vector for a frame sequence, ...) raises ValueError naming both."""
    if not isinstance(swaps, dict):
        raise ConfigError(f"models.{model}.inputs must map input keys to feature names, got {swaps!r}")
    for key, feature in swaps.items():
        if key not in specs:
            raise ConfigError(f"models.{model}.inputs: {key!r} is not an input of {model}; its inputs are "
                             f"{sorted(specs)}")
        kind = FEATURE_KINDS.get(str(feature), "sequence")
        if kind != specs[key].kind:
            raise ConfigError(f"models.{model}.inputs.{key}: {feature!r} gives a {kind}, but {model}'s {key!r} "
                             f"takes a {specs[key].kind} (paper input: {specs[key].feature!r})")
        specs[key] = dataclasses.replace(specs[key], feature=str(feature))
    return specs


_REGISTRY: dict[str, ModelInfo] = {}


@dataclass(frozen=True)
class Requirements:
    """What model ``model`` needs for one ``params.yaml: models.<model>`` section: the one answer that training,
    cache keys, ``emoflow pull`` and the benchmarks read.

    ``inputs``: batch key → feature-store name (after ``inputs`` swaps and options such as RLC's ``use_text``);
    ``features``: the distinct feature files (with a ``train.distill`` teacher's); ``fold_plan``: the section's ``fold_plan`` or the paper's;
    ``config``: the model-config overrides; ``train``: the section's per-model training overrides;
    ``swapped``: the inputs that are not the paper's; ``label_map``: the section's corpus-label → class map
    (None: the manifest's labels).
    """

    model: str
    inputs: dict[str, str]
    features: list[str]
    fold_plan: str
    config: dict[str, Any]
    train: dict[str, Any]
    swapped: dict[str, str]
    label_map: dict[str, str] | None = None


def requirements(name: str, section: dict[str, Any] | None = None,
                 train_section: dict[str, Any] | None = None) -> Requirements:
    """Resolve ``params.yaml: models.<name>`` (``train``, ``fold_plan``, ``inputs`` and config keys);
    ``train_section``: params' top-level ``train`` (its ``distill`` wins over the model's, as in training).

    >>> requirements("rlc", {"use_text": True, "fold_plan": "loso"}).features
    ['lld17', 'word2vec']
    """
    info = get_model_info(name)
    sec = dict(section or {})
    train = dict(sec.pop("train", None) or {})
    plan = sec.pop("fold_plan", None) or info.fold_plan
    label_map = sec.pop("label_map", None)
    swapped = dict(sec.get("inputs") or {})
    inputs = info.inputs_for(**sec)
    # train.distill reads a teacher's stored encoder states too (pipeline/training/distill.py)
    distill = (train_section or {}).get("distill") or train.get("distill")
    teacher = distill.get("feature") if isinstance(distill, dict) else None
    features = sorted(dict.fromkeys([*inputs.values(), *([str(teacher)] if teacher else [])]))
    return Requirements(model=name, inputs=inputs, features=features,
                        fold_plan=str(plan), config={k: v for k, v in sec.items()}, train=train, swapped=swapped,
                        label_map=dict(label_map) if label_map else None)




def register_model(
    name: str,
    *,
    train: dict[str, Any],
    paper: dict[str, Any],
    fold_plan: str,
    description: str = "",
) -> Callable[[type], type]:
    """Class decorator registering ``cls`` under ``name``; a duplicate name raises ValueError.

    >>> register_model("ilt", train={}, paper={}, fold_plan="x")(object)
    Traceback (most recent call last):
    ...
    ValueError: model 'ilt' is already registered (by ILT)
    """

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(
                f"model {name!r} is already registered (by {_REGISTRY[name].model_cls.__name__})"
            )
        for attr in ("Config", "input_specs"):
            if not hasattr(cls, attr):
                raise TypeError(f"model class {cls.__name__} lacks {attr!r}")
        _REGISTRY[name] = ModelInfo(
            name=name,
            model_cls=cls,
            config_cls=cls.Config,
            train=dict(train),
            paper=dict(paper),
            fold_plan=fold_plan,
            description=description,
        )
        return cls

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    """Registry entry of ``name`` (unknown name → ValueError listing the known ones)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def model_config_class(name: str) -> type:
    """The config dataclass of model ``name``."""
    return get_model_info(name).config_cls


def _yaml_friendly(value):
    if isinstance(value, tuple):
        return [_yaml_friendly(v) for v in value]
    return value


def default_config(name: str) -> dict[str, Any]:
    """Defaults of model ``name`` as a plain dict (tuples → lists), i.e. a ``params.yaml: models.<name>`` section.

    >>> default_config("rlc")["gca_iterations"]
    3
    """
    cfg = model_config_class(name)()
    return {f.name: _yaml_friendly(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def make_config(name: str, **overrides):
    """Config dataclass of ``name`` with ``overrides`` applied; an unknown key raises ValueError naming it.

    >>> make_config("ilt", no_such_key=1)
    Traceback (most recent call last):
    ...
    features.errors.ConfigError: unknown config key(s) ['no_such_key'] for model 'ilt'; known keys: ...
    """
    cls = model_config_class(name)
    known = [f.name for f in dataclasses.fields(cls)]
    overrides = {k: v for k, v in overrides.items() if k != "inputs"}  # input swaps: see ModelInfo.input_specs
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} for model {name!r}; known keys: {', '.join(known)}"
        )
    # YAML gives lists where the dataclass has tuples; keep configs hashable/immutable-looking.
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return cls(**fixed)


def create_model(name: str, num_classes: int = 4, **overrides) -> nn.Module:
    """Build model ``name`` with its paper defaults, ``overrides`` applied to its config dataclass."""
    info = get_model_info(name)
    cfg = make_config(name, **overrides)
    try:
        return info.model_cls(cfg, num_classes=num_classes)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        # a model's own config check (``embed_dim must be divisible by num_heads``): a setting to fix
        raise ConfigError(str(e)) from e


def example_batch(name: str, batch_size: int = 2, seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    """Random batch that ``create_model(name, **overrides)(**batch)`` accepts, with masks.

    Item 0 is the longest (no padding); the others are shorter and padded, so masks are exercised.
    Dimensions come from the config (so the same overrides must be passed as to :func:`create_model`).
    """
    info = get_model_info(name)
    cfg = make_config(name, **overrides)
    gen = torch.Generator().manual_seed(seed)
    return info.model_cls.example_batch(cfg, batch_size, gen)


def describe_models() -> list[dict[str, Any]]:
    """One dict per model with its default config: name, params (trainable count), inputs, paper, fold_plan."""
    rows = []
    for name in list_models():
        info = get_model_info(name)
        with torch.device("meta"):  # shapes only: counting parameters needs no memory or init time
            model = create_model(name)
        rows.append(
            {
                "name": name,
                "params": count_parameters(model),
                "inputs": info.inputs,
                "paper": info.paper.get("title", ""),
                "fold_plan": info.fold_plan,
                "wa": info.paper.get("wa"),
                "ua": info.paper.get("ua"),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------- helpers
# used by the models' example_batch implementations


def random_lengths(batch_size: int, max_len: int, gen: torch.Generator, min_len: int = 1) -> torch.Tensor:
    """Item 0 gets ``max_len``; the others a random length in ``[min_len, max_len]``."""
    lengths = torch.randint(min_len, max_len + 1, (batch_size,), generator=gen)
    lengths[0] = max_len
    return lengths


def random_sequence(
    lengths: torch.Tensor, dim: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(B, T, dim)`` float sequence, zero at padded steps, and its padding mask."""
    from models.blocks import lengths_to_mask

    mask = lengths_to_mask(lengths)
    x = torch.randn(len(lengths), mask.size(1), dim, generator=gen)
    return x.masked_fill(mask.unsqueeze(-1), 0.0), mask


class PaperModel(nn.Module):
    """Base class: keeps the config and answers :meth:`model_inputs` from the subclass's ``input_specs``.

    ``output_layer``: dotted path of the final ``nn.Linear`` (pooled representation → logits), which
    :func:`set_task_head` widens for dimensional targets; None = the model cannot take another head.
    """

    Config: type
    output_layer: str | None = None

    def __init__(self, config, num_classes: int):
        super().__init__()
        self.config = config
        self.num_classes = num_classes

    @staticmethod
    def input_specs(config) -> dict[str, InputSpec]:  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def config_deviations(config) -> list[str]:
        """Options of ``config`` that replace a part of the paper's architecture (reported as not comparable)."""
        return []

    def model_inputs(self) -> dict[str, str]:
        """Batch key → feature-store name consumed by this instance (e.g. ``{"x": "logmel40"}``)."""
        return {k: s.feature for k, s in self.input_specs(self.config).items()}


# ----------------------------------------------------------------------------------------------- task heads

#: what a model's output predicts (train setting ``task``): class logits, dimensional targets (V/A/D), or both
TASKS = ("classification", "regression", "multitask")


def head_width(task: str, num_classes: int, n_targets: int) -> int:
    """Output width of ``task``: C logits, K targets, or C logits followed by K targets."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return {"classification": num_classes, "regression": n_targets, "multitask": num_classes + n_targets}[task]


def set_task_head(model: nn.Module, name: str, task: str, n_targets: int) -> nn.Module:
    """``model`` (in place) with its final Linear replaced by one of :func:`head_width` outputs, so that
    ``forward`` gives ``(B, C)`` logits (classification: model untouched), ``(B, K)`` targets (regression) or
    ``(B, C + K)`` logits then targets (multitask). The head reads the same pooled representation (and dropout)
    as the model's classifier; the rest of the model is unchanged. A model without ``output_layer`` refuses.

    >>> m = set_task_head(create_model("probe", input_dim=8, n_layers=3), "probe", "multitask", 3)
    >>> m.eval()(**example_batch("probe", input_dim=8, n_layers=3)).shape
    torch.Size([2, 7])
    """
    width = head_width(task, int(getattr(model, "num_classes", 0)), int(n_targets))
    if task == "classification":
        return model
    path = getattr(model, "output_layer", None)
    supported = [n for n in list_models() if getattr(get_model_info(n).model_cls, "output_layer", None)]
    if not path:
        raise ConfigError(f"{name}: task {task!r} needs a model whose final Linear can be widened; {name} has none "
                          f"(use task: classification, or one of {', '.join(supported)})")
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{name}: output_layer {path!r} is a {type(old).__name__}, not nn.Linear")
    new = nn.Linear(old.in_features, width, bias=old.bias is not None, device=old.weight.device,
                    dtype=old.weight.dtype)
    if attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    return model
