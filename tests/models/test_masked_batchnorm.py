"""MaskedBatchNorm1d: training statistics from valid frames only (rlc's ``masked_batchnorm``)."""

from __future__ import annotations

import torch

from models import create_model
from models.blocks import MaskedBatchNorm1d, lengths_to_mask
from models.rlc import ResidualBlock


def test_statistics_equal_plain_batchnorm_over_the_valid_frames_alone():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 9, 3])
    x = torch.randn(3, 4, 9, generator=g) * 3 + 1
    mask = lengths_to_mask(lengths, 9)
    x = x.masked_fill(mask.unsqueeze(1), 0.0)
    masked, plain = MaskedBatchNorm1d(4), torch.nn.BatchNorm1d(4)
    y = masked(x, mask)
    valid = torch.cat([x[b, :, : int(n)] for b, n in enumerate(lengths)], dim=1).unsqueeze(0)  # (1, C, ΣT)
    ref = plain(valid)
    got = torch.cat([y[b, :, : int(n)] for b, n in enumerate(lengths)], dim=1).unsqueeze(0)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    # and plain BatchNorm over the padded batch does differ: the padding counted as data
    assert not torch.allclose(torch.nn.BatchNorm1d(4)(x)[0, :, :5], y[0, :, :5], atol=1e-3)


def test_rlc_block_training_output_does_not_depend_on_extra_padding_with_masked_batchnorm():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 120, 8, generator=g)
    lengths = torch.tensor([120, 90])
    longer = torch.cat([x, torch.zeros(2, 40, 8)], dim=1)
    for masked, same in ((True, True), (False, False)):
        torch.manual_seed(0)
        block = ResidualBlock(8, 8, 3, 2, use_sa=True, dropout=0.0, att_dropout=0.0,
                              masked_batchnorm=masked).train()
        a, la = block(x, lengths)
        b, lb = block(longer, lengths)
        assert torch.equal(la, lb)
        valid = [(a[i, :n], b[i, :n]) for i, n in enumerate(la.tolist())]
        assert all(torch.allclose(u, v, atol=1e-5) for u, v in valid) is same


def test_rlc_config_passes_masked_batchnorm_to_every_block():
    model = create_model("rlc", stem_channels=4, channels=[8, 8], kernels=[3, 3], use_sa=[False, True],
                         strides=[2, 2, 2], lstm_hidden=8, dense_units=8, masked_batchnorm=True)
    assert all(b.masked_batchnorm for b in model.blocks)
    assert not any(b.masked_batchnorm for b in create_model("rlc").blocks)  # the paper's code: plain BN
