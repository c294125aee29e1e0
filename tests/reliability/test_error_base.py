"""One error base class (issue #13): every project error is an ``EmoflowError`` and keeps its historical base;
the CLI turns exactly these (and OSErrors that name a path) into one line and exit 2; anything else is a bug
and keeps its traceback."""

from __future__ import annotations

import errno
import importlib

import pytest
import typer

from features.errors import ConfigError, EmoflowError, disk_full_error
from pipeline.cli.main import _run

CLASSES = [
    ("features.audio", "AudioError", ValueError),
    ("features.pretrained", "ModelNotAvailableError", RuntimeError),
    ("features.store", "StoreError", RuntimeError),
    ("features.store", "StoreLockedError", RuntimeError),
    ("features.store", "MissingUtteranceError", KeyError),
    ("pipeline.core.params", "ParamsError", ValueError),
    ("pipeline.extraction.extract", "ExtractionError", RuntimeError),
    ("pipeline.corpus.folds", "FoldError", ValueError),
    ("pipeline.orchestration.flows", "FlowError", RuntimeError),
    ("pipeline.extraction.transcribe", "TranscribeError", ValueError),
    ("pipeline.extraction.transcribe", "AsrModelError", ValueError),
    ("pipeline.training.data", "DataError", ValueError),
    ("pipeline.team.remote", "RemoteError", ValueError),
    ("pipeline.orchestration.server", "ServerError", RuntimeError),
    ("pipeline.corpus.manifest", "ManifestError", ValueError),
    ("pipeline.corpus.manifest", "MissingAudioError", FileNotFoundError),
    ("pipeline.training.train", "TrainError", RuntimeError),
    ("pipeline.orchestration.compare", "CompareError", ValueError),
]


@pytest.mark.parametrize("module, name, old_base", CLASSES, ids=[c[1] for c in CLASSES])
def test_every_project_error_is_an_emoflow_error_and_keeps_its_old_base(module, name, old_base):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, EmoflowError) and issubclass(cls, old_base)


def _fail(exc: BaseException):
    raise exc


def test_cli_turns_project_errors_into_one_line_exit_2(capsys):
    with pytest.raises(typer.Exit) as e:
        _run(_fail, ConfigError("unknown feature set 'x'; known feature sets: a, b"))
    assert e.value.exit_code == 2
    assert capsys.readouterr().err == "error: unknown feature set 'x'; known feature sets: a, b\n"


def test_unknown_names_are_project_errors_not_bare_value_errors():
    from features import get_extractor
    from models import create_model

    with pytest.raises(ConfigError, match="known feature sets"):
        get_extractor("no_such_feature")
    with pytest.raises(ConfigError, match="known models"):
        create_model("no_such_model")
    with pytest.raises(ConfigError, match="n_fft must be even"):  # an extractor's own config check
        get_extractor("logmel40", n_fft=401)


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ValueError, match="a bug"):
        _run(_fail, ValueError("a bug"))
    with pytest.raises(KeyError):
        _run(_fail, KeyError("a bug"))


def test_a_real_os_error_naming_a_path_is_one_line(capsys, tmp_path):
    where = tmp_path / "a-file"
    where.write_text("")
    with pytest.raises(typer.Exit) as e:  # the kernel refuses: a parent of the path is a file
        _run(open, where / "x.h5", "w")
    assert e.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{where}/x.h5: Not a directory" in err


def test_disk_full_message_names_path_needed_and_free():
    msg = str(disk_full_error("/tmp/f.h5", OSError(errno.ENOSPC, "No space left on device"), 2_500_000, "kept"))
    assert msg.startswith("/tmp/f.h5: no space left on device — needs about 2.5 MB, ") and " free; kept; " in msg
