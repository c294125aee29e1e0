"""Fold plans: each paper's evaluation protocol as a named, seeded, versioned table.

A plan maps a manifest to a frame with one row per (utterance, fold): columns ``utt_id`` (str),
``fold`` (int64, 0-based) and ``split`` ∈ {train, val, test}; rows sorted by (fold, utt_id). Every fold lists
every utterance exactly once.

============================ ==========================================================================
plan                         definition (specs/datasets.md)
============================ ==========================================================================
``loso``                     one fold per session (natural order: fold f tests the f-th session); val =
                             the next session, rotating (``val="next_session"``) or a stratified
                             ``val_fraction`` of the training sessions (``val="random_fraction"``);
                             ``group="speaker"`` gives leave-one-speaker-out
``session_3_1_1``            one fold per session: 1 test, 1 dev (``dev_offset`` sessions later,
                             rotating), the rest train (3 with IEMOCAP's 5). With the defaults it
                             coincides with ``loso``; it is a separate name so either can change alone
``random_55_25_20``          5-fold stratified partition for test (0.20 each), val = 0.25 of all
                             carved stratified from the other 0.80 → 0.55/0.25/0.20 (speaker-dependent)
``random_811_10fold``        10-fold stratified CV: fold k tests part k, validates on part k+1 → 8:1:1
``group_kfold``              k folds of whole groups (speakers by default): the groups are shuffled with
                             the seed and dealt round-robin (per gender when ``balance="gender"``, so each
                             fold holds as many female as male speakers where the corpus allows); val =
                             the first ``val_groups`` groups of the next fold (rotating; each fold's groups
                             alternate genders, so 2 validation speakers are 1 F + 1 M), so validation
                             speakers are never test speakers of the same fold and never train speakers
``random_80_20_seeds``       5 independent stratified 80/20 splits with the paper's seeds (111111, 123456,
                             0, 999999, 987654); val = ``val_fraction`` (0.1) of the 80 %, same seed.
                             ``seed`` is not used (pass ``seeds=`` to change them). Independent splits:
                             an utterance may be tested in 0 or several folds
``cross_corpus``             one fold per corpus in ``test``: train on every other corpus of a
                             ``combined`` manifest (its ``corpus`` column), val = ``val_fraction`` of
                             their speakers; the test corpus never informs training or model selection
============================ ==========================================================================

Random plans sort by ``utt_id`` first (input row order never matters) and use scikit-learn splitters with
explicit integer seeds (per-fold seeds derived with ``numpy.random.SeedSequence``), so a plan is the same on
every run and machine; :func:`plan_hash` pins that in tests. Plans are pure: I/O is only in
:func:`write_folds`/:func:`read_folds`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from features.errors import EmoflowError
from pipeline.corpus.manifest import atomic_write_table

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FOLD_COLUMNS = ("utt_id", "fold", "split")
PAPER_E_SEEDS = (111111, 123456, 0, 999999, 987654)


class FoldError(EmoflowError, ValueError):
    """A fold plan that cannot be made or a fold table that breaks the contract; the message says why."""


@dataclass(frozen=True)
class PlanSpec:
    name: str
    fn: Callable[..., tuple[list[np.ndarray], dict]]
    #: every utterance is in exactly one test fold
    test_partition: bool
    #: plans over groups: the option holding the group column (its test groups never appear in train/val)
    group_option: str | None
    default_group: str | None
    description: str
    #: manifest columns the plan reads when present (e.g. gender for balancing)
    optional_columns: tuple[str, ...] = ()


_PLANS: dict[str, PlanSpec] = {}


def register_plan(
    name: str, *, test_partition: bool, description: str, group_option: str | None = None,
    default_group: str | None = None, optional_columns: tuple[str, ...] = (),
):
    """Register ``fn(m: DataFrame sorted by utt_id, seed, **options) -> (per-fold split arrays, info)``."""

    def deco(fn):
        if name in _PLANS:
            raise ValueError(f"fold plan {name!r} is already registered")
        _PLANS[name] = PlanSpec(name, fn, test_partition, group_option, default_group, description,
                                tuple(optional_columns))
        return fn

    return deco


def list_plans() -> list[str]:
    """Names accepted by :func:`make_folds`."""
    return sorted(_PLANS)


def plan_info(plan: str) -> PlanSpec:
    if plan not in _PLANS:
        raise FoldError(f"unknown fold plan {plan!r}; known plans: {', '.join(list_plans())}")
    return _PLANS[plan]


# ------------------------------------------------------------------------------------------- helpers


def _natural_key(s: str):
    # "Ses2" < "Ses10"; re.split with a group alternates str/int parts, so keys always compare
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _fold_seed(seed: int, k: int) -> int:
    """Independent, platform-stable seed for fold ``k`` of a plan seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def _prepare(manifest: pd.DataFrame, need: tuple[str, ...]) -> pd.DataFrame:
    if not isinstance(manifest, pd.DataFrame):
        raise FoldError(f"expected the manifest as a DataFrame, got {type(manifest).__name__}")
    missing = [c for c in ("utt_id", "label", *need) if c not in manifest.columns]
    if missing:
        raise FoldError(f"manifest is missing column(s) {missing} needed by this fold plan; rebuild the manifest")
    if len(manifest) == 0:
        raise FoldError("manifest has no utterances")
    m = manifest[["utt_id", "label", *need]].astype(str)
    dup = m["utt_id"][m["utt_id"].duplicated()].unique().tolist()
    if dup:
        raise FoldError(f"manifest has duplicate utt_id(s) {dup[:5]}; utterance ids must be unique")
    return m.sort_values("utt_id", kind="stable").reset_index(drop=True)


