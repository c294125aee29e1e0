"""Interrupts and unwritable places, for real.

* SIGTERM and SIGINT sent from outside to an extraction in progress (the CLI's stage runner, in a child process):
  one line, exit 143/130, finished shards kept, lock and temp files cleaned up on the way out; the rerun resumes
  and writes the bytes of an uninterrupted run.
* A checkpoint write that hits a file-size limit (RLIMIT_FSIZE in a child): one DiskFullError line naming the
  file and the space needed; the previous checkpoint is unchanged and still loads. One that lets the weights
  through but refuses the optimizer state (the window a SIGKILL can hit) resumes from the epoch state.pt names.
* A directory where the feature file belongs, and an output folder the kernel refuses to create, each one line,
  exit 2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _rel import (
    ROOT,
    assert_one_line_error,
    cli_env,
    run_cli,
    sha256_file,
    tone_manifest,
)

from features import get_extractor
from pipeline.corpus.manifest import read_manifest, write_manifest
from pipeline.extraction.extract import extract_features

HERE = Path(__file__).resolve().parent


def _default_signals() -> None:
    """In the child: SIGINT back to its default. A test run started in the background of a non-interactive shell
    (CI, `make test &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
N_UTTS, BATCH = 10, 2

_EXTRACT = """
import sys
sys.path[:0] = [{root!r}, {here!r}]
import typer, _rel
from pipeline.cli.main import _run
from pipeline.extraction.extract import extract_features
from pipeline.corpus.manifest import read_manifest
ex = _rel.counting_logmel({count!r}, sleep=0.15)
try:
    _run(extract_features, ex, read_manifest({manifest!r}), {out!r}, audio_root={audio!r}, jobs=1,
         batch_size={batch}, progress=False)
except typer.Exit as e:
    sys.exit(e.exit_code)
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    write_manifest(tone_manifest(root, N_UTTS, 0.3, freq=200, step=20), root / "full.parquet")
    return {"root": root, "full": root / "full.parquet"}


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_or_sigint_during_extraction_cleans_up_and_the_rerun_resumes(sig, code, corpus, tmp_path):
    out = tmp_path / "features" / "logmel40.h5"
    count = tmp_path / "calls.txt"
    script = _EXTRACT.format(root=str(ROOT), here=str(HERE), count=str(count), manifest=str(corpus["full"]),
                             out=str(out), audio=str(corpus["root"]), batch=BATCH)
    proc = subprocess.Popen([sys.executable, "-c", script], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    deadline = time.time() + 60
    while not (count.exists() and len(count.read_text().splitlines()) >= 5):  # two shards done, third under way
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == [f"error: interrupted ({sig.name}); finished work is kept — rerun the same command to resume"]
    assert not out.exists()
    left = sorted(p.name for p in out.parent.iterdir())
    assert left == ["logmel40.h5.parts"], left  # lock released and removed, no temp file
    shards = sorted(p.name for p in (out.parent / "logmel40.h5.parts").iterdir())
    assert len(shards) >= 2 and all(s.endswith(".h5") for s in shards), shards

    res = extract_features(get_extractor("logmel40"), read_manifest(corpus["full"]), out,
                           audio_root=corpus["root"], jobs=1, batch_size=BATCH, progress=False)
    assert res.resumed == BATCH * len(shards) and res.computed == N_UTTS - res.resumed
    ref = tmp_path / "ref" / "logmel40.h5"
    extract_features(get_extractor("logmel40"), read_manifest(corpus["full"]), ref, audio_root=corpus["root"],
                     jobs=1, batch_size=BATCH, progress=False)
    assert sha256_file(out) == sha256_file(ref)


_SAVE_UNDER_LIMIT = """
import sys, signal, resource, hashlib, torch
sys.path[:0] = [{root!r}]
from pathlib import Path
from safetensors.torch import load_file
from features.errors import DiskFullError
from pipeline.training.train import load_checkpoint, save_checkpoint
torch.manual_seed(0)
model = torch.nn.Linear(300, 300)
opt = torch.optim.Adam(model.parameters())
model(torch.ones(1, 300)).sum().backward()
opt.step()  # Adam's two moments now exist: state.pt is about twice the weights
ckpt = Path({ckpt!r})
save_checkpoint(ckpt, model, opt, None, {{"epoch": 1}})
before = hashlib.sha256((ckpt / "last.safetensors").read_bytes()).hexdigest()
epoch1 = {{k: v.clone() for k, v in model.state_dict().items()}}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
with torch.no_grad():
    model.weight += 1
try:
    save_checkpoint(ckpt, model, opt, None, {{"epoch": 2}})
    print("NOT REFUSED")
except DiskFullError as e:
    print("REFUSED", e)
"""


def _save_under_limit(ckpt: Path, limit: int, then: str) -> subprocess.CompletedProcess:
    """Checkpoint epoch 1, then epoch 2 under a file-size limit (a child process), then run ``then``."""
    script = _SAVE_UNDER_LIMIT.format(root=str(ROOT), ckpt=str(ckpt), limit=limit) + then
    return subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=120)


_CHECKPOINT = """
assert hashlib.sha256((ckpt / "last.safetensors").read_bytes()).hexdigest() == before
state = load_checkpoint(ckpt, torch.nn.Linear(300, 300), torch.optim.Adam(model.parameters()), None, "cpu")
print("RESUMES FROM EPOCH", state["epoch"])
print("FILES", sorted(p.name for p in ckpt.iterdir()))
"""


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    p = _save_under_limit(ckpt, 100_000, _CHECKPOINT)  # below one checkpoint (360 KB of weights)
    assert p.returncode == 0, p.stderr[-2000:]
    refused = [ln for ln in p.stdout.splitlines() if ln.startswith("REFUSED")]
    assert len(refused) == 1, p.stdout
    assert f"{ckpt}/last.safetensors: file size limit reached" in refused[0]
    assert "needs about 361.2 KB" in refused[0] and "free" in refused[0] and "previous last.safetensors is kept" \
        in refused[0]
    assert "RESUMES FROM EPOCH 1" in p.stdout
    assert "FILES ['last.safetensors', 'prev.safetensors', 'state.pt']" in p.stdout  # no temp file left


_HALF_CHECKPOINT = """
print("LAST IS EPOCH 2", bool((load_file(str(ckpt / "last.safetensors"))["weight"] != epoch1["weight"]).all()))
fresh = torch.nn.Linear(300, 300)
state = load_checkpoint(ckpt, fresh, torch.optim.Adam(fresh.parameters()), None, "cpu")
print("RESUMES FROM EPOCH", state["epoch"])
print("EPOCH 1 WEIGHTS", all(torch.equal(fresh.state_dict()[k], v) for k, v in epoch1.items()))
"""


def test_weights_written_but_state_refused_resumes_from_the_epoch_state_names(tmp_path):
    """The window a SIGKILL can hit: new weights on disk, optimizer state still the previous epoch's."""
    ckpt = tmp_path / "ckpt"
    p = _save_under_limit(ckpt, 500_000, _HALF_CHECKPOINT)  # the weights (361 KB) fit, the state does not
    assert p.returncode == 0, p.stderr[-2000:]
    assert any(ln.startswith("REFUSED") and "state.pt" in ln for ln in p.stdout.splitlines()), p.stdout
    assert "LAST IS EPOCH 2 True" in p.stdout
    assert "RESUMES FROM EPOCH 1" in p.stdout and "EPOCH 1 WEIGHTS True" in p.stdout


def test_a_directory_at_the_feature_path_is_refused_before_any_work(good_store, tmp_path):
    out = tmp_path / "features" / "logmel40.h5"
    (out / "something").mkdir(parents=True)
    code, _, err, exc = run_cli(["stage", "extract", "--feature", "logmel40", "--manifest", good_store["manifest"],
                                 "--out", out, "--no-progress", "--params", good_store["params"]])
    assert_one_line_error(code, err, exc, f"{out}: is a directory, not a feature file", "remove or rename it")
    assert sorted(p.name for p in out.parent.iterdir()) == ["logmel40.h5"]  # no lock, no shards


def _unwritable_dir(tmp_path) -> tuple[Path, str]:
    """A folder the kernel refuses to write in: a mode-0555 folder for a normal user; as root (whom modes do
    not stop), a path under /sys, where the kernel refuses new entries even to root."""
    if os.getuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro / "features", "Permission denied"
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without sysfs: no unwritable place to test with")
    return Path("/sys/emoflow-test-unwritable"), "Operation not permitted"


def test_an_unwritable_output_folder_is_one_line(good_store, tmp_path):
    folder, why = _unwritable_dir(tmp_path)
    out = folder / "logmel40.h5"
    code, _, err, exc = run_cli(["stage", "extract", "--feature", "logmel40", "--manifest", good_store["manifest"],
                                 "--out", out, "--no-progress", "--params", good_store["params"]])
    assert_one_line_error(code, err, exc, str(folder), why, "permissions")
    assert not folder.exists()


@pytest.mark.slow  # a CLI subprocess that imports torch + Prefect, trains, then a rerun: ~60 s on a busy 2-core box
def test_sigterm_during_training_is_one_line_and_the_rerun_resumes(prefect_harness, synthetic_cv, tmp_path):
    """The train stage as a user runs it (a subprocess, against the session's Prefect API so no server has to
    start), SIGTERMed once a fold has an epoch checkpoint: exit 143 with the one interrupt line (Prefect marks the
    flow run Crashed); the rerun reuses what finished and resumes the rest from its checkpoints."""
    import yaml
    from prefect.settings import PREFECT_API_URL

    from models import tiny_config
    from pipeline.orchestration.flows import run_cross_validation

    cv = synthetic_cv()
    storage = tmp_path / "storage"
    train = {"epochs": 3, "batch_size": 8, "fixed_frames": 64, "lr": 3e-3, "num_threads": 1, "seed": 0,
             "task_runner": "threads", "max_workers": 1}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"dataset": {"name": "demo"}, "models": {"ilt": tiny_config("ilt")},
                                      "train": {**train, "storage_dir": str(storage), "runs_dir": str(tmp_path)}}))
    env = dict(cli_env(), PREFECT_API_URL=str(PREFECT_API_URL.value()))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "stage", "train", "--model", "ilt", "--manifest",
                             str(cv["manifest_path"]), "--folds-dir", str(cv["folds_dir"]), "--features-dir",
                             str(cv["features_dir"]), "--out", str(tmp_path / "results"), "--params", str(params)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((storage / "checkpoints").glob("ilt/*/state.pt")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no fold checkpointed within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    ours = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert ours == ["error: interrupted (SIGTERM); finished work is kept — rerun the same command to resume"], ours
    assert not (tmp_path / "results" / "ilt" / "metrics.json").exists()

    again = run_cross_validation(
        "ilt", manifest_path=cv["manifest_path"], folds_dir=cv["folds_dir"], features_dir=cv["features_dir"],
        results_dir=tmp_path / "results", storage_dir=storage, runs_dir=tmp_path / "runs",
        params={"models": {"ilt": tiny_config("ilt")}, "train": train, "dataset": {"name": "demo"}})
    resumed = [f for f, m in again["folds"].items() if (m.get("resumed_from_epoch") or 0) >= 1]
    assert again["run"]["cached_folds"] or resumed, again["run"]
    assert (tmp_path / "results" / "ilt" / "metrics.json").exists()
