"""Every registered model: forward/backward, gradients, padding invariance, overfitting a tiny batch."""

import math
import time

import pytest
import torch
import torch.nn.functional as F

from models import create_model, example_batch, get_model_info, list_models, tiny_config

# (name, extra overrides on top of the tiny config): each model's tiny default plus the variants that the
# papers' ablations and options need to keep working.
VARIANTS = [(n, {}) for n in list_models()] + [
    ("ilt", {"fusion": "concat", "positional_encoding": True}),
    ("ilt", {"fusion": "plus"}),
    ("cat", {"cnn_to_lstm_only": True}),
    ("cat", {"lstm_to_cnn_only": True}),
    ("ks_transformer", {"ccab": 0}),
    ("ks_transformer", {"ccab": 1}),
    ("ks_transformer", {"ccab": 3}),
    ("ks_transformer", {"ccab": 4}),
    ("multilevel_transformer", {"combine": "concat"}),
    ("rlc", {"use_text": True, "text_dim": 12, "text_hidden": 8, "gca_iterations": 2}),
    ("rlc", {"sa_sigmoid": True, "strides": (2, 2, 1)}),
    ("head_fusion", {"attention": "elementwise"}),
]
IDS = [n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in VARIANTS]

# Parameters that legitimately get no gradient from one backward pass (none so far). Keep this explicit:
# a parameter missing from the graph is usually a wiring bug.
NO_GRAD_OK: dict[str, set[str]] = {}


def _build(name, extra, seed=0, batch_size=3):
    cfg = tiny_config(name, **extra)
    model = create_model(name, **cfg)
    return model, example_batch(name, batch_size=batch_size, seed=seed, **cfg)


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_forward_backward_and_gradients(name, extra):
    model, batch = _build(name, extra)
    model.train()
    logits = model(**batch)
    assert logits.shape == (3, 4)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    missing = []
    for pname, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"non-finite grad in {pname}"
        if (p.grad is None or p.grad.abs().sum() == 0) and pname not in NO_GRAD_OK.get(name, set()):
            missing.append(pname)
    assert not missing, f"{name}: parameters with no gradient: {missing}"


def _masked_inputs(name, extra):
    specs = get_model_info(name).input_specs(**tiny_config(name, **extra))
    return {k: s for k, s in specs.items() if s.mask_key is not None}


def _item_alone(batch, specs, i):
    """Item ``i`` of ``batch`` cut to its own lengths (what the dataset would give for a batch of one)."""
    out = {k: v[i : i + 1] for k, v in batch.items()}
    for key, spec in specs.items():
        n = int((~out[spec.mask_key][0]).sum())
        out[key] = out[key][:, :n]
        if spec.kind == "sequence" or key == spec.mask_key:
            out[spec.mask_key] = out[spec.mask_key][:, :n]
        if spec.kind == "phonemes":
            p = int((out[key] != 0).sum(-1).max())
            out[key] = out[key][:, :, :p]
    return out


def _with_garbage_padding(batch, specs, extra_steps=5):
    """Longer padding filled with large random values (and pad ids for phonemes): masks must hide it."""
    out = dict(batch)
    for key, spec in specs.items():
        x, m = out[key], out[spec.mask_key]
        B = x.size(0)
        if spec.kind == "phonemes":
            x = torch.cat([x, x.new_zeros(B, extra_steps, x.size(2))], dim=1)
            out[key] = torch.cat([x, x.new_zeros(B, x.size(1), 2)], dim=2)  # more phoneme padding too
            continue
        x = torch.cat([x, x.new_zeros(B, extra_steps, *x.shape[2:])], dim=1)
        m = torch.cat([m, m.new_ones(B, extra_steps)], dim=1)
        x = torch.where(m.view(B, -1, *([1] * (x.dim() - 2))), 100 * torch.randn_like(x), x)
        out[key], out[spec.mask_key] = x, m
    return out


PADDED = [(n, o) for n, o in VARIANTS if _masked_inputs(n, o)]


@pytest.mark.parametrize(
    ("name", "extra"), PADDED, ids=[i for i, v in zip(IDS, VARIANTS, strict=True) if v in PADDED]
)
def test_padding_invariance(name, extra):
    model, batch = _build(name, extra, seed=1, batch_size=3)
    model.eval()
    specs = _masked_inputs(name, extra)
    assert any(bool(batch[s.mask_key].any()) for s in specs.values()), "example batch must contain padding"
    with torch.no_grad():
        together = model(**batch)
        for i in range(3):
            alone = model(**_item_alone(batch, specs, i))
            torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=1e-4)
        garbage = model(**_with_garbage_padding(batch, specs))
    torch.testing.assert_close(garbage, together, atol=1e-5, rtol=1e-4)


def test_head_fusion_is_fixed_length():
    # documented exception: 2 s segments have no padding, so the model takes no mask
    assert not _masked_inputs("head_fusion", {})


# RLC's GCA loop is a Python loop over steps: a gentler lr converges in fewer (slow) steps
OVERFIT_LR = {"rlc": 3e-3}


@pytest.mark.parametrize("name", list_models())
def test_overfits_tiny_batch(name):
    torch.manual_seed(0)
    n = 8
    cfg = tiny_config(name)
    # dropout off: we test that the architecture can fit, not regularisation
    for k in list(get_model_info(name).config_cls.__dataclass_fields__):
        if "dropout" in k:
            cfg[k] = 0.0
    model = create_model(name, **cfg).train()
    batch = example_batch(name, batch_size=n, seed=3, **cfg)
    y = torch.arange(n) % 4
    opt = torch.optim.Adam(model.parameters(), lr=OVERFIT_LR.get(name, 1e-2))
    start, loss = time.time(), None
    for _ in range(150):
        opt.zero_grad()
        loss = F.cross_entropy(model(**batch), y)
        loss.backward()
        opt.step()
        if loss.item() < 0.3:
            break
    assert loss.item() < 0.25 * math.log(4), f"{name}: loss {loss.item():.3f} after training"
    assert time.time() - start < 20
