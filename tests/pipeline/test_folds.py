"""Fold plans: properties (hypothesis), protocol specifics, stability (golden hashes), I/O and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split

from pipeline.corpus.folds import (
    PAPER_E_SEEDS,
    SPLITS,
    FoldError,
    list_plans,
    make_folds,
    plan_hash,
    plan_info,
    read_folds,
    validate_folds,
    write_folds,
)

PLANS = ["loso", "session_3_1_1", "random_55_25_20", "random_811_10fold", "random_80_20_seeds"]
ALL_PLANS = PLANS + ["group_kfold"]
SESSION_PLANS = {"loso", "session_3_1_1"}
LABELS = ["neu", "hap", "ang", "sad"]
HYP = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.filterwarnings("ignore:.*cannot stratify:UserWarning")


def fixed_manifest(n: int = 40, n_sessions: int = 5) -> pd.DataFrame:
    """A deterministic manifest: sessions Ses01.., two speakers each, 4 balanced labels."""
    i = np.arange(n)
    session = [f"Ses{s + 1:02d}" for s in i % n_sessions]
    return pd.DataFrame(
        {
            "utt_id": [f"u{k:03d}" for k in i],
            "label": [LABELS[k % 4] for k in i],
            "session": session,
            "speaker": [s + "FM"[(k // n_sessions) % 2] for s, k in zip(session, i, strict=True)],
        }
    )


@st.composite
def manifests(draw, min_per_session: int = 4):
    n_sessions = draw(st.integers(3, 6))
    sizes = draw(st.lists(st.integers(min_per_session, 9), min_size=n_sessions, max_size=n_sessions))
    n = sum(sizes)
    ids = draw(st.lists(st.text("abcxyz019_-", min_size=1, max_size=6), min_size=n, max_size=n, unique=True))
    labels = draw(st.lists(st.sampled_from(LABELS[: draw(st.integers(2, 4))]), min_size=n, max_size=n))
    fmt = draw(st.sampled_from(["Ses{:02d}", "S{}", "sess_{}"]))
    session = [fmt.format(s + 1) for s, size in enumerate(sizes) for _ in range(size)]
    gender = draw(st.lists(st.sampled_from("FM"), min_size=n, max_size=n))
    return pd.DataFrame(
        {"utt_id": ids, "label": labels, "session": session,
         "speaker": [s + g for s, g in zip(session, gender, strict=True)]}
    )


def test_registry_lists_the_papers_plans_and_group_kfold():
    assert list_plans() == sorted([*ALL_PLANS, "cross_corpus"])  # cross_corpus: tests/pipeline/test_crosscorpus.py


@pytest.mark.parametrize("plan", PLANS)
@HYP
@given(m=manifests(), seed=st.integers(0, 2**31), perm=st.integers(0, 10_000))
def test_plan_properties(plan, m, seed, perm):
    f = make_folds(plan, m, seed=seed)
    n, ids = len(m), sorted(m["utt_id"])
    assert list(f.columns) == ["utt_id", "fold", "split"] and set(f["split"]) <= set(SPLITS)
    for _, g in f.groupby("fold"):
        assert sorted(g["utt_id"]) == ids  # every utterance exactly once per fold
        assert {"train", "val", "test"} <= set(g["split"])  # val never overlaps test: one split per row
    tests_per_utt = f[f["split"] == "test"].groupby("utt_id").size().reindex(ids, fill_value=0)
    if plan_info(plan).test_partition:
        assert (tests_per_utt == 1).all()
    else:  # independent 80/20 splits: each fold holds out ceil(20 %)
        sizes = f[f["split"] == "test"].groupby("fold").size()
        assert (sizes == math.ceil(0.2 * n)).all() and len(sizes) == len(PAPER_E_SEEDS)
    if plan in SESSION_PLANS:
        sess = m.set_index("utt_id")["session"]
        for _, g in f.groupby("fold"):
            by_split = {s: set(sess[g.loc[g["split"] == s, "utt_id"]]) for s in SPLITS}
            assert len(by_split["test"]) == 1 and len(by_split["val"]) == 1
            assert not by_split["test"] & (by_split["train"] | by_split["val"])
            assert not by_split["val"] & by_split["train"]
    # stable: same call → same frame; row order of the input does not matter
    again = make_folds(plan, m, seed=seed)
    shuffled = make_folds(plan, m.sample(frac=1.0, random_state=perm), seed=seed)
    pd.testing.assert_frame_equal(f, again)
    pd.testing.assert_frame_equal(f, shuffled)
    assert plan_hash(f) == plan_hash(shuffled) == f.attrs["plan_hash"]


def _speaker_manifest(n_speakers: int = 12, per_speaker: int = 6) -> pd.DataFrame:
    """Speakers s01.. alternating M/F (like RAVDESS: odd = male), 4 balanced labels each."""
    rows = []
    for s in range(1, n_speakers + 1):
        for k in range(per_speaker):
            rows.append({"utt_id": f"s{s:02d}_{k}", "label": LABELS[k % 4], "speaker": f"s{s:02d}",
                         "session": f"s{s:02d}", "gender": "M" if s % 2 else "F"})
    return pd.DataFrame(rows)


@HYP
@given(seed=st.integers(0, 2**31), n_splits=st.integers(2, 4), perm=st.integers(0, 10_000))
def test_group_kfold_is_speaker_independent_and_gender_balanced(seed, n_splits, perm):
    m = _speaker_manifest()
    f = make_folds("group_kfold", m, seed=seed, n_splits=n_splits, val_groups=1)
    spk = m.set_index("utt_id")["speaker"]
    gender = m.groupby("speaker")["gender"].first()
    assert f["fold"].nunique() == n_splits
    assert (f[f["split"] == "test"].groupby("utt_id").size() == 1).all()  # test folds partition the corpus
    for _, g in f.groupby("fold"):
        by = {s: set(spk[g.loc[g["split"] == s, "utt_id"]]) for s in SPLITS}
        assert not by["test"] & (by["train"] | by["val"]) and not by["val"] & by["train"]
        assert len(by["val"]) == 1
        counts = gender[sorted(by["test"])].value_counts()
        assert abs(counts.get("M", 0) - counts.get("F", 0)) <= 1  # dealt per gender
    shuffled = make_folds("group_kfold", m.sample(frac=1.0, random_state=perm), seed=seed, n_splits=n_splits,
                          val_groups=1)
    pd.testing.assert_frame_equal(f, shuffled)
    # two validation speakers: one of each gender (before, each fold's list held its females first: val all F)
    two = make_folds("group_kfold", m, seed=seed, n_splits=n_splits, val_groups=2)
    for _, g in two.groupby("fold"):
        val = sorted(set(spk[g.loc[g["split"] == "val", "utt_id"]]))
        assert sorted(gender[val]) == ["F", "M"], val
    pd.testing.assert_frame_equal(two[two["split"] == "test"], f[f["split"] == "test"])  # same test folds


def test_group_kfold_bad_options():
    m = _speaker_manifest()
    with pytest.raises(FoldError, match="n_splits=12 must be in 2..11"):
        make_folds("group_kfold", m, n_splits=12)
    with pytest.raises(FoldError, match="val_groups=5 must be in 1..4"):
        make_folds("group_kfold", m, n_splits=3, val_groups=5)
    with pytest.raises(FoldError, match="needs a gender column"):
        make_folds("group_kfold", m.drop(columns="gender"), n_splits=3)
    assert make_folds("group_kfold", m.drop(columns="gender"), n_splits=3, balance=None)["fold"].nunique() == 3
    blank = m.assign(gender=m["gender"].where(m["speaker"] != "s02", ""))  # what the adapter writes for "unknown"
    with pytest.raises(FoldError, match=r"needs every speaker's gender; 1 of 12 have none \(s02\)"):
        make_folds("group_kfold", blank, n_splits=3)


@HYP
@given(m=manifests(), seed=st.integers(0, 2**31))
def test_leave_one_speaker_out_with_random_val_never_leaks(m, seed):
    f = make_folds("loso", m, seed=seed, group="speaker", val="random_fraction", val_fraction=0.2)
    spk = m.set_index("utt_id")["speaker"]
    assert f["fold"].nunique() == m["speaker"].nunique()
    for _, g in f.groupby("fold"):
        test_spk = set(spk[g.loc[g["split"] == "test", "utt_id"]])
        assert len(test_spk) == 1
        assert not test_spk & set(spk[g.loc[g["split"] != "test", "utt_id"]])


def test_loso_natural_session_order_and_rotating_val():
    m = fixed_manifest(30, 3)
    m["session"] = m["session"].map({"Ses01": "S2", "Ses02": "S10", "Ses03": "S1"})
    f = make_folds("loso", m)
    sess = m.set_index("utt_id")["session"]
    order = ["S1", "S2", "S10"]
    assert f.attrs["info"]["fold_test_groups"] == order
    for k in range(3):
        g = f[f["fold"] == k]
        assert set(sess[g.loc[g["split"] == "test", "utt_id"]]) == {order[k]}
        assert set(sess[g.loc[g["split"] == "val", "utt_id"]]) == {order[(k + 1) % 3]}


def test_loso_random_fraction_val_is_stratified_slice_of_train_sessions():
    m = fixed_manifest(200)
    f = make_folds("loso", m, val="random_fraction", seed=5)
    g = f[f["fold"] == 0]
    val = g[g["split"] == "val"]
    assert len(val) == 16  # ceil(0.1 * 160 training-session utterances)
    assert set(m.set_index("utt_id").loc[val["utt_id"], "label"].value_counts()) == {4}
    assert not f.equals(make_folds("loso", m, val="random_fraction", seed=6))


def test_session_3_1_1_is_three_one_one_on_five_sessions():
    m = fixed_manifest()
    sess = m.set_index("utt_id")["session"]
    for offset in (1, 2):
        f = make_folds("session_3_1_1", m, dev_offset=offset)
        assert f["fold"].nunique() == 5
        for k, g in f.groupby("fold"):
            n_sess = {s: sess[g.loc[g["split"] == s, "utt_id"]].nunique() for s in SPLITS}
            assert n_sess == {"train": 3, "val": 1, "test": 1}
            assert set(sess[g.loc[g["split"] == "val", "utt_id"]]) == {f"Ses{(k + offset) % 5 + 1:02d}"}
    with pytest.raises(FoldError, match=r"dev_offset=5 must be in 1\.\.4"):
        make_folds("session_3_1_1", m, dev_offset=5)


def test_random_plan_proportions_and_stratification():
    m = fixed_manifest(200)
    lab = m.set_index("utt_id")["label"]
    f = make_folds("random_55_25_20", m, seed=1)
    for _, g in f.groupby("fold"):
        assert g["split"].value_counts().to_dict() == {"train": 110, "val": 50, "test": 40}
        assert set(lab[g.loc[g["split"] == "test", "utt_id"]].value_counts()) == {10}
    f = make_folds("random_811_10fold", m.iloc[:100], seed=1)
    assert f["fold"].nunique() == 10
    for _, g in f.groupby("fold"):
        assert g["split"].value_counts().to_dict() == {"train": 80, "val": 10, "test": 10}
    # the val parts also partition the data (val = next fold's test part)
    assert (f[f["split"] == "val"].groupby("utt_id").size() == 1).all()
    assert not make_folds("random_55_25_20", m, seed=1).equals(make_folds("random_55_25_20", m, seed=2))


def test_random_80_20_uses_the_paper_seeds():
    m = fixed_manifest(100).sample(frac=1.0, random_state=0)  # input order must not matter
    f = make_folds("random_80_20_seeds", m, seed=0)
    s = m.sort_values("utt_id")
    for k, paper_seed in enumerate(PAPER_E_SEEDS):
        train, test = train_test_split(s["utt_id"].to_numpy(), test_size=0.2, random_state=paper_seed,
                                       stratify=s["label"].to_numpy())
        g = f[f["fold"] == k]
        assert sorted(g.loc[g["split"] == "test", "utt_id"]) == sorted(test)
        assert len(g[g["split"] == "val"]) == 8  # 0.1 of the 80
    assert make_folds("random_80_20_seeds", m, seeds=(1, 2))["fold"].nunique() == 2


# Golden hashes: a fixed manifest must give these plans on every machine and run. If a library upgrade changes
# one, every cached result keyed on the plan is stale: bump deliberately, never silently.
GOLDEN = {
    # session plans do not use randomness; with default options session_3_1_1 is loso with a dev session
    "loso": "5358f186a1482e959efe449cbabd4f6267c9f61cef21a434a65f93057d2c23f8",
    "session_3_1_1": "5358f186a1482e959efe449cbabd4f6267c9f61cef21a434a65f93057d2c23f8",
    "random_55_25_20": "43507a5d85a09e0849bd78bc8bd541734235eac7a39265be29aa9b54dd648068",
    "random_811_10fold": "8458316033cb1f64840594c73426c9885c4dfb8cb40295de75a213ea4bae4adc",
    "random_80_20_seeds": "f28fd3ef7f4dd519041f443b2fa7b9086373738b75c0db82d7e39f7382fa5a5c",
}


@pytest.mark.parametrize("plan", PLANS)
def test_golden_plan_hash(plan):
    assert plan_hash(make_folds(plan, fixed_manifest(), seed=0)) == GOLDEN[plan]


def test_plan_hash_depends_on_content_only():
    f = make_folds("loso", fixed_manifest())
    h = plan_hash(f)
    assert plan_hash(f.iloc[::-1].reset_index(drop=True)) == h
    assert plan_hash(f.astype({"fold": "int32"})) == h
    g = f.copy()
    g.loc[0, "split"] = "val" if g.loc[0, "split"] != "val" else "train"
    assert plan_hash(g) != h


# --------------------------------------------------------------------------------------------- bad inputs


def test_unknown_plan_and_option():
    with pytest.raises(FoldError, match=r"unknown fold plan 'lolo'; known plans: ") as e:
        make_folds("lolo", fixed_manifest())
    assert all(name in str(e.value) for name in ("group_kfold", "loso", "random_55_25_20", "cross_corpus"))
    with pytest.raises(FoldError, match=r"'loso' does not take option\(s\) \['folds'\]; it takes \['group', 'val'"):
        make_folds("loso", fixed_manifest(), folds=3)
    with pytest.raises(FoldError, match=r"val='speaker' must be"):
        make_folds("loso", fixed_manifest(), val="speaker")
    with pytest.raises(FoldError, match=r"seed must be a non-negative integer"):
        make_folds("random_55_25_20", fixed_manifest(), seed=-1)


def test_bad_manifests():
    m = fixed_manifest()
    m.loc[3, "utt_id"] = "u001"
    with pytest.raises(FoldError, match=r"duplicate utt_id\(s\) \['u001'\]"):
        make_folds("random_811_10fold", m)
    with pytest.raises(FoldError, match=r"needs at least 3 sessions.*has 2: \['Ses01', 'Ses02'\]"):
        make_folds("loso", fixed_manifest(20, 2))
    m = fixed_manifest()
    m.loc[[4, 7], "session"] = ""
    with pytest.raises(FoldError, match=r"needs a session for every utterance; 2 have none \(e\.g\. \['u004', 'u007'\]"):
        make_folds("session_3_1_1", m)
    with pytest.raises(FoldError, match=r"missing column\(s\) \['session'\]"):
        make_folds("loso", fixed_manifest().drop(columns="session"))
    with pytest.raises(FoldError, match=r"8 utterances cannot make 10 folds"):
        make_folds("random_811_10fold", fixed_manifest(8))


def test_validate_folds_catches_broken_tables():
    m = fixed_manifest()
    f = make_folds("loso", m)
    with pytest.raises(FoldError, match=r"disagree: 1 manifest utterance\(s\) not in the folds"):
        validate_folds(f, pd.concat([m, m.iloc[:1].assign(utt_id="new")]))
    bad = f.copy()
    bad.loc[bad.index[0], "split"] = "dev"
    with pytest.raises(FoldError, match=r"unknown split value\(s\) \['dev'\]"):
        validate_folds(bad)
    with pytest.raises(FoldError, match=r"fold 0 does not list every utterance"):
        validate_folds(f.drop(index=f.index[0]))
    # a training utterance of another session moved into fold 0's test split: leakage across sessions
    leak = f.copy()
    row = leak.index[(leak["fold"] == 0) & (leak["split"] == "train")][0]
    leak.loc[row, "split"] = "test"
    with pytest.raises(FoldError, match=r"not in exactly one test fold"):
        validate_folds(leak, m)
    with pytest.raises(FoldError, match=r"fold 0: test session\(s\) .* also appear in train/val"):
        validate_folds(leak, m, test_partition=False, group="session")


def test_write_read_roundtrip_and_tamper_detection(tmp_path):
    m = fixed_manifest()
    f = make_folds("random_811_10fold", m, seed=3)
    p = write_folds(f, tmp_path / "folds" / "random_811_10fold.parquet")
    back = read_folds(p, m)
    pd.testing.assert_frame_equal(back, f)
    assert back.attrs["plan"] == "random_811_10fold" and back.attrs["seed"] == 3
    assert back.attrs["plan_hash"] == plan_hash(f)
    p2 = write_folds(f.sample(frac=1.0, random_state=1), tmp_path / "again.parquet")
    assert p.read_bytes() == p2.read_bytes()  # same content → same bytes (DVC sees no change)
    assert [x.name for x in p.parent.iterdir()] == ["random_811_10fold.parquet"]  # no temp files

    table = pq.read_table(p)
    splits = table.column("split").to_pylist()
    splits[0] = "val" if splits[0] != "val" else "train"
    pq.write_table(table.set_column(2, "split", pa.array(splits)), tmp_path / "edited.parquet")
    with pytest.raises(FoldError, match=r"edited\.parquet: content does not match its recorded plan_hash"):
        read_folds(tmp_path / "edited.parquet")
    with pytest.raises(FoldError, match=r"nope\.parquet: fold table not found"):
        read_folds(tmp_path / "nope.parquet")
