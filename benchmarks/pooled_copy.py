"""A two-frame copy of a frame-level encoder feature whose mean+std pooling equals the original's.

    python -m benchmarks.pooled_copy SRC.h5 DST.h5

The ``train.distill`` teacher reads an encoder feature only through its layer mean (uniform layer weights, as a
closed-form fit leaves them) followed by mean and standard deviation over the valid frames
(:meth:`models.baselines.Probe.pool`), with no input normalisation. For each utterance this writes the two frames
``m + s`` and ``m − s`` (in every layer), where ``m`` and ``s`` are the original's per-dimension mean and
standard deviation over frames of its layer mean: their mean is ``m`` and their standard deviation ``s``, so the
teacher sees the same pooled vectors (to float32 rounding: the copy is float32 whatever the original's dtype).
On RAVDESS the copy is 20 MB (2.4 MB compressed) where the Whisper file is 852 MB: small enough to travel to a
machine with no copy of the encoder's weights.

What reads more than that pooling sees something else, and the copy says so in its provenance (``pooled_copy``):
the gradient-trained probe (learned layer weights), a model on frame sequences, and, approximately, the
closed-form probe under ``normalize: fold``, which standardises each layer before the layer mean (RAVDESS 4-class:
pooled UA 0.809 on the copy, 0.815 on the original; the teacher's per-fold regularisation picks matched in 4 of 6
folds, its cross-fitted training UA within 1.6 points).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def two_frames(frames: np.ndarray) -> np.ndarray:
    """``(T, L, D)`` or ``(T, D)`` frames → ``(2, L, D)`` / ``(2, D)`` float32: ``m ± s`` of the layer mean, copied
    to every layer, so that its layer mean's mean and (population) std over frames equal the original's.

    >>> x = np.random.default_rng(0).normal(size=(50, 3, 4))
    >>> y = two_frames(x)
    >>> y.shape, np.allclose(y.mean(1).mean(0), x.mean(1).mean(0)), np.allclose(y.mean(1).std(0), x.mean(1).std(0))
    ((2, 3, 4), True, True)
    """
    x = frames.astype(np.float64)
    layer_mean = x.mean(axis=1) if x.ndim == 3 else x
    m, s = layer_mean.mean(axis=0), layer_mean.std(axis=0)
    pair = np.stack([m + s, m - s])
    if x.ndim == 3:
        pair = np.repeat(pair[:, None, :], x.shape[1], axis=1)
    return pair.astype(np.float32)  # m ± s in float16 would lose s where |m| ≫ s


def pooled_copy(src: str | Path, dst: str | Path) -> int:
    """Write :func:`two_frames` of every utterance of the feature file ``src`` to ``dst`` (same attributes and
    source checksums, provenance marked ``pooled_copy``); returns the number of utterances."""
    from features.store import FeatureReader, FeatureWriter

    src, dst = Path(src), Path(dst)
    reader = FeatureReader(src)
    meta = reader.meta
    meta.provenance = {**meta.provenance, "pooled_copy": (
        f"two frames per utterance (m ± s of the layer mean) written by benchmarks.pooled_copy from {src.name}: "
        "mean+std pooling of the layer mean equals the original's; the frames themselves do not")}
    wanted = reader.checksums()
    with FeatureWriter(dst, meta) as writer:
        todo = writer.plan(wanted)
        for i in range(0, len(todo), 64):
            batch = todo[i : i + 64]
            writer.write_batch({u: two_frames(reader[u]) for u in batch}, {u: wanted[u] for u in batch})
        writer.commit(wanted)
    reader.close()
    return len(wanted)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    a = ap.parse_args(argv)
    n = pooled_copy(a.src, a.dst)
    print(f"{a.dst}: {n} utterances, two frames each (pooled copy of {a.src})")


if __name__ == "__main__":
    main()