def _split(idx: np.ndarray, y: np.ndarray, test_size: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (by ``y``) split of ``idx`` → (rest, held-out), each sorted; unstratified when a class is too rare."""
    if not 0 < test_size < 1:
        raise FoldError(f"{what}: fraction {test_size} must be between 0 and 1")
    try:
        a, b = train_test_split(idx, test_size=test_size, random_state=seed, shuffle=True, stratify=y[idx])
    except ValueError as e:  # a class with one member, or fewer held-out slots than classes
        warnings.warn(f"{what}: cannot stratify by label ({e}); splitting without stratification", stacklevel=3)
        try:
            a, b = train_test_split(idx, test_size=test_size, random_state=seed, shuffle=True)
        except ValueError as e2:
            raise FoldError(f"{what}: cannot split {len(idx)} utterances ({e2})") from None
    return np.sort(a), np.sort(b)


def _kfold(y: np.ndarray, n_splits: int, seed: int, what: str) -> list[np.ndarray]:
    """Test index arrays of a seeded stratified k-fold partition (plain k-fold when no class has k members)."""
    if n_splits < 2:
        raise FoldError(f"{what}: n_splits must be >= 2, got {n_splits}")
    if len(y) < n_splits:
        raise FoldError(f"{what}: {len(y)} utterances cannot make {n_splits} folds; use a smaller plan or corpus")
    x = np.zeros(len(y))
    with warnings.catch_warnings():
        # sklearn warns when the rarest class has fewer than k members; stratification is then approximate
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        try:
            splits = list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, y))
        except ValueError as e:
            warnings.warn(f"{what}: cannot stratify by label ({e}); using plain k-fold", stacklevel=3)
            splits = list(KFold(n_splits, shuffle=True, random_state=seed).split(x))
    return [np.sort(test) for _, test in splits]


def _assign(n: int, test: np.ndarray, val: np.ndarray) -> np.ndarray:
    s = np.full(n, "train", dtype=object)
    s[val] = "val"
    s[test] = "test"
    return s


def _groups(m: pd.DataFrame, col: str, plan: str) -> list[str]:
    empty = m.loc[m[col].str.strip() == "", "utt_id"].tolist()
    if empty:
        raise FoldError(
            f"plan {plan!r} needs a {col} for every utterance; {len(empty)} have none (e.g. {empty[:3]}); "
            f"fill the manifest's {col} column or use a random plan"
        )
    groups = sorted(m[col].unique(), key=_natural_key)
    if len(groups) < 3:
        raise FoldError(
            f"plan {plan!r} needs at least 3 {col}s (train, val and test each get one); the manifest has "
            f"{len(groups)}: {groups}"
        )
    return groups


# --------------------------------------------------------------------------------------------- plans


@register_plan(
    "loso", test_partition=True, group_option="group", default_group="session",
    description="leave one session out; val = next session (rotating) or a stratified fraction of train",
)
def _loso(m, seed, *, group: str = "session", val: str = "next_session", val_fraction: float = 0.1):
    if group not in ("session", "speaker"):
        raise FoldError(f"loso: group={group!r} must be 'session' or 'speaker'")
    if val not in ("next_session", "random_fraction"):
        raise FoldError(f"loso: val={val!r} must be 'next_session' or 'random_fraction'")
    groups = _groups(m, group, "loso")
    col, y, n, idx = m[group].to_numpy(), m["label"].to_numpy(), len(m), np.arange(len(m))
    folds = []
    for f, g in enumerate(groups):
        test = idx[col == g]
        if val == "next_session":
            v = idx[col == groups[(f + 1) % len(groups)]]
        else:
            _, v = _split(idx[col != g], y, val_fraction, _fold_seed(seed, f), f"loso fold {f} val")
        folds.append(_assign(n, test, v))
    return folds, {"group": group, "fold_test_groups": groups}


@register_plan(
    "session_3_1_1", test_partition=True, group_option=None, default_group="session",
    description="per fold: 1 test session, 1 dev session (rotating), the rest train",
)
def _session_3_1_1(m, seed, *, dev_offset: int = 1):
    groups = _groups(m, "session", "session_3_1_1")
    if not 1 <= dev_offset < len(groups):
        raise FoldError(f"session_3_1_1: dev_offset={dev_offset} must be in 1..{len(groups) - 1}")
    col, idx = m["session"].to_numpy(), np.arange(len(m))
    folds = [
        _assign(len(m), idx[col == g], idx[col == groups[(f + dev_offset) % len(groups)]])
        for f, g in enumerate(groups)
    ]
    return folds, {"group": "session", "fold_test_groups": groups}


@register_plan(
    "random_55_25_20", test_partition=True,
    description="5 seeded stratified splits 0.55/0.25/0.20: test folds partition the data",
)
def _random_55_25_20(m, seed, *, n_splits: int = 5, val_fraction: float = 0.25):
    y, n = m["label"].to_numpy(), len(m)
    if not 0 < val_fraction < 1 - 1 / n_splits:
        raise FoldError(f"random_55_25_20: val_fraction={val_fraction} must be in (0, {1 - 1 / n_splits:.3f})")
    folds = []
    for k, test in enumerate(_kfold(y, n_splits, seed, "random_55_25_20")):
        rest = np.setdiff1d(np.arange(n), test)
        _, v = _split(rest, y, val_fraction / (1 - 1 / n_splits), _fold_seed(seed, k), f"random_55_25_20 fold {k} val")
        folds.append(_assign(n, test, v))
    return folds, {}


@register_plan(
    "random_811_10fold", test_partition=True,
    description="10-fold stratified CV, 8:1:1 train/val/test (val = the next fold's test part)",
)
def _random_811_10fold(m, seed, *, n_splits: int = 10):
    parts = _kfold(m["label"].to_numpy(), n_splits, seed, "random_811_10fold")
    folds = [_assign(len(m), parts[k], parts[(k + 1) % n_splits]) for k in range(n_splits)]
    return folds, {}


@register_plan(
    "group_kfold", test_partition=True, group_option="group", default_group="speaker", optional_columns=("gender",),
    description="k folds of whole speakers (or sessions), gender-balanced; val = speakers of the next fold",
)
def _group_kfold(m, seed, *, group: str = "speaker", n_splits: int = 6, val_groups: int = 2,
                 balance: str | None = "gender"):
    if group not in ("session", "speaker"):
        raise FoldError(f"group_kfold: group={group!r} must be 'session' or 'speaker'")
    groups = _groups(m, group, "group_kfold")
    if not 2 <= n_splits <= len(groups) - 1:
        raise FoldError(f"group_kfold: n_splits={n_splits} must be in 2..{len(groups) - 1} ({len(groups)} {group}s)")
    rng = np.random.default_rng(_fold_seed(seed, 0))
    strata: dict[str, list[str]] = {"": list(groups)}
    if balance == "gender":
        if "gender" not in m.columns:
            raise FoldError("group_kfold: balance='gender' needs a gender column in the manifest (or balance: null)")
        g_of = m.groupby(group)["gender"].agg(lambda s: s.mode().iat[0] if len(s.mode()) else "")
        # the manifest adapter writes an empty gender where the corpus has none: balancing on it balances nothing
        unknown = sorted(str(g) for g in groups if str(g_of[g]).strip() in ("", "nan", "None"))
        if unknown:
            raise FoldError(f"group_kfold: balance='gender' needs every {group}'s gender; {len(unknown)} of "
                            f"{len(groups)} have none ({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''})"
                            f": fill the manifest's gender column or set folds.options.group_kfold.balance: null")
        strata = {}
        for g in groups:
            strata.setdefault(str(g_of[g]), []).append(g)
    elif balance is not None:
        raise FoldError(f"group_kfold: balance={balance!r} must be 'gender' or null")
    dealt: list[dict[str, list[str]]] = [{} for _ in range(n_splits)]
    k = 0
    # deal each stratum in turn, continuing the rotation, so fold sizes differ by at most one group
    for key in sorted(strata):
        members = list(strata[key])
        rng.shuffle(members)
        for g in members:
            dealt[k % n_splits].setdefault(key, []).append(g)
            k += 1
    # each fold's groups interleaved across strata (the first stratum rotating with the fold), so its first
    # val_groups groups, the previous fold's validation, are as balanced as its test groups (not all female)
    fold_groups = [_interleave([d[key] for key in sorted(d)], f) for f, d in enumerate(dealt)]
    min_size = min(len(f) for f in fold_groups)
    if not 1 <= val_groups <= min_size:
        raise FoldError(f"group_kfold: val_groups={val_groups} must be in 1..{min_size} (groups per fold)")
    col, idx = m[group].to_numpy(), np.arange(len(m))
    folds = []
    for f in range(n_splits):
        test = idx[np.isin(col, fold_groups[f])]
        val = idx[np.isin(col, fold_groups[(f + 1) % n_splits][:val_groups])]
        folds.append(_assign(len(m), test, val))
    return folds, {"group": group, "fold_test_groups": fold_groups}


def _interleave(lists: list[list[str]], start: int) -> list[str]:
    """Round-robin over ``lists``, beginning with list ``start % len(lists)``.

    >>> _interleave([["f1", "f2"], ["m1", "m2"]], 1)
    ['m1', 'f1', 'm2', 'f2']
    """
    if not lists:
        return []
    order = lists[start % len(lists):] + lists[:start % len(lists)]
    return [g for row in zip_longest(*order) for g in row if g is not None]


@register_plan(
    "random_80_20_seeds", test_partition=False,
    description="5 independent stratified 80/20 splits with the paper's seeds; val carved from train",
)
def _random_80_20_seeds(
    m, seed, *, seeds: tuple[int, ...] = PAPER_E_SEEDS, test_fraction: float = 0.2, val_fraction: float = 0.1
):
    if seed:
        log.info("random_80_20_seeds uses the paper's seeds %s; seed=%s is not used", list(seeds), seed)
    y, idx = m["label"].to_numpy(), np.arange(len(m))
    folds = []
    for k, s in enumerate(seeds):
        train, test = _split(idx, y, test_fraction, int(s), f"random_80_20_seeds fold {k} test")
        _, v = _split(train, y, val_fraction, int(s), f"random_80_20_seeds fold {k} val")
        folds.append(_assign(len(m), test, v))
    return folds, {"seeds": [int(s) for s in seeds]}


@register_plan(
    "cross_corpus", test_partition=False, group_option=None, default_group="corpus", optional_columns=("speaker",),
    description="train/validate on the other corpora, test on one (one fold per test corpus; combined manifest)",
)
def _cross_corpus(m, seed, *, test: str | list[str] | None = None, val_fraction: float = 0.1,
                  val_group: str | None = "speaker"):
    """Fold f tests on corpus ``test[f]`` and trains on every other corpus of the (``combined``) manifest; val
    = ``val_fraction`` of the training corpora's speakers (``val_group: speaker``, so no validation speaker is a
    training speaker) or of their utterances (``val_group: null``, stratified). The test corpus never informs
    training or model selection (``group`` = corpus: :func:`validate_folds` checks it)."""
    corpora = sorted(m["corpus"].unique(), key=_natural_key)
    tests = [test] if isinstance(test, str) else list(test or [])
    unknown = sorted(set(tests) - set(corpora))
    if not tests or unknown or len(corpora) < 2:
        raise FoldError(f"cross_corpus: test={test!r} must name corpora of the manifest {corpora} (not {unknown}); "
                        "the manifest needs two or more (dataset.name: combined)")
    if val_group not in ("speaker", None):
        raise FoldError(f"cross_corpus: val_group={val_group!r} must be 'speaker' or null")
    col, y, idx = m["corpus"].to_numpy(), m["label"].to_numpy(), np.arange(len(m))
    folds = []
    for f, t in enumerate(tests):
        rest = idx[col != t]
        if val_group == "speaker":
            speakers = sorted(set(m["speaker"].to_numpy()[rest]) - {""}, key=_natural_key)
            if len(speakers) < 2:
                raise FoldError(f"cross_corpus fold {f}: {len(speakers)} training speaker(s); use val_group: null")
            rng = np.random.default_rng(_fold_seed(seed, f))
            held = rng.permutation(speakers)[: max(1, min(len(speakers) - 1, round(val_fraction * len(speakers))))]
            v = rest[np.isin(m["speaker"].to_numpy()[rest], held)]
        else:
            _, v = _split(rest, y, val_fraction, _fold_seed(seed, f), f"cross_corpus fold {f} val")
        folds.append(_assign(len(m), idx[col == t], v))
    return folds, {"group": "corpus", "fold_test_groups": tests, "corpora": corpora}


# ------------------------------------------------------------------------------------------- public


def make_folds(plan: str, manifest: pd.DataFrame, seed: int = 0, **options) -> pd.DataFrame:
    """Apply fold plan ``plan`` to ``manifest`` (needs ``utt_id``, ``label`` and, for group plans, the group column).

    Returns ``utt_id, fold, split`` for every (utterance, fold), sorted by (fold, utt_id), with ``attrs``
    ``plan``, ``seed``, ``options``, ``group`` (or None) and ``plan_hash``. Raises :class:`FoldError` for an
    unknown plan/option or a manifest the plan cannot split.
    """
    spec = plan_info(plan)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FoldError(f"seed must be a non-negative integer, got {seed!r}")
    params = inspect.signature(spec.fn).parameters
    unknown = sorted(k for k in options if k not in params or k in ("m", "seed"))
    if unknown:
        takes = [p for p in params if p not in ("m", "seed")]
        raise FoldError(f"fold plan {plan!r} does not take option(s) {unknown}; it takes {takes}")
    group = options.get(spec.group_option, spec.default_group) if spec.group_option else spec.default_group
    optional = tuple(c for c in spec.optional_columns if c in getattr(manifest, "columns", ()))
    m = _prepare(manifest, ((group,) if group else ()) + optional)
    split_arrays, info = spec.fn(m, int(seed), **options)
    ids = m["utt_id"].to_numpy(dtype=object)
    k = len(split_arrays)
    folds = pd.DataFrame(
        {
            "utt_id": np.tile(ids, k),
            "fold": np.repeat(np.arange(k, dtype="int64"), len(ids)),
            "split": np.concatenate(split_arrays).astype(object),
        }
    )
    folds.attrs.update(
        plan=plan, seed=int(seed), options=_jsonable(options), group=info.get("group"),
        info={k: v for k, v in info.items() if k != "group"},
    )
    folds = validate_folds(folds, manifest, test_partition=spec.test_partition, group=info.get("group"))
    folds.attrs["plan_hash"] = plan_hash(folds)
    return folds


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def validate_folds(
    folds: pd.DataFrame,
    manifest: pd.DataFrame | None = None,
    *,
    test_partition: bool | None = None,
    group: str | None = None,
    source: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Check a fold table; return it normalised (dtypes, sorted by fold, utt_id; ``attrs`` kept).

    Always: columns, split values, each utterance once per fold, every fold lists the same utterances and has
    train and test rows. With ``manifest``: the utterances are exactly the manifest's. ``test_partition``
    (default: from ``attrs["plan"]``): each utterance in exactly one test fold. ``group`` (default
    ``attrs["group"]``, needs ``manifest``): no group of a fold's test split appears in its train or val split.
    """
    where = f"{source}: " if source is not None else "folds: "
    missing = [c for c in FOLD_COLUMNS if c not in folds.columns]
    if missing:
        raise FoldError(f"{where}missing column(s) {missing}; a fold table has {list(FOLD_COLUMNS)}")
    attrs = dict(folds.attrs)
    f = folds[list(FOLD_COLUMNS)].copy()
    f.attrs = {}  # pandas deep-copies attrs on every operation: keep the working copy bare
    if f.isna().any().any():
        raise FoldError(f"{where}missing values in {f.columns[f.isna().any()].tolist()}")
    f["utt_id"] = f["utt_id"].astype(str).astype(object)
    f["split"] = f["split"].astype(str).astype(object)
    try:
        f["fold"] = f["fold"].astype("int64")
    except (ValueError, TypeError) as e:
        raise FoldError(f"{where}fold must be integers ({e})") from None
    bad = sorted(set(f["split"]) - set(SPLITS))
    if bad:
        raise FoldError(f"{where}unknown split value(s) {bad}; allowed {list(SPLITS)}")
    f = f.sort_values(["fold", "utt_id"], kind="stable").reset_index(drop=True)
    fold = f["fold"].to_numpy()
    utt_codes, ids = pd.factorize(f["utt_id"], sort=True)
    split = f["split"].to_numpy()
    dup = (fold[1:] == fold[:-1]) & (utt_codes[1:] == utt_codes[:-1])  # rows are sorted by (fold, utt_id)
    if dup.any():
        raise FoldError(f"{where}utterance(s) listed twice in a fold: {f.iloc[np.flatnonzero(dup)[:5]].to_dict('records')}")
    folds_k, per_fold = np.unique(fold, return_counts=True)
    short = folds_k[per_fold != len(ids)]
    if len(short):  # no duplicates, so a fold with fewer rows than utterances misses some
        k = int(short[0])
        miss = sorted(set(ids) - set(f.loc[fold == k, "utt_id"]))
        raise FoldError(f"{where}fold {k} does not list every utterance (missing e.g. {miss[:5]})")
    for s in ("train", "test"):
        lacking = np.setdiff1d(folds_k, fold[split == s])
        if len(lacking):
            raise FoldError(f"{where}fold {int(lacking[0])} has no {s} utterances")
    if manifest is not None:
        mids, fids = set(manifest["utt_id"].astype(str)), set(ids)
        if mids != fids:
            raise FoldError(
                f"{where}folds and manifest disagree: {len(mids - fids)} manifest utterance(s) not in the folds "
                f"(e.g. {sorted(mids - fids)[:3]}), {len(fids - mids)} fold utterance(s) not in the manifest "
                f"(e.g. {sorted(fids - mids)[:3]}); re-make the folds from this manifest"
            )
    if test_partition is None and attrs.get("plan") in _PLANS:
        test_partition = _PLANS[attrs["plan"]].test_partition
    is_test = split == "test"
    if test_partition:
        n_test = np.bincount(utt_codes[is_test], minlength=len(ids))
        wrong = np.flatnonzero(n_test != 1)
        if len(wrong):
            shown = {ids[i]: int(n_test[i]) for i in wrong[:5]}
            raise FoldError(f"{where}utterance(s) not in exactly one test fold: {shown} (utt_id: test folds)")
    group = group if group is not None else attrs.get("group")
    if group and manifest is not None:
        gmap = manifest.set_index(manifest["utt_id"].astype(str))[group].astype(str)
        grp_codes, groups = pd.factorize(f["utt_id"].map(gmap))
        pair = fold * (len(groups) + 1) + grp_codes
        leak = np.intersect1d(pair[is_test], pair[~is_test])
        if len(leak):
            k = int(leak[0] // (len(groups) + 1))
            bad_groups = sorted({groups[p % (len(groups) + 1)] for p in leak if p // (len(groups) + 1) == k})
            raise FoldError(f"{where}fold {k}: test {group}(s) {bad_groups} also appear in train/val")
    f.attrs.update(attrs)
    return f


def plan_hash(folds: pd.DataFrame) -> str:
    """sha256 (hex) of the fold table's content: ``fold<TAB>utt_id<TAB>split`` lines sorted by (fold, utt_id).

    Independent of row order, dtypes and library versions: a cache key for everything trained on the plan.
    """
    f = folds[list(FOLD_COLUMNS)]
    rows = sorted(zip(f["fold"].astype("int64").tolist(), f["utt_id"].astype(str), f["split"].astype(str), strict=True))
    h = hashlib.sha256()
    for fold, utt, split in rows:
        h.update(f"{fold}\t{utt}\t{split}\n".encode())
    return h.hexdigest()


def write_folds(folds: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate and write a fold table atomically as Parquet; ``attrs`` (plan, seed, options, hash) go into
    the file's metadata. Same content → same bytes."""
    f = validate_folds(folds, source=path)
    meta = {k: v for k, v in f.attrs.items()}
    meta["plan_hash"] = plan_hash(f)
    table = pa.Table.from_arrays(
        [
            pa.array(f["utt_id"].tolist(), type=pa.string()),
            pa.array(f["fold"].to_numpy(), type=pa.int64()),
            pa.array(f["split"].tolist(), type=pa.string()),
        ],
        schema=pa.schema(
            [pa.field("utt_id", pa.string()), pa.field("fold", pa.int64()), pa.field("split", pa.string())],
            metadata={"emoflow.folds": json.dumps(_jsonable(meta), sort_keys=True)},
        ),
    )
    return atomic_write_table(table, path)


def read_folds(path: str | os.PathLike, manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read a fold table written by :func:`write_folds`, restore its ``attrs`` and validate it (against
    ``manifest`` when given: same utterances, no group leakage). Raises :class:`FoldError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FoldError(f"{path}: fold table not found; make it first (the `folds` stage / make_folds + write_folds)")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow errors are terse
        raise FoldError(f"{path}: not a readable Parquet fold table ({e}); re-make it") from None
    raw = (table.schema.metadata or {}).get(b"emoflow.folds")
    f = table.to_pandas()
    f.attrs.update(json.loads(raw) if raw else {})
    stored = f.attrs.get("plan_hash")
    out = validate_folds(f, manifest, source=path)
    if stored and plan_hash(out) != stored:
        raise FoldError(f"{path}: content does not match its recorded plan_hash; the file was edited — re-make it")
    return out
