"""Team sharing through a DVC remote: thin wrappers over ``dvc remote add/modify`` and ``dvc pull/push``.

A team computes each feature once and shares it: whoever runs ``dvc repro extract@<feature>`` pushes the
HDF5 file to the team remote, and a teammate with a fresh clone pulls exactly what one model needs::

    emoflow remote add team ssh://me@storage:22/srv/emoflow --default --keyfile ~/.ssh/id_ed25519
    emoflow pull --model ilt          # = dvc pull manifest folds@<plan> extract@<feature> ...
    dvc repro --allow-missing train@ilt

Supported remotes: a shared disk (a local or mounted directory), SSH (``ssh://user@host:port/path``, plugin
``dvc-ssh``) and S3 or S3-compatible stores such as MinIO (``s3://bucket/path`` + ``endpointurl``, plugin
``dvc-s3``); any other URL DVC knows is passed through. Credentials and personal settings (user name, key file,
password, access keys, profile) are written only to ``.dvc/config.local``, which git ignores; shared settings
(URL, port, endpoint, region) go to ``.dvc/config``, which the team commits. :func:`project_config_secrets`
audits the committed file.

Every function returns values and raises :class:`RemoteError` with a message that says what to do; the
``emoflow remote/pull/push`` commands that call them live in :mod:`pipeline.cli.team`.
"""

from __future__ import annotations

import configparser
import contextlib
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from features.errors import EmoflowError

__all__ = [
    "RemoteError",
    "RemoteURL",
    "SECRET_OPTIONS",
    "parse_remote_url",
    "missing_plugin",
    "add_remote",
    "modify_remote",
    "remove_remote",
    "set_default_remote",
    "list_remotes",
    "default_remote",
    "remote_sections",
    "project_config_secrets",
    "stage_names",
    "model_features",
    "targets_for_model",
    "targets_for_features",
    "targets_to_pull",
    "targets_to_push",
    "pull_for_model",
    "pull_targets",
    "pull_and_check",
    "push_targets",
    "status",
]

#: Options that are personal or secret: always written to ``.dvc/config.local`` (never committed).
SECRET_OPTIONS: frozenset[str] = frozenset({
    "user", "password", "ask_password", "passphrase", "ask_passphrase", "keyfile",          # ssh
    "access_key_id", "secret_access_key", "session_token", "profile", "credentialpath",  # s3
    "configpath", "sse_customer_key",
    "account_key", "sas_token", "connection_string", "client_secret",                     # azure
    "token", "custom_auth_header",                                                          # http/webdav
})

