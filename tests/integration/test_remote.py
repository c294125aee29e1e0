"""Sharing features through real DVC remotes: a local-directory (shared disk) remote between two clones, and an
SSH remote served by a real ``sshd`` on 127.0.0.1. A teammate's fresh clone pulls exactly one model's inputs,
nothing is re-extracted, and ``dvc status`` / ``dvc repro`` agree that everything is up to date."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.team import remote as rm

pytestmark = pytest.mark.slow

# the tiny project of conftest.py: one feature, one fold plan, a model that reads that feature
FEATURE, PLAN, MODEL = "logmel40", "random_55_25_20", "ilt"
H5 = f"data/features/{FEATURE}.h5"
FOLDS = f"data/folds/{PLAN}.parquet"
MANIFEST = "data/manifest.parquet"


@pytest.fixture(autouse=True, scope="module")
def _helpers(it):
    global sh, copy_project, free_port
    assert (it.FEATURE, it.PLAN, it.MODEL) == (FEATURE, PLAN, MODEL)
    sh, copy_project, free_port = it.sh, it.copy_project, it.free_port


def _ran_stages(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("Running stage")]


def _config(path: Path) -> dict[str, dict[str, str]]:
    """remote name → options of one DVC config file (``.dvc/config`` or ``.dvc/config.local``)."""
    return rm.remote_sections(path.parent.parent, "local" if path.name == "config.local" else "project")


@pytest.fixture(scope="module")
def shared(pushed_project):
    return pushed_project


def test_local_remote_second_clone_pulls_one_feature_without_extracting(shared, tmp_path):
    clone1, store = shared
    clone2 = tmp_path / "clone2"
    sh(tmp_path, "git", "clone", "-q", str(clone1), str(clone2))
    assert not (clone2 / H5).exists()
    assert rm.default_remote(clone2) == "team"  # the remote came with the clone (.dvc/config is committed)

    # one feature (and the manifest, its only data dependency), nothing else
    sh(clone2, "dvc", "pull", "manifest", f"extract@{FEATURE}")
    assert (clone2 / H5).read_bytes() == (clone1 / H5).read_bytes()
    assert (clone2 / MANIFEST).read_bytes() == (clone1 / MANIFEST).read_bytes()
    assert not (clone2 / FOLDS).exists(), "a fold plan was pulled although only one feature was asked for"
    assert not (clone2 / "data/demo_corpus").exists(), "the audio was pulled although only features were asked for"

    st = sh(clone2, "dvc", "status", f"extract@{FEATURE}")
    assert "up to date" in st, st
    assert rm.status([f"extract@{FEATURE}"], repo=clone2) == {}

    mtime = (clone2 / H5).stat().st_mtime_ns
    # the stage alone: nothing to do
    out = sh(clone2, "dvc", "repro", "--single-item", f"extract@{FEATURE}")
    assert _ran_stages(out) == [] and "didn't change" in out, out
    # with its upstream stages: the audio is not here, but nothing changed, so nothing runs
    out = sh(clone2, "dvc", "repro", "--allow-missing", f"extract@{FEATURE}")
    assert _ran_stages(out) == [] and f"Stage 'extract@{FEATURE}' didn't change" in out, out
    assert (clone2 / H5).stat().st_mtime_ns == mtime
    assert not (clone2 / "data/demo_corpus").exists()


def test_pull_for_model_fetches_exactly_the_models_inputs(shared, tmp_path):
    clone1, _ = shared
    clone2 = tmp_path / "clone2"
    sh(tmp_path, "git", "clone", "-q", str(clone1), str(clone2))

    targets = rm.pull_for_model(MODEL, repo=clone2)
    assert targets == ["manifest", f"folds@{PLAN}", f"extract@{FEATURE}"]
    for rel in (MANIFEST, FOLDS, H5):
        assert (clone2 / rel).read_bytes() == (clone1 / rel).read_bytes(), rel
    assert not (clone2 / "data/demo_corpus").exists()
    assert rm.status(targets[1:], repo=clone2) == {}
    out = sh(clone2, "dvc", "repro", "--allow-missing", "--dry", f"extract@{FEATURE}", f"folds@{PLAN}")
    assert _ran_stages(out) == [], out

    # with the audio too, even the manifest stage (which hashes the corpus) is up to date
    rm.pull_for_model(MODEL, repo=clone2, with_audio=True)
    assert (clone2 / "data/demo_corpus").is_dir()
    assert rm.status(["demo_data", *targets], repo=clone2) == {}


def test_cli_pull_and_push_one_model(shared, tmp_path):
    """``emoflow pull --model`` / ``emoflow push --feature`` end to end through the commands the CLI mounts."""
    import typer
    from typer.testing import CliRunner

    from pipeline.cli import team as cli_team

    app = typer.Typer()
    cli_team.mount(app)
    clone1, _ = shared
    clone2 = tmp_path / "clone2"
    sh(tmp_path, "git", "clone", "-q", str(clone1), str(clone2))
    r = CliRunner().invoke(app, ["pull", "--model", MODEL, "--repo", str(clone2)])
    assert r.exit_code == 0, r.output
    assert f"up to date: manifest folds@{PLAN} extract@{FEATURE}" in r.output
    assert f"next: dvc repro --allow-missing train@{MODEL}" in r.output
    assert (clone2 / H5).read_bytes() == (clone1 / H5).read_bytes()
    other = tmp_path / "other-remote"
    other.mkdir()
    rm.add_remote("other", str(other), repo=clone2, local_config=True)
    r = CliRunner().invoke(app, ["push", "--feature", FEATURE, "--remote", "other", "--repo", str(clone2)])
    assert r.exit_code == 0 and f"pushing manifest extract@{FEATURE}" in r.output, r.output
    assert any(p.is_file() for p in other.rglob("*")), "nothing reached the remote"
    r = CliRunner().invoke(app, ["pull", "--repo", str(clone2)])
    assert r.exit_code == 2 and "say what to pull" in r.output, r.output


def test_pull_errors_name_the_fix(shared, tmp_path):
    clone1, _ = shared
    # ks_transformer reads whisper (params.yaml swaps its wav2vec2 input; the resolver honours the swap) + roberta,
    # which this project does not extract
    with pytest.raises(rm.RemoteError, match=r"folds@loso.*extract@roberta.*extract\.features.*extract@whisper"):
        rm.targets_for_model("ks_transformer", repo=clone1)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        rm.targets_for_model("nope", repo=clone1)
    with pytest.raises(rm.RemoteError, match="no remote named 'other'"):
        rm.pull_targets(["manifest"], remote="other", repo=clone1)
    lonely = copy_project(clone1, tmp_path / "lonely")
    rm.remove_remote("team", repo=lonely)
    with pytest.raises(rm.RemoteError, match="no default DVC remote"):
        rm.pull_for_model(MODEL, repo=lonely)
    # a remote that lacks the data: the error says who has to push
    empty = tmp_path / "empty-remote"
    empty.mkdir()
    rm.add_remote("empty", str(empty), repo=lonely)
    fresh = tmp_path / "fresh"
    sh(tmp_path, "git", "clone", "-q", str(lonely), str(fresh))
    rm.add_remote("empty", str(empty), repo=fresh, local_config=True)
    with pytest.raises(rm.RemoteError, match="emoflow push"):
        rm.pull_targets([f"extract@{FEATURE}"], remote="empty", repo=fresh)


def test_credentials_go_to_config_local_only(dvc_project, tmp_path):
    proj = copy_project(dvc_project, tmp_path / "proj")
    key = tmp_path / "id_test"
    key.write_text("not a real key\n")
    rm.add_remote("minio", "s3://emoflow-features/team", repo=proj, default=True,
                  options={"endpointurl": "http://127.0.0.1:9000", "access_key_id": "AKIAEXAMPLE",
                           "secret_access_key": "sup3r-s3cret"})
    rm.add_remote("box", "ssh://ann:pa55word@10.1.2.3:2222/srv/emoflow", repo=proj, options={"keyfile": key})

    project_text = (proj / ".dvc/config").read_text()
    local = _config(proj / ".dvc/config.local")
    for secret in ("AKIAEXAMPLE", "sup3r-s3cret", "pa55word", str(key), "ann"):
        assert secret not in project_text, (secret, project_text)
    project = _config(proj / ".dvc/config")
    assert project["minio"]["endpointurl"] == "http://127.0.0.1:9000"
    assert project["box"]["url"] == "ssh://10.1.2.3:2222/srv/emoflow"
    assert local["minio"]["secret_access_key"] == "sup3r-s3cret"
    assert local["box"]["password"] == "pa55word"
    assert local["box"]["user"] == "ann"
    assert local["box"]["keyfile"] == str(key.resolve())
    assert rm.project_config_secrets(proj) == []
    # .dvc/config.local is ignored by git: credentials can not be committed by accident
    assert sh(proj, "git", "check-ignore", ".dvc/config.local").strip() == ".dvc/config.local"

    shown = rm.list_remotes(proj)
    assert shown["minio"]["secret_access_key"] == "***" and shown["box"]["password"] == "***"
    assert shown["box"]["scope"] == "project+local"
    assert rm.default_remote(proj) == "minio"

    with pytest.raises(rm.RemoteError, match="config.local only"):
        rm.modify_remote("box", "password", "x", repo=proj, local=False)
    # the audit catches a secret somebody wrote into the committed file by hand
    sh(proj, "dvc", "remote", "modify", "box", "password", "oops")
    assert rm.project_config_secrets(proj) == ['remote "box": password']
    with pytest.raises(rm.RemoteError, match="already exists"):
        rm.add_remote("box", "/tmp/x", repo=proj)
    with pytest.raises(rm.RemoteError, match="keyfile .* does not exist"):
        rm.modify_remote("box", "keyfile", tmp_path / "missing", repo=proj)


def test_cli_commands(dvc_project, tmp_path):
    """The typer commands the ``emoflow`` CLI mounts: remote add/list/modify/default/remove, pull --dry-run."""
    import typer
    from typer.testing import CliRunner

    from pipeline.cli import team as cli_team

    app = typer.Typer()
    cli_team.mount(app)
    proj = copy_project(dvc_project, tmp_path / "proj")
    run = CliRunner().invoke
    r = run(app, ["remote", "add", "team", str(tmp_path / "store"), "--default", "--repo", str(proj)])
    assert r.exit_code == 0 and "team (default)" in r.output, r.output
    r = run(app, ["remote", "add", "minio", "s3://b/p", "--endpoint-url", "http://127.0.0.1:9000",
                  "--secret-access-key", "zzz-secret", "--repo", str(proj)])
    assert r.exit_code == 0, r.output
    r = run(app, ["remote", "list", "--repo", str(proj)])
    assert r.exit_code == 0 and "zzz-secret" not in r.output and "secret_access_key=***" in r.output, r.output
    r = run(app, ["pull", "--model", MODEL, "--dry-run", "--repo", str(proj)])
    assert r.exit_code == 0, r.output
    assert f"targets: manifest folds@{PLAN} extract@{FEATURE}" in r.output
    r = run(app, ["pull", "--model", "ks_transformer", "--dry-run", "--repo", str(proj)])
    assert r.exit_code == 2 and "extract.features" in r.output, r.output
    r = run(app, ["remote", "modify", "minio", "password", "oops", "--project", "--repo", str(proj)])
    assert r.exit_code == 2 and "config.local only" in r.output, r.output
    r = run(app, ["remote", "default", "minio", "--repo", str(proj)])
    assert r.exit_code == 0 and rm.default_remote(proj) == "minio"
    r = run(app, ["remote", "remove", "minio", "--repo", str(proj)])
    assert r.exit_code == 0, r.output
    assert set(rm.list_remotes(proj)) == {"team"} and rm.default_remote(proj) is None
    assert "zzz-secret" not in (proj / ".dvc/config.local").read_text()


# ------------------------------------------------------------------------------------------ SSH remote
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


def _wait_for_banner(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-2.0"):
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"sshd did not answer on 127.0.0.1:{port} in {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1:<free port>, public-key login as root, SFTP for DVC."""
    if SSHD is None:
        pytest.skip("sshd not installed (Debian: openssh-server; `bash tests/setup_system.sh` installs it)")
    if rm.missing_plugin("ssh"):
        pytest.skip("dvc-ssh not installed (pip install 'emoflow[ssh]')")
    if os.geteuid() != 0:
        pytest.skip("the test sshd logs in as root and so must run as root")
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    for name in ("host_key", "client_key"):
        sh(d, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"emoflow-test-{name}", "-f", d / name)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation dir sshd insists on
    log = d / "sshd.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config"), "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        _wait_for_banner(port, proc, log)
        yield {"port": port, "key": d / "client_key", "dir": d, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_ssh_remote_push_and_pull(dvc_project, sshd, tmp_path):
    store = tmp_path / "ssh-store"  # the server's disk (same machine: the test can look at it)
    clone1 = copy_project(dvc_project, tmp_path / "clone1")
    url = f"ssh://root@127.0.0.1:{sshd['port']}{store}"
    rm.add_remote("team", url, repo=clone1, default=True, options={"keyfile": sshd["key"]})

    project = _config(clone1 / ".dvc/config")
    assert project["team"]["url"] == f"ssh://127.0.0.1:{sshd['port']}{store}"
    assert "keyfile" not in project["team"] and "user" not in project["team"]
    assert str(sshd["key"]) not in (clone1 / ".dvc/config").read_text()
    assert rm.project_config_secrets(clone1) == []
    assert _config(clone1 / ".dvc/config.local")["team"]["keyfile"] == str(sshd["key"])
    sh(clone1, "git", "commit", "-q", "-m", "team ssh remote", ".dvc/config")

    rm.push_targets([f"extract@{FEATURE}", "manifest", f"folds@{PLAN}"], repo=clone1)
    pushed = [p for p in (store / "files" / "md5").rglob("*") if p.is_file()]
    # exactly the stages' outputs, over SFTP: the feature, the fold plan, the manifest and its (empty) ASR cache
    assert len(pushed) == 4, pushed
    assert "Accepted publickey for root" in sshd["log"].read_text()

    # the teammate: a fresh clone has the remote but not the credentials, and sets their own
    clone2 = tmp_path / "clone2"
    sh(tmp_path, "git", "clone", "-q", str(clone1), str(clone2))
    assert not (clone2 / ".dvc/config.local").exists()
    rm.modify_remote("team", "keyfile", sshd["key"], repo=clone2)
    rm.modify_remote("team", "user", "root", repo=clone2)
    targets = rm.pull_for_model(MODEL, repo=clone2)
    for rel in (MANIFEST, FOLDS, H5):
        assert (clone2 / rel).read_bytes() == (clone1 / rel).read_bytes(), rel
    assert rm.status(targets[1:], repo=clone2) == {}
    assert rm.project_config_secrets(clone2) == []
