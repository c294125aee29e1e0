#!/usr/bin/env bash
# Packs what benchmarks/gpu_accuracy.sh needs on a GPU machine that reaches no package index and has neither the
# corpus nor Whisper's weights, under .devdata/ (git-ignored; about 50 MB, under the 64 MiB a lent machine takes):
#   site312.txz     benchmarks/gpu_requirements.txt as CPython 3.12 manylinux wheels, installed into one folder
#                   (Prefect's web UI assets dropped: the benchmark runs with PREFECT_UI_ENABLED=false)
#   ravdess4.tar    the four-class RAVDESS utterances (neu/hap/ang/sad, 672 files) and their manifest.csv
#   whisper.h5.xz   benchmarks.pooled_copy of WORKDIR's Whisper feature (see gpu_accuracy.sh)
# Usage: bash benchmarks/gpu_prepare.sh [WORKDIR with data/features/whisper.h5] [CORPUS]
set -euo pipefail
WORKDIR=${1:-.emoflow/bench-ravdess}
CORPUS=${2:-../shared/corpora/ravdess}
PY=${PYTHON:-.venv/bin/python}
mkdir -p .devdata
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PLAT="--python-version 3.12 --implementation cp --only-binary=:all:"
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1 manylinux_2_5; do
  PLAT="$PLAT --platform ${p}_x86_64"
done
$PY -m pip download -q --no-deps $PLAT -d "$TMP/whl" -r benchmarks/gpu_requirements.txt
$PY -m pip install -q --no-deps --no-compile $PLAT --target "$TMP/site312" "$TMP"/whl/*.whl
rm -rf "$TMP/site312/prefect/server/ui" "$TMP/site312/prefect/server/ui-v2"
tar cJf .devdata/site312.txz -C "$TMP" site312
$PY - "$CORPUS" "$TMP/ravdess4" <<'PY'
import csv, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
rows = [r for r in csv.DictReader(open(src / "manifest.csv")) if r["label"] in ("neu", "hap", "ang", "sad")]
for r in rows:
    (dst / r["path"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / r["path"], dst / r["path"])
with open(dst / "manifest.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
print(f"{len(rows)} utterances → {dst}")
PY
tar cf .devdata/ravdess4.tar -C "$TMP/ravdess4" .
$PY -m benchmarks.pooled_copy "$WORKDIR/data/features/whisper.h5" "$TMP/whisper.h5"
xz -T0 -c "$TMP/whisper.h5" > .devdata/whisper.h5.xz
du -ch .devdata/*
