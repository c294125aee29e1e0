"""The import layers hold: ``features/`` and ``models/`` never import ``pipeline/``, each ``pipeline/`` layer imports
only the layers below it (``pipeline.LAYERS``, lowest first), only the CLI modules import typer, and the Prefect extract flow calls the extraction library rather than a DVC stage entry point.

Read from the source with ``ast`` (imports inside functions count too), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _is_cli(rel: str) -> bool:
    """The typer edge: the modules of pipeline/cli/."""
    return rel.startswith("pipeline/cli/")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (top-level names of relative imports are skipped)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def _sources(package: str) -> dict[str, set[str]]:
    return {p.relative_to(ROOT).as_posix(): _imports(p) for p in sorted((ROOT / package).rglob("*.py"))}


def _top(module: str) -> str:
    return module.split(".", 1)[0]


@pytest.mark.parametrize("package", ["features", "models"])
def test_lower_layers_never_import_pipeline(package):
    bad = {rel: sorted(m for m in mods if _top(m) == "pipeline") for rel, mods in _sources(package).items()}
    assert not {k: v for k, v in bad.items() if v}, f"{package}/ imports pipeline/: {bad}"


def test_typer_only_in_cli_modules():
    users = [rel for package in ("features", "models", "pipeline") for rel, mods in _sources(package).items()
             if any(_top(m) == "typer" for m in mods)]
    assert users, "no module imports typer: the check is reading the wrong files"
    assert [rel for rel in users if not _is_cli(rel)] == [], "typer outside the CLI layer"


def test_extract_flow_does_not_call_a_stage_entry_point():
    mods = _imports(ROOT / "pipeline/orchestration/feature_flow.py")
    assert "pipeline.cli.stages" not in mods and "pipeline.orchestration.dvc_stages" not in mods, sorted(mods)
    assert "pipeline.extraction.extract" in mods


def _layer(module_or_rel: str) -> str | None:
    """The pipeline layer of a dotted module name or a ``pipeline/<layer>/...`` path (None: not in one)."""
    parts = module_or_rel.replace("/", ".").split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "pipeline" else None


def test_every_pipeline_module_sits_in_a_layer():
    from pipeline import LAYERS

    loose = [rel for rel in _sources("pipeline") if rel != "pipeline/__init__.py" and _layer(rel) not in LAYERS]
    assert loose == [], f"modules outside the layers {LAYERS}: {loose}"


def test_layers_import_only_downward():
    from pipeline import LAYERS

    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = {}
    for rel, mods in _sources("pipeline").items():
        own = _layer(rel)
        if own is None:
            continue
        bad = sorted(m for m in mods if _top(m) == "pipeline" and _layer(m) in rank and rank[_layer(m)] > rank[own])
        if bad:
            upward[rel] = bad
    assert rank["core"] < rank["cli"] and len(_sources("pipeline")) > 20, "the check is reading the wrong files"
    assert upward == {}, f"imports of a higher layer: {upward}"
