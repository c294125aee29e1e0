"""Utterance ids the feature store cannot key (``a/b`` would nest HDF5 groups, ``.``/``..`` name no object) are
refused by the manifest stage naming the row, before any extraction; labels that differ only by case or
surrounding spaces (``NEU`` vs ``neu``) are warned about, naming the labels and their counts."""

from __future__ import annotations

import pytest
from _rel import assert_one_line_error, run_cli, write_corpus, write_params

from pipeline.corpus.manifest import similar_labels


def _edit_corpus(csv, row: int, column: str, value: str) -> None:
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row + 1].split(",")
    cells[header.index(column)] = value
    lines[row + 1] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("bad_id", ["spk1/utt3", ".", ".."])
def test_unstorable_utt_id_is_refused_by_the_manifest_stage_naming_the_row(bad_id, tmp_path):
    csv = write_corpus(tmp_path / "corpus")
    _edit_corpus(csv, 2, "utt_id", bad_id)
    params = write_params(tmp_path / "params.yaml", csv)
    out = tmp_path / "manifest.parquet"
    code, _, err, exc = run_cli(["stage", "manifest", "--out", out, "--no-progress", "--params", params])
    assert_one_line_error(code, err, exc, "utt_id must not contain '/' or be '.' or '..'", f"utt_id {bad_id!r}",
                          "path 'wav/g2.wav'", "give those rows another utt_id")
    assert not out.exists()


def test_labels_differing_only_by_case_or_spaces_warn_naming_them(tmp_path):
    csv = write_corpus(tmp_path / "corpus", n=8)  # labels cycle ang, hap, neu, sad
    _edit_corpus(csv, 2, "label", "NEU")  # row 2 was 'neu'
    _edit_corpus(csv, 6, "label", " neu ")  # row 6 was 'neu' (the table reader strips the spaces)
    params = write_params(tmp_path / "params.yaml", csv)
    out = tmp_path / "manifest.parquet"
    with pytest.warns(UserWarning) as rec:
        code, _, err, exc = run_cli(["stage", "manifest", "--out", out, "--no-progress", "--params", params])
    assert exc is None and code == 0, err
    msgs = [str(w.message) for w in rec if "differ only by case" in str(w.message)]
    assert len(msgs) == 1, [str(w.message) for w in rec]
    assert "['NEU', 'neu']" in msgs[0] and "count as 2 classes ('NEU': 1, 'neu': 1)" in msgs[0], msgs[0]
    assert "label_map" in msgs[0]


def test_similar_labels_groups_only_true_variants():
    assert similar_labels(["neu", "NEU", "ang", " neu", "sad"]) == [[" neu", "NEU", "neu"]]
    assert similar_labels(["ang", "hap", "neu", "sad", "Ang"]) == [["Ang", "ang"]]
    assert similar_labels(["ang", "hap", "neu", "sad"]) == []
