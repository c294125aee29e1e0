"""A markdown table of the seed-ensemble rows ``benchmarks.pilot`` appended under one tag: each model's seeds,
their pooled UAs, the ensemble's pooled UA and its paired comparison (``--against`` when the pilot ran).

    python -m benchmarks.pilot_table --tag distill_t4_tov [--models ilt cat ...] [--file benchmarks/results/pilots_ravdess.json]

The README's tables of pilot results are printed by this, from the committed JSON; nothing is recomputed.
A tag with several ensemble rows for one model (a pilot read back twice) keeps the last; so do several tags.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensemble_rows(rows: list[dict], tags: list[str], models: list[str] | None = None) -> list[dict]:
    """The last ``seed_ensemble`` row of each model under any of ``tags``, in ``models``' order (default: the
    order the models first appear); a model in ``models`` without a row is left out."""
    last: dict[str, dict] = {}
    for row in rows:
        if row.get("tag") in tags and row.get("kind") == "seed_ensemble":
            last[row["model"]] = row
    if not last:
        raise SystemExit(f"no seed_ensemble rows tagged {' or '.join(map(repr, tags))}: run benchmarks.pilot "
                         "with --seeds and this --tag")
    return [last[m] for m in (models or last) if m in last]


def _delta(row: dict) -> list[str]:
    from benchmarks.accuracy import verdict_cells

    a = row.get("against")
    d = a and a["ua_diff"]
    return verdict_cells(a and (d["point"], d["lo"], d["hi"], d["resolved"], a["mcnemar_p"]) or None)


def markdown(rows: list[dict], against_name: str = "classical") -> str:
    """One line per ensemble row: model, seeds, each seed's pooled UA (the ``--ensemble-with`` files' last),
    their mean, the ensemble's pooled UA and WA, and the paired comparison."""
    head = ["model", "seeds", "UA pooled per seed", "seed mean", "ensemble UA pooled", "ensemble WA pooled",
            f"Δ UA vs {against_name} [95 % CI]", "resolved", "McNemar p (accuracy)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['model']}`", str(len(r["seed_ua_pooled"])), " / ".join(f"{u:.3f}" for u in r["seed_ua_pooled"]),
                 f"{r['seed_ua_mean']:.3f}", f"**{r['ua_pooled']:.3f}**", f"{r['wa_pooled']:.3f}", *_delta(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", required=True, nargs="+", help="one or more tags (a model's last row among them)")
    ap.add_argument("--file", type=Path, default=ROOT / "benchmarks" / "results" / "pilots_ravdess.json")
    ap.add_argument("--against-name", default="classical", help="what the rows' --against predictions were")
    ap.add_argument("--models", nargs="*", default=None, help="rows in this order (default: as in the file)")
    args = ap.parse_args(argv)
    rows = ensemble_rows(json.loads(args.file.read_text()), args.tag, args.models)
    table = markdown(rows, args.against_name)
    print(table)
    return table


if __name__ == "__main__":
    main()
