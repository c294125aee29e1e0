"""Corrupted feature files, made for real by editing the file's bytes: truncated, bytes flipped inside an
utterance's data, a damaged object header, a file from another code version. ``emoflow features verify`` names
the file and the problem; extraction and training refuse with one line that says to rerun
``dvc repro extract@<name>`` (never an HDF5 traceback in the middle of a fold)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from _rel import assert_one_line_error, run_cli, sha256_file

from features.store import FeatureReader, StoreError, verify

HINT = "dvc repro extract@logmel40"


def _flip(path, offset: int, n: int = 8) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(n))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def _addresses(path, utt: str) -> tuple[int, int]:
    """(object header address, data offset) of one utterance's dataset in the file."""
    with h5py.File(path, "r") as f:
        ds = f["utts"][utt]
        return h5py.h5o.get_info(ds.id).addr, ds.id.get_offset()


def test_truncated_file_verify_and_every_reader_say_one_line(store_copy, good_store):
    size = store_copy.stat().st_size
    with open(store_copy, "r+b") as f:
        f.truncate(size // 2)  # an interrupted copy / a full disk during `dvc pull`
    code, _, err, exc = run_cli(["features", "verify", store_copy, "--manifest", good_store["manifest"]])
    assert_one_line_error(code, err, exc, str(store_copy), "truncated or damaged", HINT)
    with pytest.raises(StoreError, match="truncated or damaged.*dvc repro extract@logmel40"):
        FeatureReader(store_copy)


def test_bytes_flipped_inside_an_utterance_are_found_by_verify(store_copy, good_store):
    """HDF5 keeps no checksum of contiguous data: the flipped bytes read back as other numbers. The CRC-32 the
    writer stores per utterance catches them; verify names the utterance, exit 1, and says what to do."""
    utt = sorted(good_store["manifest_df"]["utt_id"])[1]
    _, data = _addresses(store_copy, utt)
    _flip(store_copy, data + 100)
    with FeatureReader(store_copy) as r:  # still readable, silently different: why the checksum exists
        assert r[utt].shape[1] == 40
    problems = verify(store_copy)
    assert problems and problems[0].startswith(f"{utt}: data checksum mismatch"), problems
    assert all(p.startswith(f"{utt}: ") for p in problems), problems  # only the damaged utterance
    code, _, err, exc = run_cli(["features", "verify", store_copy, "--manifest", good_store["manifest"]])
    assert exc is None and code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0] == f"{store_copy}: {problems[0]}" and HINT in lines[-1], lines


def test_damaged_object_header_is_one_line_in_verify_and_in_reads(store_copy, good_store):
    utt = sorted(good_store["manifest_df"]["utt_id"])[2]
    header, _ = _addresses(store_copy, utt)
    _flip(store_copy, header, 16)
    problems = verify(store_copy)
    assert any(p.startswith(f"{utt}: unreadable") for p in problems), problems
    with FeatureReader(store_copy) as r, pytest.raises(StoreError) as e:
        r[utt]
    assert str(store_copy) in str(e.value) and utt in str(e.value) and HINT in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("edit, needle", [
    (lambda a: a.__delitem__("config_hash"), "older version (attribute(s) ['config_hash'] missing)"),
    (lambda a: a.__setitem__("format", 99), "store format 99 by another emoflow version"),
])
def test_file_from_another_code_version_is_refused_with_one_line(edit, needle, store_copy, good_store, tmp_path):
    with h5py.File(store_copy, "r+") as f:
        edit(f.attrs)
    before = sha256_file(store_copy)
    code, _, err, exc = run_cli(["features", "verify", store_copy, "--manifest", good_store["manifest"]])
    assert_one_line_error(code, err, exc, str(store_copy), needle, HINT)
    # the extract stage does not patch it: it recomputes everything and replaces it whole
    code, _, err, exc = run_cli(["stage", "extract", "--feature", "logmel40", "--manifest", good_store["manifest"],
                                 "--out", store_copy, "--no-progress", "--params", good_store["params"]])
    assert code == 0 and exc is None, err
    assert sha256_file(store_copy) != before and verify(store_copy) == []


def test_training_on_a_damaged_feature_file_stops_with_one_line_naming_it(prefect_harness, synthetic_cv, tmp_path):
    """The train stage (the Prefect flow) with one utterance's header damaged: it stops with the store's
    one-line StoreError naming the file, the utterance and the fix (what the CLI prints, exit 2)."""
    cv = synthetic_cv()
    h5 = cv["features_dir"] / "logmel40.h5"
    header, _ = _addresses(h5, "syn005")
    _flip(h5, header, 16)
    from test_training_faults import train_stage

    with pytest.raises(StoreError) as e:
        train_stage(cv, tmp_path, epochs=1)
    msg = str(e.value)
    assert str(h5) in msg and "syn005" in msg and HINT in msg and "\n" not in msg
    assert not (tmp_path / "results" / "ilt" / "metrics.json").exists()
    shutil.rmtree(tmp_path / "storage", ignore_errors=True)


def test_training_on_flipped_bytes_stops_before_fold_1_with_one_line(prefect_harness, synthetic_cv, tmp_path,
                                                                     capsys):
    """Bytes flipped inside one utterance's data (the file still opens and reads: only its numbers changed). The
    train stage compares every utterance it will train on with its stored CRC-32 once, before any fold runs: one
    StoreError line naming the file, the utterance and `dvc repro extract@<name>`; through the CLI's ``_run``
    exit 2; no fold result, checkpoint or metrics file is written."""
    import typer

    from pipeline.cli.main import _run

    cv = synthetic_cv()
    h5 = cv["features_dir"] / "logmel40.h5"
    _, data = _addresses(h5, "syn007")
    _flip(h5, data + 40)
    with FeatureReader(h5) as r:  # still readable: only the checksum can tell
        assert r["syn007"].shape[1] == 40
    from test_training_faults import train_stage

    with pytest.raises(typer.Exit) as e:
        _run(train_stage, cv, tmp_path, epochs=1)
    assert e.value.exit_code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {h5}: utterance 'syn007': data checksum mismatch"), lines
    assert "dvc repro extract@logmel40" in lines[0]
    with pytest.raises(StoreError, match="'syn007': data checksum mismatch"):  # the project error itself
        train_stage(cv, tmp_path, epochs=1)
    storage = tmp_path / "storage"
    assert not [p for p in storage.rglob("*") if p.is_file()], list(storage.rglob("*"))  # no fold result/ckpt
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.json"))
    shutil.rmtree(storage, ignore_errors=True)


def test_new_files_record_a_crc_per_utterance_and_it_matches(good_store):
    from features.store import data_crc32

    with h5py.File(good_store["h5"], "r") as f:
        for utt, ds in f["utts"].items():
            assert int(ds.attrs["crc32"]) == data_crc32(ds[()]), utt
            assert data_crc32(ds[()]) != data_crc32(np.zeros_like(ds[()]))
