"""Is model A really better than model B? Paired tests over pooled test predictions.

With 5 folds and a few hundred test utterances a 1–2 point UA difference is often noise; the report's mean ± std
over folds does not say so. This module does, from the utterance-level predictions every run writes
(``predictions.parquet``: ``utt_id, fold, label, pred, prob_*``):

* :func:`ua_interval` — a model's pooled UA with a percentile bootstrap 95 % interval (utterances resampled with
  replacement, seeded);
* :func:`paired_bootstrap` — the UA difference A − B with a *paired* bootstrap interval: both models are scored on
  the same resampled utterances, so what the two have in common (hard utterances, easy speakers) cancels;
* :func:`mcnemar` — McNemar's exact test on accuracy (WA) from the discordant pairs (scipy's binomial test);
* :func:`compare_frames` / :func:`pairwise` — align two or more prediction tables on ``utt_id`` and run the above;
  :func:`verdict` says in words whether the difference is *resolved* (its 95 % interval excludes 0).

Everything above the I/O edge (:func:`load_run`, :func:`significance_markdown`) is a pure function on arrays.
The intervals are per comparison, not corrected for multiple comparisons: among many pairs, about one in twenty
"resolved" verdicts between equally good models is expected by chance, and the report says so.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.errors import EmoflowError
from pipeline.orchestration.results import run_label

N_BOOT = 1000
SEED = 0
LEVEL = 0.95


class CompareError(EmoflowError, ValueError):
    """Two runs that cannot be compared (different utterances or labels, no predictions); says which and why."""


@dataclass(frozen=True)
class Interval:
    point: float  # the statistic on the actual predictions (not the bootstrap mean)
    lo: float
    hi: float

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (used for differences)."""
        return self.lo > 0 or self.hi < 0


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    n: int  # paired utterances
    ua_a: Interval
    ua_b: Interval
    ua_diff: Interval  # UA(a) − UA(b), paired bootstrap
    wa_diff: Interval  # WA(a) − WA(b), same resamples
    mcnemar_b: int  # a right, b wrong
    mcnemar_c: int  # a wrong, b right
    mcnemar_p: float
    n_boot: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ua_diff"]["resolved"] = self.ua_diff.resolved
        d["wa_diff"]["resolved"] = self.wa_diff.resolved
        return d


# ------------------------------------------------------------------------------------------------- pure parts


def encode(y_true: Sequence, *preds: Sequence) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Labels as class indices: ``(y_true, [pred, ...], classes)``; classes are those of ``y_true`` (sorted), a
    predicted class outside them gets index ``len(classes)`` (always wrong, never a class of its own)."""
    classes = sorted({str(v) for v in y_true})
    index = {c: i for i, c in enumerate(classes)}
    yt = np.array([index[str(v)] for v in y_true], dtype=np.int64)
    out = [np.array([index.get(str(v), len(classes)) for v in p], dtype=np.int64) for p in preds]
    return yt, out, classes


def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """``(n_boot, n)`` utterance indices drawn with replacement; the same seed and ``n`` give the same draws,
    so every model of a comparison is scored on the same resamples."""
    if n <= 0:
        raise CompareError("no utterances to resample")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def ua_of_resamples(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
    """UA (mean per-class recall, in [0, 1]) of each resample ``idx[b]``; a class absent from a resample is left
    out of its mean, as scikit-learn's balanced accuracy does."""
    n_boot = idx.shape[0]
    t = y_true[idx]
    hit = (y_pred[idx] == t).astype(float)
    # one bincount for all resamples: bin b * n_classes + class
    bins = (np.arange(n_boot)[:, None] * n_classes + t).ravel()
    support = np.bincount(bins, minlength=n_boot * n_classes).reshape(n_boot, n_classes)
    correct = np.bincount(bins, weights=hit.ravel(), minlength=n_boot * n_classes).reshape(n_boot, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
    return np.nanmean(recall, axis=1)


def ua(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """UA of the actual predictions (index-encoded, see :func:`encode`)."""
    return float(ua_of_resamples(y_true, y_pred, np.arange(len(y_true))[None, :], n_classes)[0])


def _interval(point: float, samples: np.ndarray, level: float) -> Interval:
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a])
    return Interval(point=float(point), lo=float(lo), hi=float(hi))


