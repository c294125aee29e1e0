"""The team workflow end to end, in a real browser: a teammate clones the project, pulls one model's features from
the team remote (no extraction), reproduces its cross-validation against the team's Prefect server, and the
Prefect UI (headless Chromium through Selenium) shows the flow run, one task run per fold and the metrics
artifact with the same numbers as ``results/<model>/metrics.json``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from pipeline.orchestration.results import load_result
from pipeline.team import remote as rm

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# exactly the flags of /work/shared/ENVIRONMENT.md (plus a new empty --user-data-dir per browser)
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _api(url: str, path: str, body: dict | None = None, retries: int = 5):
    """One Prefect REST call. HTTP 503 is retried with backoff, as Prefect's own client does: the server sends
    it for errors it calls retryable (e.g. SQLite busy while ``emoflow serve`` registers deployments)."""
    for attempt in range(retries + 1):
        req = urllib.request.Request(url + path, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - our own local server
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == retries:
                raise
            time.sleep(min(2.0**attempt, 10.0))


def _fmt(v: float) -> str:
    """A number as the Prefect UI prints a table cell (JavaScript: 25 not 25.0; rounded as the flow did)."""
    s = repr(round(float(v), 2))
    return s[:-2] if s.endswith(".0") else s


@pytest.fixture(scope="module")
def teammate_run(it, pushed_project, prefect_server, tmp_path_factory):
    """A fresh clone pulls MODEL's inputs and runs ``dvc repro --allow-missing train@MODEL`` reporting to the
    session's Prefect server."""
    base = tmp_path_factory.mktemp("teammate")
    clone1, _ = pushed_project
    clone = base / "clone"
    it.sh(base, "git", "clone", "-q", str(clone1), str(clone))
    targets = rm.pull_for_model(it.MODEL, repo=clone)
    h5 = clone / f"data/features/{it.FEATURE}.h5"
    before = h5.stat().st_mtime_ns
    out = it.sh(clone, "dvc", "repro", "--allow-missing", f"train@{it.MODEL}", timeout=600,
                PREFECT_API_URL=prefect_server.api_url, PREFECT_HOME=str(base / "prefect-home"))
    metrics = load_result(clone / f"results/{it.MODEL}")  # metrics.json's scores joined with run.json
    record = json.loads((clone / f"results/{it.MODEL}/run.json").read_text())  # the flow run's provenance
    return {"clone": clone, "targets": targets, "out": out, "metrics": metrics, "record": record,
            "h5_unchanged": h5.stat().st_mtime_ns == before, "run_id": record["flow_run_id"], "base": base}


def test_teammate_reproduces_results_from_pulled_features(it, teammate_run, prefect_server):
    run = teammate_run
    ran = [line for line in run["out"].splitlines() if line.startswith("Running stage")]
    assert ran == [f"Running stage 'train@{it.MODEL}':"], run["out"]  # no extraction, no corpus, no folds
    assert run["h5_unchanged"]
    assert not (run["clone"] / "data/demo_corpus").exists()
    assert rm.status([f"train@{it.MODEL}"], repo=run["clone"]) == {}  # dvc.lock now records the teammate's run
    m = run["metrics"]
    assert m["model"] == it.MODEL and m["n_folds"] == 5 and 0 <= m["wa"]["mean"] <= 100
    assert run["record"]["prefect_api_url"] == prefect_server.api_url

    # results/report.md from the teammate's results (what the report stage runs)
    it.sh(run["clone"], "emoflow", "stage", "report", "--results", "results", "--out", "results/report.md")
    report = (run["clone"] / "results/report.md").read_text()
    assert it.MODEL in report

    # the server recorded the run, one completed task run per fold, and the metrics artifacts
    api = prefect_server.api_url
    fr = _api(api, f"/flow_runs/{run['run_id']}")
    assert fr["state_type"] == "COMPLETED"
    tasks = _api(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["run_id"]]}}})
    assert sorted(t["name"] for t in tasks) == [f"{it.MODEL}-fold{k}" for k in range(5)]
    assert {t["state_type"] for t in tasks} == {"COMPLETED"}
    arts = _api(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["run_id"]]}}})
    assert {a["key"] for a in arts} >= {f"{it.MODEL}-cv-metrics", f"{it.MODEL}-confusion"}


def _browser(tmp: Path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install selenium (in the dev extra)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp, prefix='chromium-profile-')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp / "chromedriver.log")),
                              options=opts)
    driver.set_window_size(1400, 1000)
    return driver


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian: chromium chromium-driver; "
                           "`bash tests/setup_system.sh` installs them)")
