"""The comparison report: every model's cross-validated WA/UA next to its paper's published numbers.

:func:`write_report` reads ``<results_dir>/*/{metrics,run}.json`` (written by the ``cross_validate`` flow) and writes
one Markdown table. A result is put beside the paper's numbers only when it is comparable: IEMOCAP, the paper's
fold plan, no random-weight encoders. Any other result (the demo corpus above all) shows "—" in the paper
columns and a flag saying why, so a test-bed number is never read as a reproduction.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from pipeline.orchestration.results import load_result, run_label


def _pm(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None or not math.isfinite(stat["mean"]):
        return "—"
    std = stat.get("std")
    return f"{stat['mean']:.2f} ± {std:.2f}" if std is not None and math.isfinite(std) else f"{stat['mean']:.2f}"


def _num(x: Any) -> str:
    return "—" if x is None else f"{float(x):.2f}"


def load_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``<results_dir>/<run>/`` with a ``metrics.json`` (scores) joined with its ``run.json``
    (provenance), sorted by run name; unreadable files raise naming them."""
    out = []
    for path in sorted(Path(results_dir).glob("*/metrics.json")):
        m = load_result(path.parent)
        m.setdefault("model", path.parent.name)
        out.append(m)
    return sorted(out, key=run_label)


def flags(m: dict[str, Any]) -> list[str]:
    """Why a result must not be compared with its paper (empty = comparable)."""
    out = list(m.get("not_comparable_because") or [])
    corpus = str(m.get("corpus") or "unknown")
    if corpus.lower() != "iemocap" and not any("corpus" in f for f in out):
        out.append(f"corpus is {corpus!r}, the papers used IEMOCAP")
    rw = m.get("random_weights_features") or []
    if rw and not any("random-weight" in f for f in out):
        out.append(f"random-weight encoders: {', '.join(rw)}")
    return out


def render_report(results: list[dict[str, Any]]) -> str:
    """The Markdown report for a list of ``metrics.json`` dicts."""
    lines = [
        "# emoflow results",
        "",
        "Test metrics in %, mean ± std over the folds of each paper's fold plan (model selection on the "
        "validation split only). Paper columns are filled only for comparable runs; ⚠ marks runs that are not "
        "comparable with the paper (the reasons are listed below the table).",
        "",
        "| model | corpus | WA (ours) | UA (ours) | macro-F1 | WA (paper) | UA (paper) | protocol | folds | features "
        "| runtime (s) | flag |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for m in results:
        why = flags(m)
        paper = m.get("paper") or {}
        comparable = not why
        feats = m.get("features") or {}
        feat_names = ", ".join(
            f"{n}{' (random weights)' if (p or {}).get('random_weights') else ''}" for n, p in feats.items()
        )
        runtime = m.get("runtime_s")
        lines.append(
            "| {model} | {corpus} | {wa} | {ua} | {f1} | {pwa} | {pua} | {protocol} | {plan} ({n}) | {feats} | {rt} "
            "| {flag} |".format(
                model=run_label(m),
                corpus=m.get("corpus", "unknown"),
                wa=_pm(m.get("wa")),
                ua=_pm(m.get("ua")),
                f1=_pm(m.get("macro_f1")),
                pwa=_num(paper.get("wa")) if comparable else "—",
                pua=_num(paper.get("ua")) if comparable else "—",
                protocol=(paper.get("protocol") or m.get("protocol") or "").replace("|", "/"),
                plan=m.get("fold_plan", ""),
                n=m.get("n_folds", ""),
                feats=feat_names,
                rt=f"{runtime:.0f}" if isinstance(runtime, (int, float)) else "—",
                flag="" if comparable else "⚠ not comparable",
            )
        )
        if why:
            notes.append(f"- **{run_label(m)}**: " + "; ".join(why) + ".")
    lines += dimensional_section(results)
    if notes:
        lines += ["", "## Not comparable with the papers", "", *notes]
        lines += ["", "## Published numbers (reference only, IEMOCAP)", "", "| model | WA | UA | paper row | paper |",
                  "|---|---|---|---|---|"]
        for m in results:
            if flags(m):
                p = m.get("paper") or {}
                lines.append(f"| {run_label(m)} | {_num(p.get('wa'))} | {_num(p.get('ua'))} | {p.get('row') or ''} "
                             f"| {p.get('title') or ''} |")
        if any("demo" in n for n in notes):
            lines += ["", "The demo corpus is a synthetic test bed for the pipeline: its numbers say nothing "
                      "about how well a model recognises emotion and are never comparable with the papers'."]
    return "\n".join(lines) + "\n"


def dimensional_section(results: list[dict[str, Any]]) -> list[str]:
    """Report lines for the runs with V/A/D targets (none: no lines): CCC mean ± std over folds and pooled,
    pooled Pearson's r and MAE, one row per model and dimension."""
    rows = [m for m in results if m.get("dimensional")]
    if not rows:
        return []

    def f(v):
        return "—" if v is None or not math.isfinite(v) else f"{v:.3f}"

    lines = ["", "## Dimensional targets", "",
             "Test CCC (Lin's concordance correlation), mean ± std over folds and pooled over every fold's test "
             "predictions; Pearson's r and MAE pooled (MAE in the corpus' rating unit, IEMOCAP 1–5).", "",
             "| model | corpus | task | dimension | CCC (mean ± std) | CCC (pooled) | Pearson r | MAE |",
             "|---|---|---|---|---|---|---|---|"]
    for m in rows:
        task = (m.get("train") or {}).get("task", "")
        for dim, s in m["dimensional"].items():
            c = s["ccc"]
            lines.append(f"| {run_label(m)} | {m.get('corpus', 'unknown')} | {task} | {dim} | {f(c.get('mean'))} ± "
                         f"{f(c.get('std'))} | {f(c.get('pooled'))} | {f(s['pearson'].get('pooled'))} "
                         f"| {f(s['mae'].get('pooled'))} |")
    return lines


def write_report(results_dir: str | Path, out_md: str | Path) -> Path:
    """Write the report for every model under ``results_dir`` to ``out_md`` (atomic); returns its path."""
    results = load_results(results_dir)
    text = render_report(results) if results else "# emoflow results\n\nNo results yet: run `dvc repro`.\n"
    if results:  # intervals and pairwise verdicts from the pooled test predictions (pipeline/orchestration/compare.py)
        from pipeline.orchestration.compare import significance_markdown

        text += significance_markdown(results_dir)
    out = Path(out_md)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out
