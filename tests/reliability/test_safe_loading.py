"""Safe loading, checked on the package sources (AST, not grep, so comments and docstrings do not count):

* model weights are saved with safetensors; any other ``torch.save`` is an allow-listed non-weight payload
  that is read back with ``torch.load(weights_only=True)``;
* every ``torch.load`` / ``torch.hub.load_state_dict_from_url`` passes ``weights_only=True``;
* no ``pickle``/``dill``/``joblib``/``pd.read_pickle`` loading, no ``np.load(..., allow_pickle=True)``, no
  ``save_pretrained(safe_serialization=False)`` / ``from_pretrained(use_safetensors=False)``;
* persisted Prefect results use the JSON serializer (Prefect's default is pickle);
* servers bind to 127.0.0.1 unless told otherwise (emoflow's server helpers, their CLI, Prefect's own defaults).
"""

from __future__ import annotations

import ast
import inspect

import pytest
from _rel import ROOT

PACKAGES = ("features", "models", "pipeline")
SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))

#: ``torch.save`` calls that are allowed, with why: (file, the saved expression's source)
TORCH_SAVE_ALLOWED = {
    # optimizer/scheduler/RNG state for resuming (weights go to last.safetensors); read with weights_only=True
    ("pipeline/training/train.py", "payload"),
    # torchopenl3's own weights format (.pth.tar state dict of tensors); read with weights_only=True
    ("features/demo_models.py", "model.state_dict()"),
}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


@pytest.fixture(scope="module")
def trees():
    assert len(SOURCES) > 20, "package sources not found"
    return {p.relative_to(ROOT).as_posix(): ast.parse(p.read_text(), filename=str(p)) for p in SOURCES}


def test_every_torch_load_is_weights_only(trees):
    found = []
    for rel, tree in trees.items():
        for call, fn in _calls(tree):
            if fn == "torch.load" or fn.endswith("load_state_dict_from_url"):
                found.append(rel)
                assert _is_true(_kw(call, "weights_only")), (
                    f"{rel}:{call.lineno}: {fn}(...) without weights_only=True unpickles arbitrary code")
    assert "pipeline/training/train.py" in found  # the check did look at the checkpoint loader


def test_no_pickle_based_loading_of_user_data(trees):
    banned = {"pickle.load", "pickle.loads", "cPickle.load", "dill.load", "dill.loads", "joblib.load",
              "pd.read_pickle", "pandas.read_pickle", "numpy.load", "np.load"}
    for rel, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"pickle", "cPickle", "dill", "joblib"} & set(names), f"{rel}:{node.lineno} imports pickle"
        for call, fn in _calls(tree):
            if fn in ("np.load", "numpy.load"):
                assert not _is_true(_kw(call, "allow_pickle")), f"{rel}:{call.lineno}: np.load(allow_pickle=True)"
            elif fn in banned:
                pytest.fail(f"{rel}:{call.lineno}: {fn}(...) deserialises with pickle")
            if fn.endswith("save_pretrained"):
                v = _kw(call, "safe_serialization")
                assert v is None or _is_true(v), f"{rel}:{call.lineno}: save_pretrained without safetensors"
            if fn.endswith("from_pretrained"):
                v = _kw(call, "use_safetensors")
                assert v is None or _is_true(v), f"{rel}:{call.lineno}: from_pretrained(use_safetensors=False)"


def test_checkpoints_are_safetensors_and_other_saves_are_allow_listed(trees):
    saves = []
    for rel, tree in trees.items():
        for call, fn in _calls(tree):
            if fn == "torch.save":
                what = ast.unparse(call.args[0])
                assert (rel, what) in TORCH_SAVE_ALLOWED, (
                    f"{rel}:{call.lineno}: torch.save({what}, ...) — save model weights with "
                    "safetensors.torch.save_file (or add a reasoned entry to TORCH_SAVE_ALLOWED)")
                saves.append((rel, what))
    assert set(saves) <= TORCH_SAVE_ALLOWED
    # the training checkpoints themselves: weights through safetensors' save_file, loaded with load_file
    src = (ROOT / "pipeline" / "training" / "train.py").read_text()
    tree = trees["pipeline/training/train.py"]
    names = {fn for _, fn in _calls(tree)}
    assert {"save_file", "load_file"} <= names
    assert "last.safetensors" in src and "best.safetensors" in src


def test_the_saved_training_state_really_loads_with_weights_only(synthetic_cv, tmp_path):
    """Not just the call site: the state.pt the trainer writes contains nothing weights_only refuses."""
    import torch

    from models import tiny_config
    from pipeline.training.train import train_fold

    cv = synthetic_cv()
    train_fold("ilt", 0, manifest=cv["manifest"], folds=cv["folds"], features_dir=cv["features_dir"],
               model_params=tiny_config("ilt"), train_params={"epochs": 1, "batch_size": 8, "fixed_frames": 32,
                                                              "num_threads": 1},
               checkpoint_dir=tmp_path / "ck", log=lambda s: None)
    state = torch.load(tmp_path / "ck" / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    from safetensors.torch import load_file

    assert load_file(tmp_path / "ck" / "best.safetensors")  # weights: plain tensors
    assert {p.suffix for p in (tmp_path / "ck").iterdir()} <= {".safetensors", ".pt", ".json"}


def test_persisted_prefect_results_are_json_not_pickle(trees):
    checked = 0
    for rel, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and ast.unparse(dec.func) in ("task", "flow", "prefect.task",
                                                                           "prefect.flow"):
                    if _is_true(_kw(dec, "persist_result")):
                        checked += 1
                        ser = _kw(dec, "result_serializer")
                        assert isinstance(ser, ast.Constant) and ser.value == "json", (
                            f"{rel}:{node.lineno}: {node.name} persists results with Prefect's default (pickle) "
                            "serializer; set result_serializer='json'")
    assert checked >= 1  # train_fold's results are persisted (the CV cache)


def test_servers_bind_to_localhost_unless_told_otherwise(monkeypatch):
    from pipeline.orchestration import server

    assert server.DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(server.start_server).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(server.server_env).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(server.api_url).parameters["host"].default == "127.0.0.1"
    from pipeline.cli import team as cli_team

    assert inspect.signature(cli_team.cli_server).parameters["host"].default == "127.0.0.1"
    from _rel import run_cli

    code, out, _, _ = run_cli(["server", "--help"])  # the command a user runs (mounted on the emoflow CLI)
    assert code == 0 and "127.0.0.1" in out
    env = server.server_env()
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1" and "127.0.0.1" in env["PREFECT_API_URL"]
    # no emoflow source binds all interfaces by default
    for rel, tree in {p.relative_to(ROOT).as_posix(): ast.parse(p.read_text()) for p in SOURCES}.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for d in node.args.defaults + node.args.kw_defaults:
                    if isinstance(d, ast.Constant) and d.value in ("0.0.0.0", "::"):
                        pytest.fail(f"{rel}:{node.lineno}: {node.name} binds {d.value} by default")
    # Prefect's own defaults (what `prefect server start` and a served runner use without emoflow's helpers)
    for var in ("PREFECT_SERVER_API_HOST", "PREFECT_RUNNER_SERVER_HOST"):
        monkeypatch.delenv(var, raising=False)
    from prefect.settings import PREFECT_RUNNER_SERVER_HOST, PREFECT_SERVER_API_HOST

    assert PREFECT_SERVER_API_HOST.value() == "127.0.0.1"
    assert PREFECT_RUNNER_SERVER_HOST.value() in ("localhost", "127.0.0.1")
