"""Extractor interface and registry.

Every feature set is one config dataclass + one extractor class, registered by name (lhotse style)::

    @register_extractor("logmel40")
    class LogMel(Extractor):
        Config = LogMelConfig
        ...

``get_extractor(name, **overrides)`` builds one with its config's defaults (the paper's values) overridden by
``params.yaml: features.<name>``. Extractors are pure: arrays (or a transcript) in, arrays out; I/O lives in
``features.store`` and the pipeline stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, ClassVar, Literal

import numpy as np

from features.errors import ConfigError, EmoflowError

__all__ = [
    "Extractor",
    "ExtractorConfig",
    "register_extractor",
    "get_extractor",
    "list_extractors",
    "extractor_class",
    "config_hash",
    "RUNTIME_ONLY",
]

_REGISTRY: dict[str, type[Extractor]] = {}


@dataclasses.dataclass
class ExtractorConfig:
    """Base of every extractor config. Subclasses add fields with the paper's defaults."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, *, name: str = "?") -> ExtractorConfig:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"features.{name}: unknown parameter(s) {unknown}; known parameters are {sorted(known)} "
                f"(fix params.yaml: features.{name})"
            )
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            # YAML gives lists where a dataclass default is a tuple; keep the declared type so hashes are stable.
            if isinstance(values[f.name], list) and isinstance(f.default, tuple):
                values[f.name] = tuple(values[f.name])
            _check_type(name, f, values[f.name])
        return cls(**values)


def _check_type(name: str, f: dataclasses.Field, value: Any) -> None:
    """Refuse a value whose type cannot be what the field's default is (``center: "yes"``, ``n_mels: forty``)."""
    default = f.default
    if default is dataclasses.MISSING or default is None:
        return
    if value is None:
        if "None" in str(f.type):
            return
        ok = False
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str) or ("int" in str(f.type) and isinstance(value, int))
    else:
        return
    if not ok:
        raise ConfigError(
            f"features.{name}.{f.name}: expected {type(default).__name__} like the default {default!r}, got "
            f"{value!r} ({type(value).__name__}); fix params.yaml"
        )


#: Mark a config field that changes how, not what, is computed (device, batch size): it is recorded in the
#: file's config but left out of the content key, so moving to a GPU does not recompute a feature set.
RUNTIME_ONLY = {"hash": False}


def config_hash(name: str, version: str, config: ExtractorConfig) -> str:
    """Content key of a feature set: extractor name + its code version + its config (not paths, not times, not
    runtime-only fields such as the device)."""
    keyed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("hash", True)}
    payload = json.dumps({"name": name, "version": version, "config": keyed}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class Extractor:
    """One feature set.

    Subclasses set ``Config``, ``version`` (bump it when the output of the same config changes), ``input``
    (``"audio"``: ``extract(waveform, sample_rate)``; ``"text"``: ``extract_text(transcript)``) and implement
    ``dim`` and ``frame_shift`` (seconds per output frame; ``None`` for token- or utterance-level features).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[ExtractorConfig]] = ExtractorConfig
    version: ClassVar[str] = "1"
    input: ClassVar[Literal["audio", "text"]] = "audio"
    #: False for extractors that hold a large model or a GPU: the stage then runs them in one process, batched.
    parallel_safe: ClassVar[bool] = True
    #: Sample rate the pipeline resamples audio to before calling ``extract``.
    sample_rate: ClassVar[int] = 16000

    def __init__(self, config: ExtractorConfig | None = None):
        self.config = config if config is not None else self.Config()

    # --- what the store records -------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        raise NotImplementedError

    @property
    def frame_shift(self) -> float | None:
        return None

    @property
    def config_hash(self) -> str:
        return config_hash(self.name, self.version, self.config)

    def provenance(self) -> dict[str, Any]:
        """Extra attributes for the feature file (e.g. ``random_weights``, the weights' source, the g2p tagger)."""
        return {"random_weights": False}

    # --- computing ---------------------------------------------------------------------------
    def extract(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Audio ``(n,)`` float32 at ``sample_rate`` → features ``(frames, dim)``."""
        raise NotImplementedError(f"{self.name} takes {self.input}, not audio")

    def extract_text(self, transcript: str) -> np.ndarray:
        """Transcript → features (``(tokens, dim)``, or ``(dim,)`` for utterance-level features)."""
        raise NotImplementedError(f"{self.name} takes {self.input}, not text")

    def extract_batch(self, items: list[Any], sample_rate: int | None = None) -> list[np.ndarray]:
        """Many inputs at once (waveforms or transcripts). Batched extractors override this; the result must
        equal the per-item results (padding must not leak)."""
        if self.input == "audio":
            return [self.extract(x, sample_rate or self.sample_rate) for x in items]
        return [self.extract_text(x) for x in items]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def register_extractor(name: str):
    """Class decorator: register an extractor under ``name``; a duplicate name raises."""

    def wrap(cls: type[Extractor]) -> type[Extractor]:
        if name in _REGISTRY:
            raise ValueError(f"feature extractor {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtin() -> None:
    # Import the extractor families so their decorators run. Optional families that fail to import
    # (a missing extra) are skipped here and explained by get_extractor.
    import importlib

    for mod in ("features.acoustic", "features.functionals", "features.text", "features.pretrained",
                "features.whisper"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("features."):
                continue
            raise


def list_extractors() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def extractor_class(name: str) -> type[Extractor]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown feature set {name!r}; known feature sets: {', '.join(sorted(_REGISTRY))}"
        ) from None


def get_extractor(name: str, **overrides: Any) -> Extractor:
    """Build the registered extractor ``name`` with its default config overridden by ``overrides``."""
    cls = extractor_class(name)
    config = cls.Config.from_dict(overrides, name=name)
    try:
        return cls(config)
    except ValueError as e:
        if isinstance(e, EmoflowError):
            raise
        # an extractor's own config check (``n_fft must be even``): a setting to fix, so one line in the CLI
        raise ConfigError(str(e)) from e
