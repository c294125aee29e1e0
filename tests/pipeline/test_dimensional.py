"""Dimensional targets: IEMOCAP's V/A/D columns and the CCC metric, against hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr

from pipeline.corpus.corpora import build_manifest
from pipeline.corpus.dimensional import VAD_COLUMNS, parse_vad
from pipeline.training.metrics import ccc, dimensional_metrics


def test_ccc_by_hand():
    assert ccc([1, 2, 3], [1, 2, 3]) == 1.0
    # shift by 1: cov 2/3, variances 2/3 each, squared mean gap 1 → (4/3) / (7/3) = 4/7, while Pearson's r is 1
    assert ccc([1, 2, 3], [2, 3, 4]) == pytest.approx(4 / 7)
    assert ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # scale by 2 around the same mean: cov 4/3, var 2/3 and 8/3 → (8/3) / (10/3) = 0.8
    assert ccc([1, 2, 3], [0, 2, 4]) == pytest.approx(0.8)
    assert ccc([1, 2, 3], [2, 2, 2]) == 0.0  # a constant prediction concords with nothing
    assert math.isnan(ccc([2, 2], [2, 2])) and math.isnan(ccc([], []))
    assert ccc([1, 2, np.nan, 3], [1, 2, 5, 3]) == 1.0  # NaN pairs left out


def test_ccc_equals_lins_formula_through_pearson():
    rng = np.random.default_rng(0)
    t = rng.normal(3, 1, 200)
    p = 0.5 * t + rng.normal(0.7, 0.8, 200)
    r = pearsonr(t, p).statistic
    want = 2 * r * t.std() * p.std() / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)
    m = dimensional_metrics(t, p)
    assert m["ccc"] == pytest.approx(want) and m["pearson"] == pytest.approx(r) and m["ccc"] < m["pearson"]
    assert m["mae"] == pytest.approx(np.mean(np.abs(t - p))) and m["n"] == 200


def test_parse_vad():
    assert parse_vad("[2.5000, 3.0000, 1.5000]") == (2.5, 3.0, 1.5)
    assert all(math.isnan(x) for x in parse_vad("")) and all(math.isnan(x) for x in parse_vad("[1, 2]"))


def test_iemocap_adapter_keeps_vad_including_out_of_range_values(tmp_path):
    from tests.pipeline.conftest import build_mini_iemocap

    build_mini_iemocap(tmp_path)
    f = tmp_path / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    lines = f.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("["))
    utt = lines[first].split("\t")[1]
    lines[first] = lines[first].replace("[2.5000, 2.5000, 2.5000]", "[5.5000, 0.5000, 3.2500]")  # the release's quirk
    f.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the miniature is not the published 5531 utterances
        df = build_manifest("iemocap", tmp_path).set_index("utt_id")
    assert tuple(df.loc[utt, list(VAD_COLUMNS)]) == (5.5, 0.5, 3.25)  # kept as written, not clipped
    others = df.drop(index=utt)[list(VAD_COLUMNS)]
    assert (others == 2.5).all().all() and len(others) > 0


def test_manifest_adapter_accepts_vad_columns(tmp_path, wav_factory):
    for i in range(3):
        wav_factory(tmp_path / f"a{i}.wav")
    (tmp_path / "c.csv").write_text("path,label,valence,arousal\na0.wav,neu,2.5,3\na1.wav,ang,,4.5\na2.wav,sad,1,1\n")
    df = build_manifest("manifest", tmp_path / "c.csv").set_index("utt_id")
    assert "dominance" not in df.columns and df.loc["a0", "valence"] == 2.5 and df.loc["a1", "arousal"] == 4.5
    assert math.isnan(df.loc["a1", "valence"])  # blank = not annotated
    (tmp_path / "bad.csv").write_text("path,label,valence\na0.wav,neu,high\n")
    from pipeline.corpus.manifest import ManifestError

    with pytest.raises(ManifestError, match="column 'valence' must be numbers"):
        build_manifest("manifest", tmp_path / "bad.csv")
