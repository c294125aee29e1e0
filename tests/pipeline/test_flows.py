"""The Prefect ``cross_validate`` flow: per-fold task runs, artifacts, results files, content-keyed fold cache,
and (slow) a real ``prefect server`` plus a deployment run started through its API as the UI does."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
import torch

from models import tiny_config
from pipeline.orchestration.flows import fold_cache_key, make_task_runner, run_cross_validation
from pipeline.training.train import resolve_train_config

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
TRAIN = {"epochs": 2, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1}


def _run(cv, tmp_path, **kw):
    train = {**TRAIN, **kw.pop("train", {})}
    return run_cross_validation(
        "ilt",
        manifest_path=cv["manifest_path"],
        folds_dir=cv["folds_dir"],
        features_dir=cv["features_dir"],
        results_dir=tmp_path / "results",
        params={"models": {"ilt": tiny_config("ilt")}, "train": train, "dataset": {"name": "demo"}},
        storage_dir=tmp_path / "storage",
        runs_dir=tmp_path / "runs",
        **kw,
    )


def test_fold_cache_key_is_content_based(synthetic_cv, tmp_path):
    cv = synthetic_cv()
    cfg = resolve_train_config({"lr": 1e-3}, TRAIN)
    kw = dict(manifest=cv["manifest"], folds=cv["folds"], model_params={**tiny_config("ilt"), "n_mels": 40},
              labels=["ang", "hap", "neu", "sad"], code="c0")
    key = fold_cache_key("ilt", 0, features_dir=cv["features_dir"], train_cfg=cfg, **kw)
    moved = tmp_path / "elsewhere"
    shutil.copytree(cv["features_dir"], moved)
    assert fold_cache_key("ilt", 0, features_dir=moved, train_cfg=cfg, **kw) == key  # paths are not content
    assert fold_cache_key("ilt", 0, features_dir=cv["features_dir"], train_cfg={**cfg, "device": "cuda",
                          "num_workers": 4}, **kw) == key  # where it runs is not what it computes
    assert fold_cache_key("ilt", 1, features_dir=cv["features_dir"], train_cfg=cfg, **kw) != key
    assert fold_cache_key("ilt", 0, features_dir=cv["features_dir"], train_cfg={**cfg, "epochs": 3}, **kw) != key
    assert fold_cache_key("ilt", 0, features_dir=cv["features_dir"], train_cfg=cfg,
                          **{**kw, "code": "c1"}) != key
    other = synthetic_cv(seed=1)  # same ids and labels, different feature checksums? (same ids → same sha)
    relabel = cv["manifest"].assign(label=other["manifest"]["label"][::-1].to_numpy())
    assert fold_cache_key("ilt", 0, features_dir=cv["features_dir"], train_cfg=cfg,
                          **{**kw, "manifest": relabel}) != key


def test_make_task_runner_names():
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    assert isinstance(make_task_runner("threads"), ThreadPoolTaskRunner)
    assert isinstance(make_task_runner("processes", 2), ProcessPoolTaskRunner)
    pytest.importorskip("prefect_dask")
    assert type(make_task_runner("dask", 2)).__name__ == "DaskTaskRunner"
    with pytest.raises(Exception, match="threads, processes, dask"):
        make_task_runner("mpi")


def test_cross_validate_flow_end_to_end_with_resume(prefect_harness, synthetic_cv, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    cv = synthetic_cv()
    # 1) an "interrupted" CV: only fold 0 finished
    first = _run(cv, tmp_path, folds=[0])
    assert sorted(first["folds"]) == ["0"] and first["run"]["cached_folds"] == []
    # 2) the rerun reuses fold 0 from the cache and trains only fold 1
    second = _run(cv, tmp_path)
    assert second["run"]["cached_folds"] == [0]
    assert second["folds"]["0"] == first["folds"]["0"]
    # 3) nothing changed: every fold comes from the cache, same numbers
    third = _run(cv, tmp_path)
    assert third["run"]["cached_folds"] == [0, 1]
    for k in ("wa", "ua", "macro_f1"):
        assert third[k] == second[k]

    # what Prefect recorded
    run_id = UUID(third["run"]["flow_run_id"])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        assert flow_run.state.is_completed()
        assert flow_run.parameters["model"] == "ilt"
        # Prefect 3 records task runs from events, asynchronously: wait for them (bounded) rather than race.
        deadline = time.monotonic() + 60
        while True:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            if len(tasks) >= 2 and {t.state.name for t in tasks} == {"Cached"} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert sorted(t.name for t in tasks) == ["ilt-fold0", "ilt-fold1"]
        assert {t.state.name for t in tasks} == {"Cached"}
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        by_key = {a.key: a for a in arts}
        assert {"ilt-cv-metrics", "ilt-confusion"} <= set(by_key)
        table = by_key["ilt-cv-metrics"].data
        table = json.loads(table) if isinstance(table, str) else table
        assert [row["fold"] for row in table][:2] == ["0", "1"]
        assert "NOT comparable" in by_key["ilt-cv-metrics"].description
        assert "| **ang** |" in by_key["ilt-confusion"].data

    # the files DVC tracks
    out = tmp_path / "results" / "ilt"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"wa", "ua", "f1", "recall"}  # numbers only: what `dvc metrics show` tabulates
    assert set(metrics["wa"]) == {"mean", "std", "pooled"} and metrics["f1"] == third["macro_f1"]
    record = json.loads((out / "run.json").read_text())  # the provenance, beside the metrics
    assert record["corpus"] == "demo" and record["comparable_to_paper"] is False
    assert record["paper"]["wa"] == pytest.approx(67.56) and record["fold_plan"] == "random_55_25_20"
    assert record["features"]["logmel40"]["random_weights"] is False
    assert record["n_folds"] == 2 and sorted(record["folds"]) == ["0", "1"]
    preds = pd.read_parquet(out / "predictions.parquet")
    test_rows = cv["folds"][cv["folds"]["split"] == "test"]
    assert len(preds) == len(test_rows) and set(preds["fold"]) == {0, 1}
    conf = pd.read_csv(out / "confusion.csv")
    assert list(conf.columns) == ["actual", "predicted"] and len(conf) == len(preds)
    assert (conf["actual"] == conf["predicted"]).mean() * 100 == pytest.approx(metrics["wa"]["pooled"])
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    # one run record per flow run, with the git revision and the parameters
    records = sorted((tmp_path / "runs" / "ilt").glob("*/run.json"))
    assert len(records) == 3
    rec = json.loads(records[-1].read_text())
    assert "revision" in rec["git"] and rec["parameters"]["model"] == "ilt"
    assert rec["train"]["epochs"] == 2 and rec["model_params"]["n_mels"] == 40  # resolved configs
    assert record["flow_run_id"] == third["run"]["flow_run_id"]


# ----------------------------------------------------------------------------------------------- real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc, timeout: float = 60) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "prefect server exited early"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server at {url} not healthy within {timeout} s")


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


_SERVE = """
import sys
sys.path.insert(0, {root!r})
from pipeline.orchestration.flows import serve
serve(None, models=["ilt"], limit=1)
"""


@pytest.mark.slow
def test_real_server_deployment_run_is_recorded(synthetic_cv, tmp_path):
    """``prefect server start`` on a free port; ``serve()`` registers the deployment; a run is created through
    the API with custom parameters (what the UI's "Custom run" does); the served runner executes it; the API
    shows its task runs and artifacts, and the run record lands in runs_dir."""
    import httpx

    cv = synthetic_cv()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_API_PORT=str(port),
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_UI_ENABLED="false", OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runner = None
    try:
        _wait_health(api, server)
        runner = subprocess.Popen([sys.executable, "-c", _SERVE.format(root=str(ROOT))], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        dep = None
        while dep is None:
            assert runner.poll() is None, runner.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "deployment not registered within 60 s"
            r = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
            dep = next((d for d in r if d["name"] == "ilt"), None)
            time.sleep(0.5)
        params = {
            "model": "ilt", "manifest_path": str(cv["manifest_path"]), "folds_dir": str(cv["folds_dir"]),
            "features_dir": str(cv["features_dir"]), "runs_dir": str(tmp_path / "runs"),
            "storage_dir": str(tmp_path / "storage"), "model_params": tiny_config("ilt"),
            "train_params": TRAIN, "corpus": "demo",
        }
        fr = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": json.loads(
            json.dumps(params))}, timeout=10).json()
        deadline = time.time() + 150
        while True:
            state = httpx.get(f"{api}/flow_runs/{fr['id']}", timeout=10).json()["state"]
            if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.time() < deadline, f"flow run still {state and state['type']} after 150 s"
            time.sleep(1)
        assert state["type"] == "COMPLETED", state
        tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [fr["id"]]}}},
                           timeout=10).json()
        assert sorted(t["name"] for t in tasks) == ["ilt-fold0", "ilt-fold1"]
        arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [fr["id"]]}}},
                          timeout=10).json()
        assert {"ilt-cv-metrics", "ilt-confusion"} <= {a["key"] for a in arts}
        records = list((tmp_path / "runs" / "ilt").glob("*/run.json"))
        assert len(records) == 1
        rec = json.loads(records[0].read_text())
        assert rec["flow_run_id"] == fr["id"] and rec["prefect_api_url"] == api
        assert rec["parameters"]["train_params"]["epochs"] == 2
        assert rec["n_folds"] == 2 and set(json.loads((records[0].parent / "metrics.json").read_text())) == {
            "wa", "ua", "f1", "recall"}
    finally:
        if runner is not None:
            _stop(runner)
        _stop(server)
