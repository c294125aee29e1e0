"""GCA-LSTM (Li et al. 2019, eq. 9-12) on hand-computed cases."""

import math

import pytest
import torch

from models.rlc import GCALSTM, GCALSTMCell, informativeness_gate


def test_gate_is_min_max_normalised_softmax():
    e = torch.tensor([[0.0, math.log(2.0), math.log(4.0)]])  # softmax = [1, 2, 4] / 7
    torch.testing.assert_close(informativeness_gate(e, None), torch.tensor([[0.0, 1 / 3, 1.0]]))


def test_gate_range_padding_and_constant_scores():
    torch.manual_seed(0)
    e = 5 * torch.randn(4, 9)
    mask = torch.zeros(4, 9, dtype=torch.bool)
    mask[1, 6:] = True
    mask[2, 2:] = True
    r = informativeness_gate(e, mask)
    assert ((r >= 0) & (r <= 1)).all()
    assert (r[mask] == 0).all()
    for b in range(4):
        valid = r[b][~mask[b]]
        assert torch.isclose(valid.max(), torch.tensor(1.0)) and valid.min() == 0
    # padded steps' scores do not influence the valid ones
    e2 = e.clone()
    e2[mask] = 1e3
    torch.testing.assert_close(informativeness_gate(e2, mask), r)
    # zero range (one valid step or constant scores) is guarded: finite, in [0, 1]
    r = informativeness_gate(torch.ones(2, 3), torch.tensor([[False, False, False], [False, True, True]]))
    assert torch.isfinite(r).all() and ((r >= 0) & (r <= 1)).all()


def _cell(preact):
    """1-unit cell whose pre-activations (i, j, f, o) are ``preact`` for x = 1, h = 0."""
    cell = GCALSTMCell(1, 1)
    with torch.no_grad():
        cell.W.weight.copy_(torch.tensor(preact).view(4, 1))
        cell.W.bias.zero_()
        cell.U.weight.zero_()
    return cell


def test_cell_update_eq_11():
    s = torch.sigmoid
    i, j, f, o = 1.0, 2.0, 3.0, -1.0
    cell = _cell([i, j, f, o])
    x, h0, c0 = torch.ones(1, 1), torch.zeros(1, 1), torch.full((1, 1), 0.5)
    for r in (0.0, 0.25, 1.0):
        h, c = cell(x, torch.tensor([r]), (h0, c0))
        c_hand = s(torch.tensor(f)) * 0.5 * (1 - r) + s(torch.tensor(i)) * math.tanh(j) * r
        torch.testing.assert_close(c, c_hand.view(1, 1))
        torch.testing.assert_close(h, (s(torch.tensor(o)) * torch.tanh(c_hand)).view(1, 1))
    # r = 0: the input is ignored entirely; r = 1: the previous cell is forgotten entirely
    h_a, c_a = cell(x, torch.tensor([0.0]), (h0, c0))
    h_b, c_b = _cell([9.0, -9.0, f, o])(x, torch.tensor([0.0]), (h0, c0))
    torch.testing.assert_close(c_a, c_b)
    _, c1 = cell(x, torch.tensor([1.0]), (h0, torch.full((1, 1), 123.0)))
    torch.testing.assert_close(c1, (s(torch.tensor(i)) * math.tanh(j)).view(1, 1))


def test_one_iteration_by_hand():
    torch.manual_seed(0)
    H, N = 3, 4
    gca = GCALSTM(input_size=2, hidden=H, iterations=1)
    h = torch.randn(1, N, H)
    F0 = torch.randn(1, H)
    F1, r = gca.refine(h, None, F0)

    # eq. 9-10 + min-max
    e = torch.stack(
        [gca.w2.weight @ torch.tanh(gca.W1.weight @ torch.cat([h[0, n], F0[0]])) for n in range(N)]
    )
    p = torch.softmax(e.flatten(), 0)
    r_hand = (p - p.min()) / (p.max() - p.min())
    torch.testing.assert_close(r[0], r_hand, atol=1e-6, rtol=1e-5)
    assert r.min() == 0 and torch.isclose(r.max(), torch.tensor(1.0))
    # LSTM2 from a zero state with eq. 11, written out
    hs, cs = torch.zeros(H), torch.zeros(H)
    Wx, Wb, U = gca.cell.W.weight, gca.cell.W.bias, gca.cell.U.weight
    for n in range(N):
        i, j, f, o = (Wx @ h[0, n] + Wb + U @ hs).chunk(4)
        cs = torch.sigmoid(f) * cs * (1 - r_hand[n]) + torch.sigmoid(i) * torch.tanh(j) * r_hand[n]
        hs = torch.sigmoid(o) * torch.tanh(cs)
    # eq. 12
    F1_hand = torch.relu(gca.WF.weight @ torch.cat([hs, F0[0]]))
    torch.testing.assert_close(F1[0], F1_hand, atol=1e-6, rtol=1e-5)


def test_forward_initialises_memory_with_last_lstm1_state_and_iterates():
    torch.manual_seed(0)
    gca = GCALSTM(input_size=2, hidden=3, iterations=3)
    m = torch.randn(2, 5, 2)
    F, gates = gca(m, None, return_gates=True)
    assert F.shape == (2, 3) and len(gates) == 3 and (F >= 0).all()
    h = gca.norm(gca.lstm1(m)[0])
    F_hand = h[:, -1]
    for _ in range(3):
        F_hand, _ = gca.refine(h, None, F_hand)
    torch.testing.assert_close(F, F_hand)


def test_rlc_mean_readout_is_a_flagged_diagnostic_without_the_gca_lstm():
    from models import create_model, example_batch, get_model_info

    kw = dict(stem_channels=4, channels=[8, 8], kernels=[3, 3], use_sa=[False, True], strides=[2, 2, 2],
              lstm_hidden=6, dense_units=5)
    mean = create_model("rlc", readout="mean", **kw).eval()
    assert mean.gca is None and mean.classifier[0].in_features == 8  # the trunk's channels, not the LSTM's 6
    batch = example_batch("rlc", **kw)
    padded = {"lld": torch.cat([batch["lld"], torch.randn(2, 7, 17)], dim=1),
              "lld_mask": torch.cat([batch["lld_mask"], torch.ones(2, 7, dtype=torch.bool)], dim=1)}
    torch.testing.assert_close(mean(**batch), mean(**padded))  # padded frames never enter the mean
    info = get_model_info("rlc")
    assert info.deviations_for(**kw) == [] and info.deviations_for(**kw, inputs={}) == []
    assert "GCA-LSTM" in info.deviations_for(readout="mean", **kw)[0]
    with pytest.raises(ValueError, match="readout"):
        create_model("rlc", readout="max", **kw)
