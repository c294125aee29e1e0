"""`emoflow demo`: one Prefect server for the whole `dvc repro` (instead of a temporary one in every train stage),
stopped at the end; a PREFECT_API_URL of the user's is used as is. `dvc` and the server are stand-ins here (the
real server is covered by tests/integration)."""

from __future__ import annotations

import signal
import types

import pytest
from typer.testing import CliRunner

from pipeline.cli import main as cli
from pipeline.orchestration import server as srv_lib


class FakeServer:
    def __init__(self, port):
        self.port = port or 4321
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        self.home, self.log_path, self.stopped = "home", "home/server.log", False

    def stop(self):
        self.stopped = True


@pytest.fixture
def demo(monkeypatch):
    rec = types.SimpleNamespace(calls=[], started=[], busy=False)

    def start_server(host, port, **kw):
        if rec.busy and port == srv_lib.DEFAULT_PORT:
            raise srv_lib.ServerError(f"port {port} on {host} is already in use (another Prefect server?)")
        rec.started.append(FakeServer(port))
        return rec.started[-1]

    def call(cmd, env=None):
        rec.calls.append((cmd, dict(env or {}), [s.stopped for s in rec.started]))
        return 0

    monkeypatch.setattr(cli, "ensure_dvc", lambda: None)
    monkeypatch.setattr(cli.subprocess, "call", call)
    monkeypatch.setattr(srv_lib, "start_server", start_server)
    monkeypatch.setattr(srv_lib, "configured_api_url", lambda: None)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # leave the test process's SIGTERM handler alone
    return rec


def test_demo_runs_dvc_repro_against_one_server_and_stops_it(demo):
    r = CliRunner().invoke(cli.app, ["demo"])
    assert r.exit_code == 0, r.output
    (cmd, env, stopped_during), = demo.calls
    assert cmd == ["dvc", "repro"] and len(demo.started) == 1
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api" and stopped_during == [False]
    assert demo.started[0].stopped and "Prefect UI while the demo runs: http://127.0.0.1:4200" in r.output


def test_demo_takes_a_free_port_when_4200_is_busy(demo):
    demo.busy = True
    r = CliRunner().invoke(cli.app, ["demo", "report"])
    assert r.exit_code == 0, r.output
    (cmd, env, _), = demo.calls
    assert cmd == ["dvc", "repro", "report"] and env["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"


def test_demo_uses_the_users_prefect_api_url(demo, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://team-box:4200/api")
    r = CliRunner().invoke(cli.app, ["demo"])
    assert r.exit_code == 0, r.output
    assert demo.started == [] and demo.calls[0][1]["PREFECT_API_URL"] == "http://team-box:4200/api"


def test_demo_uses_the_profiles_api_url_and_no_server_means_none(demo, monkeypatch):
    monkeypatch.setattr(srv_lib, "configured_api_url", lambda: "http://profile-box:4200/api")
    assert CliRunner().invoke(cli.app, ["demo"]).exit_code == 0
    monkeypatch.setattr(srv_lib, "configured_api_url", lambda: None)
    assert CliRunner().invoke(cli.app, ["demo", "--no-server"]).exit_code == 0
    assert demo.started == [] and all("PREFECT_API_URL" not in env for _, env, _ in demo.calls)


def test_demo_goes_on_without_a_server_when_it_cannot_start(demo, monkeypatch):
    def broken(*a, **kw):
        raise srv_lib.ServerError("prefect server exited with code 1 before it was healthy")

    monkeypatch.setattr(srv_lib, "start_server", broken)
    r = CliRunner().invoke(cli.app, ["demo"])
    assert r.exit_code == 0 and "each train stage starts a temporary one" in r.output
    assert "PREFECT_API_URL" not in demo.calls[0][1]


def test_demo_stops_the_server_when_dvc_fails_or_is_interrupted(demo, monkeypatch):
    def interrupted(cmd, env=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.subprocess, "call", interrupted)
    CliRunner().invoke(cli.app, ["demo"])
    assert demo.started[0].stopped