#: URL scheme → (python module of the DVC plugin, pip requirement that provides it).
PLUGINS: dict[str, tuple[str, str]] = {
    "ssh": ("dvc_ssh", "dvc-ssh  (or: pip install 'emoflow[ssh]')"),
    "s3": ("dvc_s3", "dvc-s3  (or: pip install 'emoflow[s3]')"),
    "gs": ("dvc_gs", "dvc-gs"),
    "azure": ("dvc_azure", "dvc-azure"),
    "webdav": ("dvc_webdav", "dvc-webdav"),
    "webdavs": ("dvc_webdav", "dvc-webdav"),
    "hdfs": ("dvc_hdfs", "dvc-hdfs"),
    "oss": ("dvc_oss", "dvc-oss"),
    "gdrive": ("dvc_gdrive", "dvc-gdrive"),
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RemoteError(EmoflowError, ValueError):
    """A remote could not be configured, reached, pulled from or pushed to (the message says what to do)."""


# ------------------------------------------------------------------------------------------------ URLs
@dataclass(frozen=True)
class RemoteURL:
    """A parsed remote URL. ``kind`` is ``local`` for a directory (shared disk), else the URL scheme."""

    kind: str
    url: str  # the URL as it should be stored in .dvc/config (no password)
    user: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    path: str = ""


def parse_remote_url(url: str) -> RemoteURL:
    """Parse a remote URL; a password embedded in it is split off (it must go to ``config.local``).

    >>> parse_remote_url("ssh://ann@10.0.0.5:2222/srv/emoflow")
    RemoteURL(kind='ssh', url='ssh://ann@10.0.0.5:2222/srv/emoflow', user='ann', password=None, host='10.0.0.5', port=2222, path='/srv/emoflow')
    >>> parse_remote_url("ssh://ann:s3cret@host/srv").url
    'ssh://ann@host/srv'
    >>> parse_remote_url("/mnt/team/emoflow").kind
    'local'
    >>> parse_remote_url("s3://bucket/emoflow").host
    'bucket'
    """
    if not isinstance(url, str) or not url.strip():
        raise RemoteError("remote URL is empty; give a directory, ssh://user@host:port/path or s3://bucket/path")
    url = url.strip()
    # Windows drive letters ("C:\\x") and plain paths are local directories.
    if "://" not in url or re.match(r"^[A-Za-z]:[\\/]", url):
        return RemoteURL(kind="local", url=url, path=url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return RemoteURL(kind="local", url=unquote(parts.path), path=unquote(parts.path))
    try:
        port = parts.port
    except ValueError:
        raise RemoteError(f"remote URL {url!r}: the port is not a number") from None
    if scheme == "ssh" and not parts.hostname:
        raise RemoteError(f"remote URL {url!r}: no host; write ssh://user@host:port/absolute/path")
    password = unquote(parts.password) if parts.password is not None else None
    clean = url
    if password is not None:
        netloc = parts.hostname or ""
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        if port is not None:
            netloc = f"{netloc}:{port}"
        clean = parts._replace(netloc=netloc).geturl()
    return RemoteURL(
        kind=scheme,
        url=clean,
        user=unquote(parts.username) if parts.username else None,
        password=password,
        host=parts.hostname,
        port=port,
        path=parts.path,
    )


def missing_plugin(kind: str) -> str | None:
    """A message naming the pip package to install when ``kind`` remotes need a DVC plugin that is absent."""
    if kind in PLUGINS:
        module, requirement = PLUGINS[kind]
        if importlib.util.find_spec(module) is None:
            return f"{kind}:// remotes need the DVC plugin {module!r}; install it: pip install {requirement}"
    return None


def _remote_kinds(repo: str | Path, remote: str | None) -> list[str]:
    remotes = list_remotes(repo)
    name = remote or default_remote(repo)
    url = remotes.get(name, {}).get("url", "") if name else ""
    return [parse_remote_url(url).kind] if url else []


# ----------------------------------------------------------------------------------------- running dvc
def _dvc(args: Sequence[str], repo: str | Path, *, check: bool = True, capture: bool = True,
         timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``dvc <args>`` in ``repo`` with the DVC that belongs to this Python (analytics off)."""
    repo = Path(repo)
    if not (repo / ".dvc").is_dir():
        raise RemoteError(f"{repo.resolve()}: not a DVC project (no .dvc/); run from the project root "
                          "or `dvc init` first")
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.run(cmd, cwd=repo, env=env, text=True, timeout=timeout,
                          capture_output=capture)
    if check and proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or "")).strip() if capture else "(see output above)"
        raise RemoteError(f"`dvc {' '.join(args)}` failed in {repo} (exit {proc.returncode}):\n{out}")
    return proc


@contextlib.contextmanager
def _edit(repo: str | Path, level: str):
    """DVC's own config editor (what ``dvc remote add/modify`` run), in-process: yields the ``level``
    (``repo`` = .dvc/config, ``local`` = .dvc/config.local) dict; validates the merged result on exit."""
    from dvc.config import Config, ConfigError

    dvc_dir = Path(repo) / ".dvc"
    if not dvc_dir.is_dir():
        raise RemoteError(f"{Path(repo).resolve()}: not a DVC project (no .dvc/); run from the project root "
                          "or `dvc init` first")
    try:
        with Config(dvc_dir=str(dvc_dir)).edit(level) as conf:
            yield conf
    except ConfigError as e:
        raise RemoteError(f"{dvc_dir / ('config.local' if level == 'local' else 'config')}: {e}") from None


def _read_config(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    if path.is_file():
        cp.read(path)
    return cp


_SECTION_RE = re.compile(r"""^\s*'?remote\s+"(?P<name>[^"]+)"'?\s*$""")


def _remote_sections(cp: configparser.ConfigParser) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for sec in cp.sections():
        m = _SECTION_RE.match(sec)
        if m:
            out[m.group("name")] = dict(cp[sec])
    return out


# --------------------------------------------------------------------------------- remote configuration
def add_remote(
    name: str,
    url: str,
    *,
    repo: str | Path = ".",
    default: bool = False,
    local_config: bool = False,
    force: bool = False,
    options: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, str]]:
    """``dvc remote add`` + ``dvc remote modify`` for each option, credentials to ``config.local``.

    ``url``: a directory (shared disk), ``ssh://user@host:port/path``, ``s3://bucket/path`` or any URL DVC knows.
    ``options``: remote options (``port``, ``endpointurl``, ``region``, ``keyfile``, ``password``,
    ``access_key_id``, ...); those in :data:`SECRET_OPTIONS` are always written with ``--local``.
    ``local_config``: keep the whole remote out of ``.dvc/config`` (a personal remote).
    A user or password inside an ssh URL is moved to ``config.local`` too, so the committed URL holds neither.
    Returns :func:`list_remotes` after the change.
    """
    if not _NAME_RE.match(name or ""):
        raise RemoteError(f"remote name {name!r}: use letters, digits, '-', '_' or '.' (e.g. 'team')")
    name = name.lower()  # as `dvc remote add` does
    parsed = parse_remote_url(url)  # a missing plugin is reported at pull/push time (see missing_plugin)
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    store_url = parsed.url
    if parsed.kind == "ssh" and not local_config:
        # The user name is personal: keep it out of the committed URL so every teammate can use the same remote.
        if parsed.user:
            opts.setdefault("user", parsed.user)
            netloc = parsed.host or ""
            if parsed.port is not None:
                netloc = f"{netloc}:{parsed.port}"
            store_url = urlsplit(parsed.url)._replace(netloc=netloc).geturl()
    if parsed.password is not None:
        opts.setdefault("password", parsed.password)
    if parsed.kind == "local" and not local_config and not Path(parsed.path).is_absolute():
        # DVC would store a relative path relative to .dvc/; a shared disk is better named absolutely.
        store_url = str((Path(repo) / parsed.path).resolve())
    existing = list_remotes(repo)
    if name in existing and not force:
        raise RemoteError(f"remote {name!r} already exists ({existing[name].get('url')}); "
                          "pass --force to replace it, or use `emoflow remote modify`")
    if name in existing:  # --force: drop the old definition from both files so stale options do not survive
        _remove_sections(repo, name)
    with _edit(repo, "local" if local_config else "repo") as conf:
        conf["remote"][name] = {"url": store_url}
        if default:
            conf["core"]["remote"] = name
    for key, value in opts.items():
        modify_remote(name, key, value, repo=repo, local=local_config or key in SECRET_OPTIONS)
    return list_remotes(repo)


def modify_remote(name: str, option: str, value: Any = None, *, repo: str | Path = ".", local: bool | None = None,
                  unset: bool = False) -> None:
    """``dvc remote modify [--local] NAME OPTION VALUE`` (or ``--unset``).

    ``local=None`` chooses: secrets/personal options (:data:`SECRET_OPTIONS`) → ``config.local``, others →
    ``.dvc/config``. Passing ``local=False`` for a secret raises: secrets never go into the committed file.
    """
    option = option.strip().lower()
    if local is None:
        local = option in SECRET_OPTIONS
    if option in SECRET_OPTIONS and not local:
        raise RemoteError(f"remote option {option!r} is a credential/personal setting: it goes to "
                          ".dvc/config.local only (drop --project)")
    if isinstance(value, bool):
        value = "true" if value else "false"
    if option in ("keyfile", "credentialpath", "configpath") and value is not None:
        value = str(Path(os.path.expanduser(str(value))).resolve())
        if not Path(value).is_file():
            raise RemoteError(f"remote {name!r}: {option} {value} does not exist; give the path of the file")
    if not unset and value is None:
        raise RemoteError(f"remote {name!r}: option {option!r} needs a value (or --unset)")
    name = name.lower()
    if name not in list_remotes(repo):
        raise RemoteError(f"no remote named {name!r}; add it first: emoflow remote add {name} URL")
    with _edit(repo, "local" if local else "repo") as conf:
        section = conf["remote"].setdefault(name, {})
        if unset:
            section.pop(option, None)
        else:
            section[option] = str(value)


def _remove_sections(repo: str | Path, name: str) -> None:
    # local first: credentials left without the project's url would not validate
    for level in ("local", "repo"):
        with _edit(repo, level) as conf:
            conf["remote"].pop(name, None)
            if conf["core"].get("remote") == name:
                del conf["core"]["remote"]


def remove_remote(name: str, *, repo: str | Path = ".") -> None:
    """Remove ``name`` from ``.dvc/config`` and ``.dvc/config.local`` (and as their default remote)."""
    name = name.lower()
    if name not in list_remotes(repo):
        raise RemoteError(f"no remote named {name!r}; known: {', '.join(list_remotes(repo)) or 'none'}")
    _remove_sections(repo, name)


def set_default_remote(name: str, *, repo: str | Path = ".", local: bool = False) -> None:
    """Make ``name`` the default remote (``core.remote``; in ``config.local`` with ``local``)."""
    name = name.lower()
    if name not in list_remotes(repo):
        raise RemoteError(f"no remote named {name!r}; add it first: emoflow remote add {name} URL")
    with _edit(repo, "local" if local else "repo") as conf:
        conf["core"]["remote"] = name


def list_remotes(repo: str | Path = ".", *, mask_secrets: bool = True) -> dict[str, dict[str, str]]:
    """Remotes from ``.dvc/config`` merged with ``.dvc/config.local``: name → options (+ ``scope``).

    ``scope`` is ``project`` (committed, the team's), ``local`` (only this clone) or ``project+local``
    (shared remote with local credentials). Secret values are shown as ``***`` unless ``mask_secrets=False``.
    """
    repo = Path(repo)
    project = _remote_sections(_read_config(repo / ".dvc" / "config"))
    local = _remote_sections(_read_config(repo / ".dvc" / "config.local"))
    out: dict[str, dict[str, str]] = {}
    for name in sorted(set(project) | set(local)):
        merged = {**project.get(name, {}), **local.get(name, {})}
        if mask_secrets:
            merged = {k: ("***" if k in SECRET_OPTIONS - {"user", "keyfile", "profile"} else v)
                      for k, v in merged.items()}
        merged["scope"] = "+".join(s for s, d in (("project", project), ("local", local)) if name in d)
        out[name] = merged
    return out


def remote_sections(repo: str | Path = ".", which: str = "project") -> dict[str, dict[str, str]]:
    """Remote sections of one config file, unmerged and unmasked: ``which`` = ``project`` (``.dvc/config``)
    or ``local`` (``.dvc/config.local``)."""
    if which not in ("project", "local"):
        raise ValueError(f"which must be 'project' or 'local', got {which!r}")
    return _remote_sections(_read_config(Path(repo) / ".dvc" / ("config" if which == "project" else "config.local")))


def default_remote(repo: str | Path = ".") -> str | None:
    """The default remote's name (``core.remote``; ``config.local`` wins), or None."""
    repo = Path(repo)
    name = None
    for f in ("config", "config.local"):
        cp = _read_config(repo / ".dvc" / f)
        if cp.has_option("core", "remote"):
            name = cp.get("core", "remote")
    return name


def project_config_secrets(repo: str | Path = ".") -> list[str]:
    """Credential/personal options and embedded passwords found in the committed ``.dvc/config``.

    An empty list means the file is safe to commit. Each entry reads ``remote "NAME": OPTION``.
    """
    problems = []
    for name, opts in _remote_sections(_read_config(Path(repo) / ".dvc" / "config")).items():
        for key in opts:
            if key in SECRET_OPTIONS:
                problems.append(f'remote "{name}": {key}')
        if "url" in opts and "://" in opts["url"]:
            parts = urlsplit(opts["url"])
            if parts.password is not None:
                problems.append(f'remote "{name}": password inside url')
    return problems


# ------------------------------------------------------------------------------------------ pull targets
def stage_names(repo: str | Path = ".") -> dict[str, list[str]]:
    """Every stage of the project's ``dvc.yaml`` (``foreach`` expanded) → its output paths."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(repo)) as r:
            out = {}
            for st in r.index.stages:
                # `addressing` is relative to the cwd; stages of the root dvc.yaml are addressed by name
                root_file = os.path.dirname(os.path.relpath(st.path, r.root_dir)) == ""
                key = st.name if (getattr(st, "name", None) and root_file) else os.path.relpath(st.path, r.root_dir)
                out[key] = [os.path.normpath(os.path.join(os.path.relpath(st.wdir, r.root_dir), o.def_path))
                            for o in st.outs]
            return out
    except DvcException as e:
        raise RemoteError(f"{Path(repo).resolve()}: cannot read the DVC pipeline ({e}); check dvc.yaml "
                          "and params.yaml (`dvc stage list` shows the same error)") from None


def model_features(model: str, params: Mapping[str, Any] | None = None) -> tuple[list[str], str]:
    """Feature-store names model ``model`` consumes and its fold plan, for the config in ``params``.

    The answer of ``models.requirements(model, params: models.<model>)`` (input swaps, ``use_text``, the
    section's ``fold_plan``), the same one training uses.
    """
    try:
        import models
    except ImportError as e:  # pragma: no cover - a broken checkout
        raise RemoteError(f"cannot import the model registry ({e}); pass the features explicitly "
                          "(emoflow pull --feature NAME)") from None
    section = dict(((params or {}).get("models") or {}).get(model) or {})
    req = models.requirements(model, section, (params or {}).get("train"))  # ValueError naming the known models
    return list(req.features), req.fold_plan


def targets_for_features(features: Sequence[str], *, plans: Sequence[str] = (), repo: str | Path = ".",
                         with_manifest: bool = True) -> list[str]:
    """DVC targets ``manifest``, ``folds@<plan>``..., ``extract@<feature>``..., checked against ``dvc.yaml``."""
    stages = stage_names(repo)
    targets = (["manifest"] if with_manifest and "manifest" in stages else [])
    problems = []
    for plan in plans:
        t = f"folds@{plan}"
        if t not in stages:
            have = ", ".join(s.split("@", 1)[1] for s in stages if s.startswith("folds@")) or "none"
            problems.append(f"no stage {t!r}: add {plan!r} to params.yaml: folds.plans (now: {have})")
        targets.append(t)
    for feature in features:
        t = f"extract@{feature}"
        if t not in stages:
            have = ", ".join(s.split("@", 1)[1] for s in stages if s.startswith("extract@")) or "none"
            problems.append(f"no stage {t!r}: add {feature!r} to params.yaml: extract.features (now: {have}); "
                            f"someone computes it once (`dvc repro {t}` + `emoflow push --feature {feature}`), "
                            "everyone else pulls it")
        targets.append(t)
    if problems:
        raise RemoteError(f"{Path(repo).resolve() / 'dvc.yaml'}: " + "; ".join(problems))
    return targets


def _dataset_stage(repo: str | Path, params: Mapping[str, Any]) -> str | None:
    """The stage whose output is ``params: dataset.root`` (the demo corpus), if a stage makes it."""
    root = ((params.get("dataset") or {}).get("root"))
    if not root:
        return None
    root = os.path.normpath(str(root))
    for name, outs in stage_names(repo).items():
        if any(os.path.normpath(o) == root for o in outs):
            return name
    return None


def targets_for_model(model: str, *, repo: str | Path = ".", params_path: str | Path = "params.yaml",
                      with_results: bool = False, with_audio: bool = False) -> list[str]:
    """The DVC targets that hold what ``model`` needs to train: ``manifest``, ``folds@<plan>``,
    ``extract@<feature>`` per input feature; ``train@<model>`` too with ``with_results``; the stage that
    generates the corpus (the demo's ``demo_data``) with ``with_audio`` (training never reads audio)."""
    from pipeline.core.params import load_params

    params = load_params(Path(repo) / params_path)
    features, plan = model_features(model, params)
    targets = targets_for_features(features, plans=[plan] if plan else [], repo=repo)
    if with_results:
        t = f"train@{model}"
        if t not in stage_names(repo):
            raise RemoteError(f"dvc.yaml has no stage {t!r}; results can only be pulled once the train stage exists")
        targets.append(t)
    if with_audio:
        ds = _dataset_stage(repo, params)
        if ds:
            targets.insert(0, ds)
    return targets


def _check_remote(repo: str | Path, remote: str | None) -> None:
    remotes = list_remotes(repo)
    if remote is None:
        if default_remote(repo) is None:
            raise RemoteError("no default DVC remote; add one: emoflow remote add team URL --default "
                              "(or pass --remote NAME)")
    elif remote not in remotes:
        raise RemoteError(f"no remote named {remote!r}; known: {', '.join(remotes) or 'none'} "
                          "(emoflow remote add NAME URL)")
    for kind in _remote_kinds(repo, remote):
        if msg := missing_plugin(kind):
            raise RemoteError(msg)


def pull_targets(targets: Sequence[str], *, remote: str | None = None, repo: str | Path = ".",
                 jobs: int | None = None, capture: bool = True) -> list[str]:
    """``dvc pull [-r remote] TARGETS``: fetch exactly those stages' outputs and check them out."""
    _check_remote(repo, remote)
    args = ["pull", *(["-r", remote] if remote else []), *(["-j", str(jobs)] if jobs else []), *targets]
    try:
        _dvc(args, repo, capture=capture)
    except RemoteError as e:
        raise RemoteError(f"{e}\nIf the remote lacks some of {list(targets)}, whoever computed them runs "
                          "`emoflow push` (or `dvc push <stage>`); check credentials with `emoflow remote list`") from None
    return list(targets)


def push_targets(targets: Sequence[str], *, remote: str | None = None, repo: str | Path = ".",
                 jobs: int | None = None, capture: bool = True) -> list[str]:
    """``dvc push [-r remote] TARGETS`` (no targets = everything in the workspace)."""
    _check_remote(repo, remote)
    args = ["push", *(["-r", remote] if remote else []), *(["-j", str(jobs)] if jobs else []), *targets]
    _dvc(args, repo, capture=capture)
    return list(targets)


def pull_for_model(model: str, remote: str | None = None, *, repo: str | Path = ".",
                   params_path: str | Path = "params.yaml", with_results: bool = False, with_audio: bool = False,
                   jobs: int | None = None, capture: bool = True) -> list[str]:
    """Pull exactly what ``model`` needs (see :func:`targets_for_model`) and return the DVC targets pulled.

    Nothing is extracted: the features come from the remote. Train afterwards with
    ``dvc repro --allow-missing train@<model>``, which skips the upstream stages whose only change is data
    that is not on this machine (the audio).
    """
    targets = targets_for_model(model, repo=repo, params_path=params_path, with_results=with_results,
                                with_audio=with_audio)
    return pull_targets(targets, remote=remote, repo=repo, jobs=jobs, capture=capture)


def status(targets: Sequence[str] = (), *, repo: str | Path = ".") -> dict[str, Any]:
    """``dvc status --json TARGETS`` as a dict: {} when those stages are up to date, else
    stage → what changed (e.g. ``[{"changed deps": {"data/demo_corpus": "deleted"}}]``).

    Run as a subprocess in ``repo``: in-process DVC resolves workspace paths against the current directory.
    """
    import json

    proc = _dvc(["status", "--json", *targets], repo)
    text = proc.stdout.strip()
    start = text.find("{")  # dvc may print warnings before the JSON document
    return json.loads(text[start:]) if start >= 0 else {}


def targets_to_pull(model: str | None, features: Sequence[str] = (), plans: Sequence[str] = (), *,
                    repo: str | Path = ".", params_path: str | Path = "params.yaml", with_results: bool = False,
                    with_audio: bool = False) -> list[str]:
    """The DVC targets of ``emoflow pull``: what ``model`` needs (:func:`targets_for_model`), then the named
    features and plans (with the manifest) that are not already among them."""
    features, plans = list(features), list(plans)
    if not model and not features and not plans:
        raise RemoteError("say what to pull: --model NAME, or --feature NAME / --plan NAME")
    targets = (targets_for_model(model, repo=repo, params_path=params_path, with_results=with_results,
                                 with_audio=with_audio) if model else [])
    if features or plans:
        extra = targets_for_features(features, plans=plans, repo=repo, with_manifest=True)
        targets += [t for t in extra if t not in targets]
    return targets


def targets_to_push(model: str | None, features: Sequence[str] = (), *, repo: str | Path = ".",
                    params_path: str | Path = "params.yaml") -> list[str]:
    """The DVC targets of ``emoflow push``: what ``model`` needs, then the named features ([] = everything)."""
    targets = targets_for_model(model, repo=repo, params_path=params_path) if model else []
    if features:
        targets += [t for t in targets_for_features(features, repo=repo) if t not in targets]
    return targets


def pull_and_check(targets: Sequence[str], *, remote: str | None = None, repo: str | Path = ".",
                   jobs: int | None = None, with_audio: bool = False) -> dict[str, Any]:
    """Pull ``targets`` (DVC's progress on the terminal) and return :func:`status` of them: {} when up to date."""
    pull_targets(targets, remote=remote, repo=repo, jobs=jobs, capture=False)
    # the manifest stage depends on the audio, which training never needs: check it only with the audio
    return status(targets if with_audio else [t for t in targets if t != "manifest"], repo=repo)
