"""A markdown table of the seed-ensemble rows ``benchmarks.pilot`` appended under one tag: each model's seeds,
their pooled UAs, the ensemble's pooled UA and its paired comparison (``--against`` when the pilot ran).

    python -m benchmarks.pilot_table --tag distill_t4_tov [--models ilt cat ...] [--file benchmarks/results/pilots_ravdess.json]
    python -m benchmarks.pilot_table --by-tag --tag hf_width_n32_s678 hf_width_n64_s678   # two arms side by side

The README's tables of pilot results are printed by this, from the committed JSON; nothing is recomputed.
A tag with several ensemble rows for one model (a pilot read back twice) keeps the last; so do several tags,
unless ``--by-tag``: then one row per (tag, model), in the order of ``--tag``, with the tag and the mean over
the ensemble's seeds of each seed row's mean validation UA (what the declared rules compare; "—" where a seed
has no validation figure, e.g. a run read back with ``--ensemble-with``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensemble_rows(rows: list[dict], tags: list[str], models: list[str] | None = None,
                  by_tag: bool = False) -> list[dict]:
    """The last ``seed_ensemble`` row of each model under any of ``tags`` (``by_tag``: of each tag and model,
    tags in ``tags``' order), in ``models``' order (default: the order the models first appear); a model in
    ``models`` without a row is left out."""
    last: dict[tuple[str, str], dict] = {}
    for row in rows:
        if row.get("tag") in tags and row.get("kind") == "seed_ensemble":
            last[(row["tag"] if by_tag else "", row["model"])] = row
    if not last:
        raise SystemExit(f"no seed_ensemble rows tagged {' or '.join(map(repr, tags))}: run benchmarks.pilot "
                         "with --seeds and this --tag")
    order = models or list(dict.fromkeys(m for _, m in last))
    return [last[(t, m)] for t in (tags if by_tag else [""]) for m in order if (t, m) in last]


def seed_val_mean(rows: list[dict], ensemble: dict) -> float | None:
    """Mean over ``ensemble``'s seeds of each seed row's ``val_ua_mean`` (the last row of each seed under the
    same tag and model); None when a seed has no such row or figure."""
    per_seed = {r.get("seed"): r.get("val_ua_mean") for r in rows
                if r.get("tag") == ensemble["tag"] and r.get("model") == ensemble["model"] and r.get("kind") is None}
    vals = [per_seed.get(s) for s in ensemble.get("seeds") or []]
    # a run read back with --ensemble-with has a pooled UA but no seed row: no figure
    if not vals or None in vals or len(vals) != len(ensemble.get("seed_ua_pooled") or []):
        return None
    return sum(vals) / len(vals)


def _delta(row: dict) -> list[str]:
    from benchmarks.accuracy import verdict_cells

    a = row.get("against")
    if not a:
        return verdict_cells(None)
    d = a["ua_diff"]
    return verdict_cells((d["point"], d["lo"], d["hi"], d["resolved"], a["mcnemar_p"]))


def markdown(rows: list[dict], against_name: str = "classical", val_means: list[float | None] | None = None) -> str:
    """One line per ensemble row: model, seeds, each seed's pooled UA (the ``--ensemble-with`` files' last),
    their mean, the ensemble's pooled UA and WA, and the paired comparison; with ``val_means`` (``--by-tag``)
    the tag and the seeds' mean validation UA first."""
    head = ["model", "seeds", "UA pooled per seed", "seed mean", "ensemble UA pooled", "ensemble WA pooled",
            f"Δ UA vs {against_name} [95 % CI]", "resolved", "McNemar p (accuracy)"]
    if val_means is not None:
        head[1:1] = ["tag", "mean validation UA of the seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, v in zip(rows, val_means or [None] * len(rows), strict=True):
        cells = [f"`{r['model']}`", str(len(r["seed_ua_pooled"])), " / ".join(f"{u:.3f}" for u in r["seed_ua_pooled"]),
                 f"{r['seed_ua_mean']:.3f}", f"**{r['ua_pooled']:.3f}**", f"{r['wa_pooled']:.3f}", *_delta(r)]
        if val_means is not None:
            cells[1:1] = [f"`{r['tag']}`", "—" if v is None else f"{100 * v:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", required=True, nargs="+", help="one or more tags (a model's last row among them)")
    ap.add_argument("--file", type=Path, default=ROOT / "benchmarks" / "results" / "pilots_ravdess.json")
    ap.add_argument("--against-name", default="classical", help="what the rows' --against predictions were")
    ap.add_argument("--models", nargs="*", default=None, help="rows in this order (default: as in the file)")
    ap.add_argument("--by-tag", action="store_true", help="one row per tag and model, with the seeds' mean "
                    "validation UA (arms of a declared check side by side)")
    args = ap.parse_args(argv)
    all_rows = json.loads(args.file.read_text())
    rows = ensemble_rows(all_rows, args.tag, args.models, args.by_tag)
    table = markdown(rows, args.against_name, [seed_val_mean(all_rows, r) for r in rows] if args.by_tag else None)
    print(table)
    return table


if __name__ == "__main__":
    main()
