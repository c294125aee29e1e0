"""A Prefect server for the team, and deployments that let anyone start feature extraction and
cross-validation from its UI.

* :func:`start_server` runs ``prefect server start`` in a subprocess (bound to 127.0.0.1 unless told otherwise),
  with ``PREFECT_SERVER_API_PORT``, ``PREFECT_API_URL`` and ``PREFECT_UI_API_URL`` set consistently (without
  ``PREFECT_SERVER_API_PORT`` the UI would call port 4200 whatever ``--port`` says), and waits until
  ``/api/health`` answers.
* :func:`client_env` is what every process that should report to that server needs (``PREFECT_API_URL``):
  ``emoflow demo``, ``dvc repro train@<model>``, a worker on a GPU machine.
* :func:`pipeline.orchestration.feature_flow.extract_flow` is a Prefect flow around :func:`pipeline.extraction.extract.extract_feature`
  (one feature); :func:`serve_deployments` serves it (one deployment per feature) together with ``cross_validate``
  (one deployment per model, from :mod:`pipeline.orchestration.flows`).

The ``emoflow server`` and ``emoflow serve`` commands that call these live in :mod:`pipeline.cli.team`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.errors import EmoflowError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ServerError",
    "PrefectServer",
    "api_url",
    "server_env",
    "client_env",
    "free_port",
    "wait_for_health",
    "start_server",
    "extract_deployments",
    "cross_validate_deployments",
    "serve_deployments",
    "run_until_stopped",
    "configured_api_url",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


class ServerError(EmoflowError, RuntimeError):
    """The Prefect server could not be started or reached (the message says what to do)."""


def _url_host(host: str) -> str:
    """The host a client on this machine uses to reach a server bound to ``host``."""
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def api_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """``http://<host>:<port>/api`` as a client on this machine reaches it.

    >>> api_url("0.0.0.0", 4300)
    'http://127.0.0.1:4300/api'
    """
    return f"http://{_url_host(host)}:{int(port)}/api"


def server_env(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, public_api_url: str | None = None,
               home: str | Path | None = None) -> dict[str, str]:
    """Environment variables for ``prefect server start`` (and for clients on the same machine).

    ``public_api_url``: the API URL as the *browsers* of the team reach it (e.g. ``http://gpu-box:4200/api``
    when the server binds 0.0.0.0, or a reverse proxy); default: :func:`api_url`. ``home``: ``PREFECT_HOME``
    (the server's SQLite database lives there).

    >>> e = server_env("127.0.0.1", 4301)
    >>> e["PREFECT_SERVER_API_PORT"], e["PREFECT_API_URL"], e["PREFECT_UI_API_URL"]
    ('4301', 'http://127.0.0.1:4301/api', 'http://127.0.0.1:4301/api')
    """
    url = api_url(host, port)
    env = {
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(int(port)),
        "PREFECT_API_URL": url,
        "PREFECT_UI_API_URL": public_api_url or url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    if home is not None:
        env["PREFECT_HOME"] = str(Path(home).resolve())
    return env


def client_env(url: str) -> dict[str, str]:
    """What a process needs to report its flow runs to the server at ``url`` (an ``.../api`` URL)."""
    url = url.rstrip("/")
    if not url.endswith("/api"):
        url += "/api"
    return {"PREFECT_API_URL": url}


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host if host not in ("0.0.0.0", "") else "127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((_url_host(host).strip("[]"), port)) == 0


def wait_for_health(url: str, timeout: float = 90.0, *, process: subprocess.Popen | None = None,
                    log_path: Path | None = None) -> float:
    """Poll ``<url>/health`` until the server answers ``true``; returns the seconds waited.

    ``process``: fail at once (with the tail of ``log_path``) if it exits before becoming healthy.
    """
    t0 = time.monotonic()
    health = url.rstrip("/") + "/health"
    last = "no answer"
    while time.monotonic() - t0 < timeout:
        if process is not None and process.poll() is not None:
            raise ServerError(f"prefect server exited with code {process.returncode} before it was healthy"
                              + _log_tail(log_path))
        try:
            with urllib.request.urlopen(health, timeout=2) as r:  # noqa: S310 - our own local URL
                body = r.read().decode().strip()
                if r.status == 200 and json.loads(body) is True:
                    return time.monotonic() - t0
                last = f"HTTP {r.status}: {body[:200]}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.25)
    raise ServerError(f"{health} not healthy after {timeout:.0f} s ({last})" + _log_tail(log_path))


def _log_tail(path: Path | None, n: int = 30) -> str:
    if path is None or not Path(path).is_file():
        return ""
    lines = Path(path).read_text(errors="replace").splitlines()[-n:]
    return f"\n--- {path} (last {len(lines)} lines) ---\n" + "\n".join(lines)


@dataclass
class PrefectServer:
    """A running ``prefect server start`` subprocess (its own process group, stopped by :meth:`stop`)."""

    host: str
    port: int
    process: subprocess.Popen
    home: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return api_url(self.host, self.port)

    @property
    def ui_url(self) -> str:
        return self.api_url[: -len("/api")]

    def flow_run_url(self, flow_run_id: str) -> str:
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server's process group (uvicorn and its services), SIGKILL after ``timeout``."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def __enter__(self) -> PrefectServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    *,
    home: str | Path | None = None,
    log_path: str | Path | None = None,
    public_api_url: str | None = None,
    timeout: float = 90.0,
    extra_env: Mapping[str, str] | None = None,
) -> PrefectServer:
    """Start ``prefect server start --host HOST --port PORT`` and wait for ``/api/health``.

    ``port=None`` picks a free port. ``home``: ``PREFECT_HOME`` of the server (its database); default: the
    caller's ``PREFECT_HOME`` or ``./.prefect``. The output goes to ``log_path`` (default
    ``<home>/server.log``). Binding anything other than 127.0.0.1 exposes an API without authentication to
    the network: do it only on a trusted network, or set ``PREFECT_SERVER_API_AUTH_STRING``.
    """
    port = free_port(host) if port is None else int(port)
    if _port_in_use(host, port):
        raise ServerError(f"port {port} on {host} is already in use (another Prefect server?); "
                          f"pick another with --port, or use that server: export PREFECT_API_URL={api_url(host, port)}")
    home = Path(home or os.environ.get("PREFECT_HOME") or ".prefect").resolve()
    home.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path) if log_path else home / "server.log"
    env = dict(os.environ)
    env.update(server_env(host, port, public_api_url=public_api_url, home=home))
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port),
           "--analytics-off"]
    with open(log_path, "ab") as log:
        # own session: stop() signals the whole group (the CLI runs uvicorn as a child process)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = PrefectServer(host=host, port=port, process=proc, home=home, log_path=log_path, env=env)
    try:
        wait_for_health(server.api_url, timeout, process=proc, log_path=log_path)
    except BaseException:
        server.stop()
        raise
    return server


# ----------------------------------------------------------------------------------------------- flows
# The extract flow lives in pipeline/orchestration/feature_flow.py so that importing this module (and the emoflow CLI)
# does not import Prefect.
def _load(params_path: str | Path | None) -> dict[str, Any]:
    if params_path and Path(params_path).exists():
        from pipeline.core.params import load_params

        return load_params(params_path)
    return {}


def extract_deployments(params_path: str | Path | None = "params.yaml", features: Sequence[str] | None = None,
                        *, tag: str = "emoflow") -> list:
    """One ``extract/<feature>`` deployment per feature (default: ``params.yaml: extract.features``)."""
    from pipeline.orchestration.feature_flow import extract_flow

    whole = _load(params_path)
    features = list(features or ((whole.get("extract") or {}).get("features") or []))
    return [extract_flow.to_deployment(name=f, parameters={"feature": f, "params_path": str(params_path)},
                                       tags=[tag, f], description=f"Extract {f} into data/features/{f}.h5")
            for f in features]


def cross_validate_deployments(params_path: str | Path | None = "params.yaml", models: Sequence[str] | None = None,
                               *, tag: str = "emoflow") -> list:
    """One ``cross_validate/<model>`` deployment per model, defaults from ``params.yaml`` (see pipeline.orchestration.flows)."""
    from pipeline.orchestration import flows

    if hasattr(flows, "deployments"):  # the flows module's own builder, when it offers one
        return list(flows.deployments(params_path, models=models))
    from models import list_models

    whole = _load(params_path)
    flow_keys = ("task_runner", "max_workers", "dask_address", "storage_dir", "runs_dir", "refresh_cache")
    out = []
    for m in models or list_models():
        model_params, train_params, _ = flows.split_params(whole, m)
        flow_cfg = {k: train_params.pop(k) for k in flow_keys if k in train_params}
        defaults = flows._jsonable({"model": m, "model_params": model_params, "train_params": train_params,
                                    "corpus": flows.corpus_name(whole),
                                    **{k: v for k, v in flow_cfg.items() if v is not None}})
        out.append(flows.cross_validate.to_deployment(name=m, parameters=defaults, tags=[tag, m],
                                                      description=f"Cross-validate {m} on its paper's fold plan"))
    return out


def serve_deployments(params_path: str | Path | None = "params.yaml", *, models: Sequence[str] | None = None,
                      features: Sequence[str] | None = None, limit: int | None = None) -> None:
    """Serve the ``extract`` and ``cross_validate`` deployments from this process (blocks until Ctrl-C).

    Runs started from the UI execute here, in the project directory; start this on the machine that should
    do the work (a GPU box), with ``PREFECT_API_URL`` pointing at the team server.
    """
    import prefect

    deps = extract_deployments(params_path, features) + cross_validate_deployments(params_path, models)
    prefect.serve(*deps, limit=limit)


def run_until_stopped(server: PrefectServer) -> int:
    """Block while ``server`` runs; stop it on Ctrl-C or SIGTERM. Returns 0 when stopped that way, else the
    server's own exit code (non-zero: it died; its log says why)."""
    def _terminate(signum, frame):  # `kill`, systemd, docker stop: stop the server group too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, _terminate)
    interrupted = False
    try:
        while server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        server.stop()
    return 0 if interrupted else (server.process.returncode or 0)


def configured_api_url() -> str | None:
    """The ``PREFECT_API_URL`` this process would report to (env or Prefect profile); None when unset."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None
