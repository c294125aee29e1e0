"""Reading ``params.yaml``: one section per stage, with errors that name the key and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from features.errors import ConfigError


class ParamsError(ConfigError):
    """``params.yaml`` is missing, malformed, or a value has the wrong type."""


#: ``train`` keys of params.yaml that list DVC stages (``train.models``, ``train.baselines``), not training settings
STAGE_LISTS = ("models", "baselines")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root or pass --params")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        # one line: where (line:column, 1-based) and what, not PyYAML's multi-line caret drawing
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ParamsError(f"{where}: not valid YAML ({what}); fix the file (tip: `git diff {path}`)") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections (dataset, folds, extract, ...)")
    return data


def section(params: dict[str, Any], dotted: str, *, source: str = "params.yaml", default: Any = ...) -> Any:
    """``section(p, "features.logmel40")`` → that mapping, or a clear error naming the missing key."""
    node: Any = params
    for i, key in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or key not in node:
            if default is not ...:
                return default
            where = ".".join(dotted.split(".")[:i]) or "<top level>"
            raise ParamsError(f"{source}: key {dotted!r} not found (no {key!r} under {where}); add it to {source}")
        node = node[key]
    return node


def expect(value: Any, kind: type | tuple[type, ...], key: str, *, source: str = "params.yaml") -> Any:
    """Type-check one value (bools are not ints here, as in YAML they are a common slip)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds) or (float in kinds and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise ParamsError(f"{source}: {key} must be {names}, got {value!r} ({type(value).__name__}); fix {source}")
    return value