def test_prefect_ui_shows_run_fold_tasks_and_metrics_artifact(it, teammate_run, prefect_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    m = teammate_run["metrics"]
    run_name = teammate_run["record"]["flow_run_name"]
    folds = [f"{it.MODEL}-fold{k}" for k in range(5)]
    driver = _browser(tmp_path)
    wait = WebDriverWait(driver, 60)

    def body() -> str:
        return driver.find_element(By.TAG_NAME, "body").text

    def shows(*texts: str):
        return lambda d: all(t in body() for t in texts)

    try:
        # the flow run page: name, state, flow, task run count (the UI is served by the server itself, offline)
        driver.get(prefect_server.flow_run_url(teammate_run["run_id"]))
        wait.until(shows(run_name, "Completed", "cross_validate", "5 Task runs"))
        driver.save_screenshot(str(tmp_path / "flow-run.png"))

        # its task runs: one per fold, all completed
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "li.p-tab#task-runs"))).click()
        wait.until(shows(*folds, "(5 Completed)"))
        driver.save_screenshot(str(tmp_path / "task-runs.png"))

        # its artifacts: the metrics table, with the numbers of metrics.json
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "li.p-tab#artifacts"))).click()
        key = f"{it.MODEL}-cv-metrics"
        card = wait.until(EC.element_to_be_clickable((By.XPATH, f"//*[normalize-space(text())='{key}']")))
        card.click()
        wait.until(shows("macro-F1", "pooled"))
        rows = {r.text.split()[0]: r.text.split()[1:] for r in driver.find_elements(By.TAG_NAME, "tr")
                if r.text.strip()}
        driver.save_screenshot(str(tmp_path / "metrics-artifact.png"))
        assert rows["mean"][:3] == [_fmt(m["wa"]["mean"]), _fmt(m["ua"]["mean"]), _fmt(m["macro_f1"]["mean"])], rows
        assert rows["pooled"][:2] == [_fmt(m["wa"]["pooled"]), _fmt(m["ua"]["pooled"])], rows
        for k in range(5):
            assert rows[str(k)][:2] == [_fmt(m["folds"][str(k)]["wa"]), _fmt(m["folds"][str(k)]["ua"])], rows
        assert run_name in body()  # the artifact page links back to the teammate's run
    finally:
        driver.quit()
        keep = os.environ.get("EMOFLOW_UI_SCREENSHOTS")  # set to a directory to keep the screenshots
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for png in tmp_path.glob("*.png"):
                shutil.copy(png, Path(keep) / png.name)


def test_serve_runs_extract_deployment_started_from_the_api(it, dvc_project, prefect_server, tmp_path):
    """``emoflow serve`` on a worker machine: deployments ``extract/<feature>`` and ``cross_validate/<model>``
    appear on the server; a run of ``extract/<FEATURE>`` created through the API (what the UI's Run button does)
    executes in the serving checkout, reuses every stored utterance and publishes its summary artifact."""
    import signal
    import subprocess
    import sys

    box = it.copy_project(dvc_project, tmp_path / "gpu-box")
    h5 = box / f"data/features/{it.FEATURE}.h5"
    before = h5.read_bytes()
    api = prefect_server.api_url
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pipeline.orchestration.server import serve_deployments; "
                               f"serve_deployments('params.yaml', models=[{it.MODEL!r}])"],
        cwd=box, env=it.env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-home")),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def serve_log() -> str:
        return (tmp_path / "serve.log").read_text(errors="replace")[-4000:]

    def poll(fn, what: str, timeout: float = 180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"serve exited ({proc.returncode}):\n{serve_log()}"
            try:
                value = fn()
                if value:
                    return value
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}:\n{serve_log()}")

    try:
        dep = poll(lambda: _api(api, f"/deployments/name/extract/{it.FEATURE}"), "the extract deployment")
        assert dep["parameters"]["feature"] == it.FEATURE
        cv = poll(lambda: _api(api, f"/deployments/name/cross_validate/{it.MODEL}"), "the cross_validate deployment")
        assert cv["parameters"]["model"] == it.MODEL

        fr = _api(api, f"/deployments/{dep['id']}/create_flow_run", {})
        done = poll(lambda: (r := _api(api, f"/flow_runs/{fr['id']}"))["state_type"] in
                    ("COMPLETED", "FAILED", "CRASHED") and r, "the extract run")
        assert done["state_type"] == "COMPLETED", serve_log()
        arts = _api(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [fr["id"]]}}})
        md = [a for a in arts if a["key"] == f"features-{it.FEATURE}"]
        n_utts = len(pd.read_parquet(box / "data/manifest.parquet"))
        assert md and f"| n_utts | {n_utts} |" in md[0]["data"], arts
        assert h5.read_bytes() == before  # every utterance reused: a no-op run leaves the file byte-identical
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_server_ui_talks_to_its_own_port_and_a_busy_port_is_refused(prefect_server, tmp_path):
    from pipeline.orchestration.server import ServerError, client_env, start_server

    # the UI asks /ui-settings where the API is: without PREFECT_SERVER_API_PORT it would say 4200
    with urllib.request.urlopen(prefect_server.ui_url + "/ui-settings", timeout=30) as r:  # noqa: S310
        assert json.loads(r.read())["api_url"] == prefect_server.api_url
    assert prefect_server.host == "127.0.0.1" and prefect_server.api_url.startswith("http://127.0.0.1:")
    with pytest.raises(ServerError, match=f"port {prefect_server.port} .* already in use"):
        start_server("127.0.0.1", prefect_server.port, home=tmp_path)
    assert client_env(prefect_server.ui_url) == {"PREFECT_API_URL": prefect_server.api_url}
