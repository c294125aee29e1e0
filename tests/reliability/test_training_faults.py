"""Training faults: a NaN loss (from a feature file whose numbers were overwritten with NaN on disk), CUDA out of
memory (raised by a model's forward: no GPU here), a DataLoader worker killed by SIGKILL (the real signal, sent
by the worker to itself). Each ends the fold with one TrainError line naming the fold, epoch and batch and what
to try; through the train stage (Prefect flow, folds as tasks) the fold's own TrainError reaches the CLI's
``_run``, which prints it as one line with exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from features.errors import EmoflowError
from features.store import data_crc32
from pipeline.training.train import LoopState, TrainError, fit_epoch


def train_stage(cv, tmp_path, **train):
    """The train stage exactly as ``emoflow stage train`` calls it (``pipeline.cli.main._run`` around
    ``stages.train``), minus typer's CliRunner: Prefect's background log threads write to the stderr of the
    moment and CliRunner closes its stream when a command returns. What ``_run`` prints for an
    ``EmoflowError`` (one line, exit 2) is tested in test_error_base.py; this checks that the error reaching it
    through the flow is the fold's own TrainError/StoreError, not a Prefect wrapper."""
    from models import tiny_config
    from pipeline.cli import stages

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "dataset": {"name": "demo"}, "models": {"ilt": tiny_config("ilt")},
        "train": {"epochs": 2, "batch_size": 8, "fixed_frames": 64, "num_threads": 1, "seed": 0,
                  "task_runner": "threads", "max_workers": 1, "storage_dir": str(tmp_path / "storage"),
                  "runs_dir": str(tmp_path / "runs"), **train}}))
    stages.train(params, "ilt", cv["manifest_path"], cv["folds_dir"], cv["features_dir"], tmp_path / "results")


def test_nan_in_the_features_stops_the_fold_naming_fold_epoch_batch_through_the_cli(prefect_harness, synthetic_cv,
                                                                                   tmp_path):
    """A TrainError raised inside a fold task (Prefect wraps task failures) reaches the CLI as one line."""
    cv = synthetic_cv()
    with h5py.File(cv["features_dir"] / "logmel40.h5", "r+") as f:  # every training utterance poisoned
        for ds in f["utts"].values():
            ds[0, 0] = np.nan
            ds.attrs["crc32"] = np.uint32(data_crc32(ds[()]))  # as written by an extractor that gave NaN (not a
            # flipped byte, which training refuses before fold 1: test_corrupt_store.py)
    with pytest.raises(TrainError) as e:
        train_stage(cv, tmp_path)
    msg = str(e.value)
    assert type(e.value) is TrainError and isinstance(e.value, EmoflowError)  # what _run prints as one line
    assert re.fullmatch(r"ilt fold \d+ epoch 1 batch 0: loss is nan; lower the lr, set grad_clip.*", msg), msg
    assert "emoflow features verify" in msg and "\n" not in msg
    assert not (tmp_path / "results" / "ilt" / "metrics.json").exists()


class _Forward(torch.nn.Module):
    def __init__(self, fail: BaseException | None = None):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.fail = fail

    def forward(self, x):
        if self.fail is not None:
            raise self.fail
        return self.lin(x)


class _Items(Dataset):
    def __init__(self, n: int = 8, kill_at: int = -1):
        self.n, self.kill_at = n, kill_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i == self.kill_at and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does to a worker
        return {"x": torch.full((3,), float(i)), "label": torch.tensor(i % 2)}


def _epoch(model, loader, batch_size: int = 4):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    st = LoopState(epoch=2)
    return fit_epoch(model, loader, opt, {"batch_size": batch_size}, st, torch.device("cpu"), False, None, None,
                     "ilt fold 3")


def test_cuda_out_of_memory_names_the_batch_size_and_the_setting():
    loader = DataLoader(_Items(), batch_size=16)
    with pytest.raises(TrainError) as e:
        _epoch(_Forward(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")), loader, 16)
    msg = str(e.value)
    assert msg.startswith("ilt fold 3 epoch 3 batch 0: out of GPU memory at batch_size 16")
    assert "set train.batch_size: 8" in msg and "\n" not in msg


def test_other_errors_in_forward_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        _epoch(_Forward(ZeroDivisionError("a bug")), DataLoader(_Items(), batch_size=4))


@pytest.mark.parametrize("context", ["fork", pytest.param("forkserver", marks=pytest.mark.slow)])
def test_dataloader_worker_killed_by_sigkill_ends_the_fold_with_one_line(context):
    """Training uses forkserver workers (not children of this process: PyTorch's SIGCHLD check cannot see them,
    and the death first shows as a reset connection); fork is the fast variant (forkserver start-up costs ~15 s
    of imports per loader on this box). Runs in a fresh interpreter: forked workers of a process in which earlier
    tests ran Prefect exit with code 1 at start-up, which would fail the healthy loader for another reason."""
    here = Path(__file__).resolve().parent
    code = (f"import sys; sys.path[:0] = [{str(here.parents[1])!r}, {str(here)!r}]; "
            f"import test_training_faults as t; t.check_worker_killed({context!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def check_worker_killed(context: str) -> None:
    loader = DataLoader(_Items(n=8, kill_at=5), batch_size=2, num_workers=1, multiprocessing_context=context)
    with pytest.raises(TrainError) as e:
        _epoch(_Forward(), loader)
    msg = str(e.value)
    assert re.match(r"ilt fold 3 epoch 3: DataLoader worker \(pid(\(s\))? \d+\)", msg), msg  # PyTorch says both
    assert "train.num_workers: 0" in msg and "resumes" in msg and "\n" not in msg
    if context == "forkserver":
        assert "killed by signal SIGKILL" in msg, msg
    healthy = DataLoader(_Items(n=8), batch_size=2, num_workers=1, multiprocessing_context=context)
    n, _, _ = _epoch(_Forward(), healthy)  # no error
    assert n == 8
