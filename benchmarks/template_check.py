"""params.ravdess.yaml used as the template for *another* corpus, the way the README tells a user to: a smaller
corpus with its own label names and no gender column, built from RAVDESS actors 1-12 (half the speakers; the
corpus is only read, never copied), then the accuracy benchmark on it.

    python -m benchmarks.template_check [--actors 12] [--workdir .emoflow/template-check] \
        [--out benchmarks/results/accuracy_template_check.json] [-- extra benchmarks.accuracy options]

It writes ``<workdir>/corpus/corpus.csv`` (``path,label,speaker``; labels ``angry/happy/neutral/sad``) and
``<workdir>/corpus/params.yaml`` (the RAVDESS file with the README's edits: ``dataset`` block, ``balance: null``),
then runs ``benchmarks.accuracy`` with that params file. What it checks is the template path and how the
small-corpus settings, chosen at 504 training utterances per fold, hold at about half that.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import main as accuracy_main  # noqa: E402
from benchmarks.accuracy import set_params  # noqa: E402

LABELS = {"neu": "neutral", "hap": "happy", "ang": "angry", "sad": "sad"}


def write_corpus(ravdess: Path, actors: int, out_dir: Path) -> Path:
    """RAVDESS's 4-class utterances of actors 1..``actors`` as a user's table: absolute paths, own label names,
    speaker ids, no gender or transcript. Returns the CSV's path."""
    manifest = ravdess / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(f"RAVDESS not found at {ravdess} (set EMOFLOW_RAVDESS to the folder holding manifest.csv)")
    with manifest.open(newline="") as f:
        rows = [{"path": str((ravdess / r["path"]).resolve()), "label": LABELS[r["label"]], "speaker": f"spk{r['speaker']}"}
                for r in csv.DictReader(f) if r["label"] in LABELS and int(r["speaker"]) <= actors]
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "corpus.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        w.writeheader()
        w.writerows(rows)
    return out


def write_params(template: Path, corpus_csv: Path) -> Path:
    """The template with the README's edits for another corpus."""
    import yaml

    params = set_params(yaml.safe_load(template.read_text()), [
        f"dataset.root={corpus_csv.parent}", "dataset.corpus=template-check",
        "dataset.options={file: corpus.csv, label_map: {angry: ang, happy: hap, neutral: neu, sad: sad}, "
        "unknown_label: drop, jobs: 2}",
        "folds.options.group_kfold.balance=null",  # no gender column
    ])
    out = corpus_csv.parent / "params.yaml"
    out.write_text(yaml.safe_dump(params, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actors", type=int, default=12)
    ap.add_argument("--ravdess", type=Path,
                    default=Path(os.environ.get("EMOFLOW_RAVDESS", ROOT.parent / "shared" / "corpora" / "ravdess")))
    ap.add_argument("--workdir", type=Path, default=Path(".emoflow/template-check"))
    ap.add_argument("--out", default="benchmarks/results/accuracy_template_check.json")
    args, rest = ap.parse_known_args(argv)
    workdir = args.workdir.resolve()
    params = write_params(ROOT / "params.ravdess.yaml", write_corpus(args.ravdess, args.actors, workdir / "corpus"))
    rest = [a for a in rest if a != "--"]
    return accuracy_main(["--params", str(params), "--workdir", str(workdir / "bench"), "--out", args.out, *rest])


if __name__ == "__main__":
    main()
