"""Training throughput (samples/s) of every registered model on CPU, at realistic input sizes.

    python -m benchmarks.train [--models ilt ks_transformer ...] [--threads 1] [--repeats 5] [--warmup 2]
                               [--batch-size N] [--tiny] [--out benchmarks/results/train.json]

* Inputs: built from each model's ``input_specs`` (the same batch keys, dtypes and masks as
  ``models.example_batch``) at the lengths an average IEMOCAP utterance (~4.5 s, ~12 words) gives with the
  project's features: logmel40 pad/cut to 750 frames (paper A), wav2vec2 225 frames (20 ms), RoBERTa 20 tokens
  (paper B caps), fbank128 375 frames (12 ms hop), 12 words × 6 phonemes and GloVe rows, lld17 900 frames (5 ms),
  mfcc13 one 2 s window (63 frames). Item 0 has the full length, the others a seeded random 35–100 % of it, so
  masks and padding cost what they cost on real, mixed-length batches (for some models far more than a batch of
  equal lengths: tiny ILT trains ~6× faster on unpadded batches than on mixed ones).
* Models: paper-size defaults (``--tiny``: the tiny presets, for smoke runs), the paper's batch size from the
  model's train settings (``--batch-size`` overrides) and its optimiser (pipeline.training.train.build_optimizer).
* Timing: one step = forward, cross-entropy, backward, optimiser step. ``--warmup`` steps are excluded (first-call
  allocation, oneDNN kernel selection); then ``--repeats`` steps are timed and the **median** step gives
  ``samples_per_s = batch / median``. ``--threads`` sets ``torch.set_num_threads`` (default 1: comparable across
  machines and fair on a shared box). The machine's load average is recorded at start and end: on a shared
  machine compare only runs at similar load. ``--deterministic`` times with deterministic kernels, as training
  runs by default (``train.deterministic``); the difference is the price of bit-exact reproducibility.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks import _machine
except ImportError:  # run as a file (python benchmarks/x.py) rather than python -m benchmarks.x
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import _machine

#: frames/tokens per input feature for an average IEMOCAP utterance (see the module docstring)
LENGTHS = {
    "logmel40": 750,
    "wav2vec2": 225,
    "roberta": 20,
    "fbank128": 375,
    "lld17": 900,
    "mfcc13": 63,
    "glove": 12,
    "word2vec": 12,
    "phonemes": 12,
}
PHONES_PER_WORD = 6


def machine_info() -> dict[str, Any]:
    import torch

    cpu_model = _machine.cpu_model()
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
    }
    try:
        info["loadavg_1m_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def realistic_batch(name: str, batch_size: int, overrides: dict[str, Any], seed: int = 0):
    """A batch for model ``name`` at realistic lengths, shaped like ``models.example_batch``; plus labels."""
    import torch

    from models import example_batch, get_model_info, make_config

    info = get_model_info(name)
    cfg = make_config(name, **overrides)
    specs = info.input_specs(**overrides)
    ref = example_batch(name, batch_size=2, **overrides)  # dims, dtypes and which inputs are fixed-size
    gen = torch.Generator().manual_seed(seed)
    lengths_by_mask: dict[str, torch.Tensor] = {}
    batch: dict[str, torch.Tensor] = {}
    for key, spec in specs.items():
        full = LENGTHS.get(spec.feature, ref[key].shape[1] if ref[key].dim() > 2 else 1)
        if spec.mask_key is None and spec.kind == "sequence":
            full = ref[key].shape[1]  # a fixed-size window (paper E)
        lengths = lengths_by_mask.get(spec.mask_key or key)
        if lengths is None:
            # real batches mix lengths (IEMOCAP turns run ~1–15 s): item 0 full, the rest 35–100 % of it
            frac = 0.35 + 0.65 * torch.rand(batch_size, generator=gen)
            lengths = (frac * full).long().clamp(min=1)
            lengths[0] = full
            lengths_by_mask[spec.mask_key or key] = lengths
        T = int(lengths.max())
        mask = torch.arange(T)[None, :] >= lengths[:, None]
        if spec.kind == "vector":
            batch[key] = torch.randn(batch_size, ref[key].shape[-1], generator=gen)
            continue
        if spec.kind == "phonemes":
            vocab = int(getattr(cfg, spec.dim_param))
            x = torch.randint(1, vocab, (batch_size, T, PHONES_PER_WORD), generator=gen)
            batch[key] = x.masked_fill(mask[..., None], 0)
        else:
            x = torch.randn(batch_size, T, ref[key].shape[-1], generator=gen)
            batch[key] = x.masked_fill(mask[..., None], 0.0)
        if spec.mask_key:
            batch[spec.mask_key] = mask
    labels = torch.randint(0, 4, (batch_size,), generator=gen)
    return batch, labels


def bench_one(name: str, *, batch_size: int | None, tiny: bool, warmup: int, repeats: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from models import create_model, get_model_info, tiny_config
    from pipeline.training.train import build_optimizer, resolve_train_config

    info = get_model_info(name)
    overrides = tiny_config(name) if tiny else {}
    cfg = resolve_train_config(info.train)
    bs = int(batch_size or cfg["batch_size"])
    torch.manual_seed(0)
    model = create_model(name, **overrides).train()
    opt = build_optimizer(model.parameters(), cfg)
    batch, y = realistic_batch(name, bs, overrides)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(**batch), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for _ in range(warmup):
        step()
    times = [step() for _ in range(repeats)]
    med = statistics.median(times)
    return {
        "batch_size": bs,
        "params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "input_shapes": {k: list(v.shape) for k, v in batch.items()},
        "step_s_median": med,
        "step_s_all": times,
        "samples_per_s": bs / med,
        "optimizer": cfg["optimizer"],
        "tiny": tiny,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--deterministic", action="store_true",
                    help="torch.use_deterministic_algorithms(True) as training does by default (slower on CPU)")
    ap.add_argument("--out", default="benchmarks/results/train.json")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    from models import list_models

    info = machine_info()
    results: dict[str, Any] = {}
    for name in args.models or list_models():
        try:
            r = bench_one(name, batch_size=args.batch_size, tiny=args.tiny, warmup=args.warmup,
                          repeats=args.repeats)
            print(f"{name:24s} batch {r['batch_size']:4d}  {r['samples_per_s']:9.1f} samples/s  "
                  f"(median step {r['step_s_median'] * 1000:.0f} ms, {r['params'] / 1e6:.2f} M params)", flush=True)
        except Exception as e:  # one broken model must not hide the others' numbers
            r = {"error": f"{type(e).__name__}: {e}"}
            print(f"{name:24s} FAILED: {r['error']}", flush=True)
        results[name] = r
    try:
        info["loadavg_1m_at_end"] = os.getloadavg()[0]
    except OSError:
        pass
    out = {
        "benchmark": "train_step_throughput_cpu",
        "machine": info,
        "settings": {"threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
                     "batch_size": args.batch_size, "tiny": args.tiny, "deterministic": args.deterministic,
                     "lengths": LENGTHS},
        "models": results,
    }
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
