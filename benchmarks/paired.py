"""Paired comparisons of finished runs (``emoflow compare`` on each pair), written to one JSON file.

    python -m benchmarks.paired --out benchmarks/results/distill_paired_ravdess.json \\
        --pair "ilt: distilled vs not" .emoflow/ws-a/results/ilt .emoflow/ws-b/results-no-distill/ilt ...

Each pair is two run directories (``predictions.parquet`` + ``metrics.json``) over the same utterances, e.g. a
model's benchmark row and its variant row from two workspaces of ``benchmarks/accuracy.py``. Per pair: both UA
intervals, the paired bootstrap of the UA difference (A − B), McNemar on accuracy — what ``emoflow compare
--json`` prints, with the directories it read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.accuracy import machine_info


def compare_pairs(pairs: list[tuple[str, str, str]], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """``[(label, run_a, run_b), ...]`` → one ``emoflow compare`` result per pair, labelled."""
    from pipeline.orchestration.compare import compare_runs

    out = []
    for label, a, b in pairs:
        comparison, text = compare_runs(a, b, n_boot=n_boot, seed=seed)
        out.append({"label": label, "run_a": a, "run_b": b, **comparison.to_dict(), "text": text})
        print(f"{label}: {text.splitlines()[-1]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--pair", nargs=3, action="append", required=True, metavar=("LABEL", "RUN_A", "RUN_B"),
                    help="a pair to compare (repeat the option for more)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    result = {"benchmark": "paired comparisons of finished runs (emoflow compare)", "machine": machine_info(),
              "n_boot": args.n_boot, "seed": args.seed,
              "pairs": compare_pairs([tuple(p) for p in args.pair], args.n_boot, args.seed)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