def ua_interval(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_boot: int = N_BOOT, seed: int = SEED,
                level: float = LEVEL) -> Interval:
    """Pooled UA with its percentile bootstrap interval."""
    idx = bootstrap_indices(len(y_true), n_boot, seed)
    return _interval(ua(y_true, y_pred, n_classes), ua_of_resamples(y_true, y_pred, idx, n_classes), level)


def paired_bootstrap(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int,
                     n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL) -> dict[str, Interval]:
    """UA and WA differences A − B, each resample scoring both models on the same utterances; also each model's
    UA interval from those same resamples. Keys ``ua_a, ua_b, ua_diff, wa_diff``."""
    idx = bootstrap_indices(len(y_true), n_boot, seed)
    ua_a, ua_b = (ua_of_resamples(y_true, p, idx, n_classes) for p in (pred_a, pred_b))
    hit_a, hit_b = (pred_a == y_true).astype(float), (pred_b == y_true).astype(float)
    wa_d = (hit_a - hit_b)[idx].mean(axis=1)
    pa, pb = ua(y_true, pred_a, n_classes), ua(y_true, pred_b, n_classes)
    return {"ua_a": _interval(pa, ua_a, level), "ua_b": _interval(pb, ua_b, level),
            "ua_diff": _interval(pa - pb, ua_a - ua_b, level),
            "wa_diff": _interval(float((hit_a - hit_b).mean()), wa_d, level)}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test: ``(b, c, p)`` with b = A right and B wrong, c = A wrong and B right, and p the
    two-sided binomial probability of a split at least this uneven when b and c are equally likely (p = 1 when
    the models never disagree). Exact rather than χ²: discordant counts are small here."""
    from scipy.stats import binomtest

    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


def align(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str] = ("a", "b")) -> pd.DataFrame:
    """Two prediction tables joined on ``utt_id`` — on ``(utt_id, fold)`` when both have a ``fold`` column, so a
    plan of repeated splits (an utterance tested in several folds) pairs each test with its counterpart —
    giving ``label, pred_a, pred_b``. The test rows must match: a paired test over different utterances would
    compare the test sets, not the models."""
    key = ["utt_id", "fold"] if "fold" in a.columns and "fold" in b.columns else ["utt_id"]
    rows = []
    for name, df in zip(names, (a, b), strict=True):
        missing = {"utt_id", "label", "pred"} - set(df.columns)
        if missing:
            raise CompareError(f"{name}: predictions lack columns {sorted(missing)}")
        d = df[[*key, "label", "pred"]].astype({"utt_id": str})
        if d.duplicated(key).any():
            raise CompareError(f"{name}: {key} predicted twice, e.g. {d[key][d.duplicated(key)].iloc[0].tolist()}")
        rows.append(d)
    m = rows[0].merge(rows[1], on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    only_a, only_b = (int((m["_merge"] == side).sum()) for side in ("left_only", "right_only"))
    if only_a or only_b:
        example = m.loc[m["_merge"] != "both", "utt_id"].iloc[0]
        raise CompareError(f"{names[0]} and {names[1]} were not tested on the same utterances ({only_a} only in "
                           f"{names[0]}, {only_b} only in {names[1]}, e.g. {example!r}): compare runs of the same "
                           "fold plan")
    bad = m["label_a"].astype(str) != m["label_b"].astype(str)
    if bad.any():
        raise CompareError(f"{names[0]} and {names[1]} disagree on the true label of {int(bad.sum())} utterances "
                           f"(e.g. {m['utt_id'][bad].iloc[0]!r}): different label maps?")
    # sorted: the resamples then depend on the utterances, not on the order the folds were written in
    m = m.rename(columns={"label_a": "label"}).drop(columns=["label_b", "_merge"])
    return m.sort_values(key, kind="stable").reset_index(drop=True)


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str] = ("a", "b"), n_boot: int = N_BOOT,
                   seed: int = SEED, level: float = LEVEL) -> Comparison:
    """The full paired comparison of two prediction tables."""
    m = align(a, b, names)
    yt, (pa, pb), classes = encode(m["label"], m["pred_a"], m["pred_b"])
    boot = paired_bootstrap(yt, pa, pb, len(classes), n_boot, seed, level)
    b_, c_, p = mcnemar(pa == yt, pb == yt)
    return Comparison(a=names[0], b=names[1], n=len(m), **boot, mcnemar_b=b_, mcnemar_c=c_, mcnemar_p=p,
                      n_boot=n_boot, seed=seed)


def verdict(c: Comparison) -> str:
    """One sentence: the UA difference (higher-UA model first), its interval, and whether it is resolved;
    McNemar on accuracy beside it (it can disagree: it tests WA, which favours the majority classes)."""
    d, hi_name, lo_name = c.ua_diff, c.a, c.b
    if d.point < 0:  # say "X − Y = +d" rather than a negative difference
        d, hi_name, lo_name = Interval(-d.point, -d.hi, -d.lo), c.b, c.a
    pts = f"{100 * d.point:+.1f} UA points (95 % CI {100 * d.lo:+.1f} to {100 * d.hi:+.1f}, {c.n} utterances)"
    if d.resolved:
        head = f"**{hi_name}** is better than **{lo_name}**: {pts} — resolved, the interval excludes 0"
    else:
        head = f"**{hi_name}** vs **{lo_name}**: {pts} — not resolved, the interval includes 0"
    return (f"{head}; McNemar on accuracy: {c.mcnemar_b} utterances right only by {c.a}, {c.mcnemar_c} only by "
            f"{c.b}, p = {c.mcnemar_p:.3g}.")


def pairwise(runs: dict[str, tuple[str, pd.DataFrame]], n_boot: int = N_BOOT,
             seed: int = SEED) -> tuple[list[Comparison], list[str]]:
    """Every pair of runs with the same plan key (``name → (plan key, predictions)``); returns the comparisons
    and a note for each pair of the same plan that could not be paired (e.g. a model that skipped utterances)."""
    out, notes = [], []
    for (na, (ka, da)), (nb, (kb, db)) in itertools.combinations(sorted(runs.items()), 2):
        if ka != kb:
            continue
        try:
            out.append(compare_frames(da, db, (na, nb), n_boot, seed))
        except CompareError as e:
            notes.append(str(e))
    return out, notes


def _ci(i: Interval) -> str:
    return f"{100 * i.point:.1f} [{100 * i.lo:.1f}, {100 * i.hi:.1f}]"


def render_significance(comparisons: list[Comparison], notes: list[str]) -> str:
    """The report's Markdown section: each model's UA interval, then one verdict per pair."""
    if not comparisons and not notes:
        return ""
    lines = ["", "## Is A really better than B?", "",
             f"Pooled test predictions, paired bootstrap over utterances ({comparisons[0].n_boot if comparisons else N_BOOT} "
             f"resamples, seed {comparisons[0].seed if comparisons else SEED}) for every pair of models tested on "
             "the same utterances (same fold plan); McNemar's exact test on accuracy beside it. A difference is "
             "*resolved* when its 95 % interval excludes 0. The intervals are not corrected for multiple "
             "comparisons: among many pairs, about 1 in 20 resolved verdicts between equal models is expected.", "",
             "| model | UA % [95 % CI] | utterances |", "|---|---|---|"]
    seen: dict[str, tuple[Interval, int]] = {}
    for c in comparisons:
        seen.setdefault(c.a, (c.ua_a, c.n))
        seen.setdefault(c.b, (c.ua_b, c.n))
    lines += [f"| {m} | {_ci(i)} | {n} |" for m, (i, n) in sorted(seen.items())]
    lines += [""] + [f"- {verdict(c)}" for c in comparisons]
    resolved = sum(c.ua_diff.resolved for c in comparisons)
    lines += ["", f"{resolved} of {len(comparisons)} UA differences resolved, {len(comparisons) - resolved} not."]
    if notes:
        lines += ["", "Not paired:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- I/O edge


def load_run(path: str | Path) -> tuple[str, str, pd.DataFrame]:
    """``(name, plan key, predictions)`` of a results or run directory holding ``predictions.parquet`` (and
    usually ``run.json``/``metrics.json``, whose ``plan_hash`` — else ``fold_plan`` — is the plan key)."""
    d = Path(path)
    preds = d / "predictions.parquet"
    if not preds.is_file():
        raise FileNotFoundError(f"{preds}: no predictions (a results/<model>/ or runs/<model>/<run>/ directory "
                                "written by `emoflow stage train` has one)")
    return (*run_identity(provenance(d), d.name), pd.read_parquet(preds))


def run_identity(meta: dict[str, Any], dir_name: str) -> tuple[str, str]:
    """``(name, plan key)`` of a run from its provenance: :func:`run_label` (the directory's name without one)
    and ``plan_hash``, else ``fold_plan``."""
    key = str(meta.get("plan_hash") or meta.get("fold_plan") or "unknown plan")
    return run_label({**meta, "model": meta.get("model") or dir_name}), key


def provenance(d: Path) -> dict[str, Any]:
    """``run.json`` and ``metrics.json`` of a run directory, merged (either may be absent)."""
    metrics: dict[str, Any] = {}
    for name in ("run.json", "metrics.json"):  # provenance sits in run.json, in metrics.json in older runs
        if (d / name).is_file():
            try:
                metrics = {**metrics, **json.loads((d / name).read_text())}
            except json.JSONDecodeError as e:
                raise CompareError(f"{d / name}: unreadable ({e})") from None
    return metrics


def significance_markdown(results_dir: str | Path, n_boot: int = N_BOOT, seed: int = SEED) -> str:
    """The report section for every ``<results_dir>/<model>/predictions.parquet`` ("" when fewer than two)."""
    runs, model_of, twins = {}, {}, []
    for p in sorted(Path(results_dir).glob("*/predictions.parquet")):
        meta = provenance(p.parent)
        (name, key), df = run_identity(meta, p.parent.name), pd.read_parquet(p)
        if "pred" not in df.columns:  # a task: regression run has no class predictions to compare
            continue
        model_of[name] = meta.get("model") or name
        # a baseline on a plan whose folds equal its own plan's (the demo's loso and session_3_1_1) is listed once
        twin = next((n for n, (k, d) in runs.items()
                     if k == key and model_of[n] == model_of[name] and same_predictions(d, df)), None)
        if twin is not None:
            twins.append(f"{name}: the same model, test folds and predictions as {twin}, so it is paired once, "
                         f"as {twin}")
            continue
        runs[name] = (key, df)
    if len(runs) < 2:
        return ""
    comps, notes = pairwise(runs, n_boot, seed)
    return render_significance(comps, notes + twins)


def same_predictions(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two runs predicted the same class for the same (fold, utterance) rows."""
    cols = ["fold", "utt_id", "pred"] if "fold" in a.columns and "fold" in b.columns else ["utt_id", "pred"]
    if len(a) != len(b):
        return False
    sa, sb = (d[cols].sort_values(cols[:-1]).reset_index(drop=True) for d in (a, b))
    return bool(sa.astype(str).equals(sb.astype(str)))



def resolve_run(spec: str, results_dir: str | Path = "results") -> Path:
    """A directory holding ``predictions.parquet``: ``spec`` itself (a results or run directory), else the
    model ``spec`` under ``results_dir``."""
    for d in (Path(spec), Path(results_dir) / spec):
        if (d / "predictions.parquet").is_file():
            return d
    raise FileNotFoundError(f"{spec!r}: neither a directory with predictions.parquet nor a model under "
                            f"{results_dir}/ (run `dvc repro train@{spec}` or give a runs/<model>/<run>/ path)")


def split_rev(spec: str, rev: str | None = None) -> tuple[str, str | None]:
    """``(run, rev)`` of ``MODEL@REV`` (a model name or directory at a git revision or DVC experiment); a spec
    that exists as a local path keeps its ``@``. An explicit ``rev`` (``--rev-a``) wins over the suffix."""
    if rev is None and "@" in spec and not Path(spec).exists():
        spec, _, rev = spec.rpartition("@")
    return spec, rev or None


def _rev_dir(spec: str, results_dir: str | Path) -> str:
    """The repository-relative directory of ``spec`` at a revision: ``spec`` if it names a directory
    (contains ``/``), else ``<results_dir>/<spec>``."""
    return Path(spec).as_posix() if "/" in spec else (Path(results_dir) / spec).as_posix()


def _open_at_rev(path: str, rev: str, repo: str | None) -> bytes:
    import dvc.api

    with dvc.api.open(path, repo=repo, rev=rev, mode="rb") as f:
        return f.read()


def load_run_at_rev(spec: str, rev: str, results_dir: str | Path = "results",
                    repo: str | None = None) -> tuple[str, str, pd.DataFrame]:
    """:func:`load_run` of ``spec`` as committed at git revision or DVC experiment ``rev`` (read through
    ``dvc.api.open``: git-tracked files from git, DVC outputs from the local DVC cache or the remote)."""
    import io

    d = _rev_dir(spec, results_dir)
    preds = f"{d}/predictions.parquet"
    try:
        df = pd.read_parquet(io.BytesIO(_open_at_rev(preds, rev, repo)))
    except Exception as e:  # dvc raises many kinds (RevError, PathMissingError, FileNotFoundError, …)
        why = " ".join(f"{type(e).__name__}: {e}".split())
        raise CompareError(f"{preds} at revision {rev!r} could not be read ({why}); check the revision or "
                           "experiment name (`git log`, `dvc exp show`) and that its outputs are in the local DVC "
                           "cache (`dvc pull -r <remote>` or `dvc exp pull <remote> <exp>`)") from None
    metrics: dict[str, Any] = {}
    for name in ("run.json", "metrics.json"):
        try:
            metrics = {**metrics, **json.loads(_open_at_rev(f"{d}/{name}", rev, repo))}
        except Exception:  # provenance is optional, as in load_run
            continue
    return (*run_identity(metrics, Path(d).name), df)


def _load_spec(spec: str, rev: str | None, results_dir: str | Path, repo: str | None) -> tuple[str, str, pd.DataFrame]:
    if rev is None:
        return load_run(resolve_run(spec, results_dir))
    return load_run_at_rev(spec, rev, results_dir, repo)


def compare_runs(spec_a: str, spec_b: str | None = None, results_dir: str | Path = "results", n_boot: int = N_BOOT,
                 seed: int = SEED, *, rev_a: str | None = None, rev_b: str | None = None,
                 repo: str | None = None) -> tuple[Comparison, str]:
    """``emoflow compare A B``: the comparison of two runs and its text (intervals + verdict). ``A``/``B`` are
    run directories or model names, each optionally at a git revision or DVC experiment (``ilt@exp-abc12``, or
    ``rev_a``/``rev_b``); ``B`` defaults to ``A`` (two revisions of one model)."""
    if spec_b is None:
        if rev_a is None and rev_b is None:
            raise CompareError("give two runs A B, or one run with --rev-a/--rev-b (two revisions of it)")
        spec_b = spec_a
    (sa, ra), (sb, rb) = split_rev(spec_a, rev_a), split_rev(spec_b, rev_b)
    (na, ka, da), (nb, kb, db) = (_load_spec(s, r, results_dir, repo) for s, r in ((sa, ra), (sb, rb)))
    if na == nb:  # two runs of one model: name them by what the user typed (and the revision)
        na, nb = (s if r is None or s.endswith(f"@{r}") else f"{s}@{r}" for s, r in ((spec_a, ra), (spec_b, rb)))
    c = compare_frames(da, db, (na, nb), n_boot, seed)
    lines = [f"{na}: UA {_ci(c.ua_a)} %", f"{nb}: UA {_ci(c.ua_b)} %", verdict(c).replace("**", "")]
    if ka != kb:
        lines.append(f"note: the runs record different fold plans ({ka[:12]} vs {kb[:12]}) but were tested on the "
                     "same utterances")
    return c, "\n".join(lines)
