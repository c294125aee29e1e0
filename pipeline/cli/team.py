"""``emoflow remote/pull/push`` (team DVC remotes) and ``emoflow server/serve`` (the team's Prefect server).

The typer edge of :mod:`pipeline.team.remote` and :mod:`pipeline.orchestration.server`: each command turns its options into library
calls and prints their answer; :func:`mount` adds them to the ``emoflow`` app (pipeline/cli/main.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.orchestration import server as srv_lib
from pipeline.team import remote as rm
from pipeline.team.remote import RemoteError

remote_app = typer.Typer(help="Team DVC remotes (shared disk, SSH, S3/MinIO); credentials stay in "
                              ".dvc/config.local.", no_args_is_help=True)

RepoOpt = Annotated[Path, typer.Option("--repo", help="project root")]
Params = Annotated[Path, typer.Option("--params", help="params.yaml, relative to --repo")]
RemoteOpt = Annotated[str | None, typer.Option("--remote", "-r", help="default: the project's default remote")]
Jobs = Annotated[int | None, typer.Option("--jobs", "-j", help="parallel transfers")]


def mount(app: typer.Typer) -> None:
    """Add ``remote``, ``pull``, ``push``, ``server`` and ``serve`` to the ``emoflow`` app."""
    app.add_typer(remote_app, name="remote")
    app.command("pull", help="Pull exactly the features (and fold plan) a model needs from the DVC remote.")(
        cli_pull)
    app.command("push", help="Push DVC-tracked outputs to the team remote.")(cli_push)
    app.command("server", help="Start a Prefect server + UI bound to 127.0.0.1 (foreground).")(cli_server)
    app.command("serve", help="Serve extract/cross_validate deployments so runs start from the Prefect UI.")(
        cli_serve)


def _cli_fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


def _show(remotes: dict[str, dict[str, str]], default: str | None) -> None:
    if not remotes:
        typer.echo("no remotes (emoflow remote add NAME URL --default)")
    for name, opts in remotes.items():
        extra = "  ".join(f"{k}={v}" for k, v in opts.items() if k not in ("url", "scope"))
        mark = " (default)" if name == default else ""
        typer.echo(f"{name}{mark}\t{opts.get('url', '?')}\t[{opts['scope']}]  {extra}".rstrip())


# --- remotes ------------------------------------------------------------------------------------------------
@remote_app.command("add")
def cli_remote_add(
    name: Annotated[str, typer.Argument(help="remote name, e.g. team")],
    url: Annotated[str, typer.Argument(help="directory (shared disk), ssh://user@host:port/path or s3://bucket/path")],
    default: Annotated[bool, typer.Option("--default", "-d", help="make it the default remote")] = False,
    local_config: Annotated[bool, typer.Option("--local-config",
                                               help="keep the whole remote in .dvc/config.local (not shared)")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="replace a remote of the same name")] = False,
    user: Annotated[str | None, typer.Option(help="ssh user (→ config.local)")] = None,
    port: Annotated[int | None, typer.Option(help="ssh port")] = None,
    keyfile: Annotated[Path | None, typer.Option(help="ssh private key file (→ config.local)")] = None,
    password: Annotated[str | None, typer.Option(help="ssh password (→ config.local; prefer --ask-password)")] = None,
    ask_password: Annotated[bool, typer.Option("--ask-password", help="ssh: prompt for the password")] = False,
    endpointurl: Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (MinIO)")] = None,
    region: Annotated[str | None, typer.Option(help="S3 region")] = None,
    access_key_id: Annotated[str | None, typer.Option("--access-key-id", help="S3 key id (→ config.local)")] = None,
    secret_access_key: Annotated[str | None, typer.Option("--secret-access-key",
                                                          help="S3 secret (→ config.local)")] = None,
    profile: Annotated[str | None, typer.Option(help="AWS profile name (→ config.local)")] = None,
    repo: RepoOpt = Path("."),
) -> None:
    """Add a DVC remote; credentials and personal options go to .dvc/config.local only."""
    options = {"user": user, "port": port, "keyfile": keyfile, "password": password,
               "ask_password": True if ask_password else None, "endpointurl": endpointurl, "region": region,
               "access_key_id": access_key_id, "secret_access_key": secret_access_key, "profile": profile}
    try:
        remotes = rm.add_remote(name, url, repo=repo, default=default, local_config=local_config, force=force,
                                options=options)
    except (RemoteError, OSError) as e:
        _cli_fail(e)
    _show({name: remotes[name]}, rm.default_remote(repo))
    if msg := rm.missing_plugin(rm.parse_remote_url(url).kind):
        typer.secho(f"note: {msg}", fg="yellow", err=True)
    if not local_config:
        typer.echo("commit .dvc/config to share the remote with the team; .dvc/config.local stays on this machine")


@remote_app.command("modify")
def cli_remote_modify(
    name: Annotated[str, typer.Argument()],
    option: Annotated[str, typer.Argument(help="e.g. keyfile, port, endpointurl")],
    value: Annotated[str | None, typer.Argument()] = None,
    unset: Annotated[bool, typer.Option("--unset")] = False,
    local: Annotated[bool | None, typer.Option(
        "--local/--project", help="default: credentials → config.local, others → .dvc/config")] = None,
    repo: RepoOpt = Path("."),
) -> None:
    """Set (or --unset) one remote option, e.g. `emoflow remote modify team keyfile ~/.ssh/id_ed25519`."""
    try:
        rm.modify_remote(name, option, value, repo=repo, local=local, unset=unset)
    except (RemoteError, OSError) as e:
        _cli_fail(e)


@remote_app.command("list")
def cli_remote_list(repo: RepoOpt = Path(".")) -> None:
    """Remotes of this project (secrets masked) and which config file holds them."""
    _show(rm.list_remotes(repo), rm.default_remote(repo))
    leaked = rm.project_config_secrets(repo)
    if leaked:
        typer.secho("WARNING: .dvc/config (committed) holds credentials: " + "; ".join(leaked)
                    + " — move them: emoflow remote modify NAME OPTION VALUE --local", fg="yellow", err=True)
        raise typer.Exit(1)


@remote_app.command("remove")
def cli_remote_remove(name: Annotated[str, typer.Argument()], repo: RepoOpt = Path(".")) -> None:
    """Remove a remote from both config files."""
    try:
        rm.remove_remote(name, repo=repo)
    except RemoteError as e:
        _cli_fail(e)


@remote_app.command("default")
def cli_remote_default(name: Annotated[str, typer.Argument()],
                       local: Annotated[bool, typer.Option("--local", help="only for this clone")] = False,
                       repo: RepoOpt = Path(".")) -> None:
    """Make NAME the default remote."""
    try:
        rm.set_default_remote(name, repo=repo, local=local)
    except RemoteError as e:
        _cli_fail(e)


# --- pull / push --------------------------------------------------------------------------------------------
def cli_pull(
    model: Annotated[str | None, typer.Option("--model", "-m", help="pull what this model needs")] = None,
    feature: Annotated[list[str] | None, typer.Option("--feature", "-f", help="a feature (repeatable)")] = None,
    plan: Annotated[list[str] | None, typer.Option("--plan", help="a fold plan (repeatable)")] = None,
    remote: RemoteOpt = None,
    with_results: Annotated[bool, typer.Option("--results", help="also results/<model> (train@<model>)")] = False,
    with_audio: Annotated[bool, typer.Option("--audio", help="also the generated demo corpus audio")] = False,
    jobs: Jobs = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the DVC targets only")] = False,
    repo: RepoOpt = Path("."),
    params: Params = Path("params.yaml"),
) -> None:
    """Pull exactly what a model needs (manifest, its fold plan, its features) from the team remote; no extraction."""
    try:
        targets = rm.targets_to_pull(model, feature or [], plan or [], repo=repo, params_path=params,
                                     with_results=with_results, with_audio=with_audio)
        typer.echo("targets: " + " ".join(targets))  # before the (long) transfer starts
        if dry_run:
            return
        changed = rm.pull_and_check(targets, remote=remote, repo=repo, jobs=jobs, with_audio=with_audio)
    except (RemoteError, ValueError) as e:
        _cli_fail(e)
    if changed:
        typer.secho(f"pulled, but not up to date: {changed}", fg="yellow", err=True)
        raise typer.Exit(1)
    typer.echo("up to date: " + " ".join(targets))
    if model:
        typer.echo(f"next: dvc repro --allow-missing train@{model}   (skips stages whose only change is "
                   "data not on this machine, e.g. the audio)")


def cli_push(
    model: Annotated[str | None, typer.Option("--model", "-m", help="push what this model needs")] = None,
    feature: Annotated[list[str] | None, typer.Option("--feature", "-f", help="a feature (repeatable)")] = None,
    remote: RemoteOpt = None,
    jobs: Jobs = None,
    repo: RepoOpt = Path("."),
    params: Params = Path("params.yaml"),
) -> None:
    """Push features (everything, with no option) to the team remote so nobody computes them again."""
    try:
        targets = rm.targets_to_push(model, feature or [], repo=repo, params_path=params)
        typer.echo("pushing " + (" ".join(targets) if targets else "everything in the workspace"))
        rm.push_targets(targets, remote=remote, repo=repo, jobs=jobs, capture=False)
    except (RemoteError, ValueError) as e:
        _cli_fail(e)


# --- the Prefect server -------------------------------------------------------------------------------------
def cli_server(
    host: Annotated[str, typer.Option(help="bind address; 0.0.0.0 exposes the (unauthenticated) API")
                    ] = srv_lib.DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="port of the API and the UI")] = srv_lib.DEFAULT_PORT,
    public_api_url: Annotated[str | None, typer.Option(
        "--public-api-url", help="API URL as the team's browsers reach it, e.g. http://gpu-box:4200/api")] = None,
    home: Annotated[Path | None, typer.Option(help="PREFECT_HOME (database); default $PREFECT_HOME or ./.prefect")] = None,
) -> None:
    """Start a Prefect server with its UI (blocks; Ctrl-C stops it) and print how to point runs at it."""
    try:
        srv = srv_lib.start_server(host, port, home=home, public_api_url=public_api_url)
    except srv_lib.ServerError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"Prefect UI:  {srv.ui_url}   (log: {srv.log_path})")
    typer.echo(f"send runs here:  export PREFECT_API_URL={public_api_url or srv.api_url}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"WARNING: bound to {host}: anyone who reaches this port can use the API (no authentication "
                    "unless PREFECT_SERVER_API_AUTH_STRING is set)", fg="yellow", err=True)
    code = srv_lib.run_until_stopped(srv)
    if code:
        typer.secho(f"prefect server exited with code {code}; see {srv.log_path}", fg="red", err=True)
        raise typer.Exit(1)


def cli_serve(
    params: Annotated[Path, typer.Option("--params")] = Path("params.yaml"),
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="models to serve (default: all)")] = None,
    feature: Annotated[list[str] | None, typer.Option("--feature", "-f",
                                                      help="features to serve (default: extract.features)")] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many runs at once")] = None,
) -> None:
    """Serve `extract` and `cross_validate` deployments so runs can be started from the Prefect UI."""
    url = srv_lib.configured_api_url()
    if not url:
        typer.secho("PREFECT_API_URL is not set: start `emoflow server` and export the URL it prints",
                    fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(f"serving deployments to {url} (Ctrl-C stops)")
    srv_lib.serve_deployments(params, models=model or None, features=feature or None, limit=limit)
