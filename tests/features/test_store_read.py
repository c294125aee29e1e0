"""FeatureReader's fast read path returns exactly what h5py returns, for every kind of array the store holds."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from features.store import FeatureReader, FeatureWriter, FileMeta, MissingUtteranceError


@pytest.fixture
def store(tmp_path):
    arrays = {
        "f32": np.arange(12, dtype=np.float32).reshape(4, 3),
        "f16": np.linspace(0, 1, 10, dtype=np.float16).reshape(5, 2),
        "i64": np.arange(7, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float32),  # an utterance shorter than one frame
        "scalar": np.float32(2.5),
        "bytes": np.array([b"AH0", b"B", b"K"]),  # fixed-length strings take h5py's own path
        "cube": np.random.default_rng(0).standard_normal((2, 3, 4)),
    }
    path = tmp_path / "f.h5"
    sums = {u: f"{i:064x}" for i, u in enumerate(arrays)}
    with FeatureWriter(path, FileMeta("t", "1", {}, "h", 3, 0.01, "audio")) as w:
        w.plan(sums)
        w.write_batch(arrays, sums)
        w.commit(sums)
    return path


def test_reader_returns_what_h5py_returns(store):
    reader = FeatureReader(store)
    with h5py.File(store, "r", locking=False) as f:
        for utt in f["utts"]:
            want, got = f["utts"][utt][()], reader[utt]
            assert type(got) is type(want), utt
            assert np.asarray(got).dtype == np.asarray(want).dtype and np.shape(got) == np.shape(want), utt
            assert np.array_equal(got, want), utt
    first = reader["f32"]
    first[0, 0] = -1  # each read is a new array: the caller may modify it
    assert reader["f32"][0, 0] == 0
    with pytest.raises(MissingUtteranceError, match="'nope' is not in"):
        reader["nope"]
    assert "f32" in reader and "nope" not in reader and len(reader) == 7
    reader.close()
    assert np.array_equal(reader["i64"], np.arange(7))  # a closed reader opens again on the next read
    reader.close()


def test_reader_reopens_in_a_new_process_state(store):
    reader = FeatureReader(store)
    reader["f32"]
    clone = pickle.loads(pickle.dumps(reader))  # what a DataLoader worker receives: no open handle
    assert clone._h5 is None and clone._group is None
    assert np.array_equal(clone["cube"], reader["cube"])
    reader._pid = -1  # as after a fork: the handle belongs to another process and is reopened
    assert np.array_equal(reader["i64"], np.arange(7))
