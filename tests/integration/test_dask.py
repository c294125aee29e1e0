"""Fold fan-out with Dask: ``cross_validate`` on a real ``distributed.LocalCluster`` of 2 worker processes (as a
remote Dask cluster is used: by scheduler address), reporting to the session's Prefect server. Both workers
train folds, and the per-fold results equal those of the default in-process runner (reproducible
wherever the folds run)."""

from __future__ import annotations

import json
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def _cv(it, proj, tmp, **train):
    from pipeline.core.params import load_params
    from pipeline.orchestration.flows import run_cross_validation

    params = load_params(proj / "params.yaml")
    # as the train stage does: train.models is DVC's foreach list, not a training setting
    params["train"] = {**{k: v for k, v in params["train"].items() if k != "models"}, **train}
    return run_cross_validation(
        it.MODEL, manifest_path=proj / "data/manifest.parquet", folds_dir=proj / "data/folds",
        features_dir=proj / "data/features", results_dir=tmp / "results", params=params,
        storage_dir=tmp / "storage", runs_dir=tmp / "runs")  # own storage: no fold comes from another run's cache


def test_dask_cluster_trains_folds_on_both_workers_with_identical_results(it, dvc_project, prefect_server,
                                                                          tmp_path):
    pytest.importorskip("prefect_dask", reason="prefect-dask not installed (pip install 'emoflow[dask]')")
    import torch
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL, temporary_settings

    torch.set_num_threads(1)
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        local = _cv(it, dvc_project, tmp_path / "threads", task_runner="threads")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
            dask = _cv(it, dvc_project, tmp_path / "dask", task_runner="dask",
                       dask_address=cluster.scheduler_address)
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)

    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()  # its events worker is bound to this test's server; later flows must not reuse it
    assert len(executed) == 2 and all(n >= 1 for n in executed.values()), executed  # both workers trained folds
    assert sum(executed.values()) >= 5
    record = json.loads((tmp_path / "dask/results" / it.MODEL / "run.json").read_text())  # the run's provenance
    assert record["parameters"]["task_runner"] == "dask"
    assert record["cached_folds"] == []
    assert dask["n_folds"] == local["n_folds"] == 5
    for k in map(str, range(5)):
        for key in ("wa", "ua", "macro_f1", "best_epoch"):
            assert dask["folds"][k][key] == local["folds"][k][key], (k, key)
    assert dask["wa"] == local["wa"] and dask["ua"] == local["ua"]

    # the server saw one completed task run per fold in the Dask flow run
    req = urllib.request.Request(prefect_server.api_url + "/task_runs/filter", method="POST",
                                 data=json.dumps({"flow_runs": {"id": {"any_": [record["flow_run_id"]]}}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - local test server
        tasks = json.loads(r.read())
    assert sorted(t["name"] for t in tasks) == [f"{it.MODEL}-fold{k}" for k in range(5)]
    assert {t["state_type"] for t in tasks} == {"COMPLETED"}
