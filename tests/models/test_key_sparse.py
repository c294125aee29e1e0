"""Key-sparse attention (Chen et al. 2022, eq. 3; code Key_sparse_Multihead_attention) on hand-made cases."""

import torch

from models.ks_transformer import KSAttention, key_sparse


def w(rows):
    """(Tq, Tk) list → (1, 1, Tq, Tk) tensor."""
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, len(rows), len(rows[0]))


def test_top_k_by_column_sum_no_renormalisation():
    weights = w([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5]])  # column sums 0.3, 0.9, 0.8 ; k = int(3 * 0.5) = 1
    out = key_sparse(weights, 0.5)
    torch.testing.assert_close(out, w([[0.0, 0.6, 0.0], [0.0, 0.3, 0.0]]))
    # rows are not renormalised: they no longer sum to one
    assert torch.allclose(out.sum(-1), torch.tensor([0.6, 0.3]))


def test_k_is_int_of_key_len_times_keep_rate():
    weights = w([[0.4, 0.3, 0.2, 0.1]])  # k = int(4 * 0.6) = 2
    torch.testing.assert_close(key_sparse(weights, 0.6), w([[0.4, 0.3, 0.0, 0.0]]))
    torch.testing.assert_close(key_sparse(weights, 0.75), w([[0.4, 0.3, 0.2, 0.0]]))  # k = 3
    torch.testing.assert_close(key_sparse(weights, 1.0), weights)  # k = 4: dense
    torch.testing.assert_close(key_sparse(w([[1.0]]), 0.5), w([[1.0]]))  # k = int(0.5) → at least 1


def test_ties_at_threshold_are_kept():
    weights = w([[0.3, 0.3, 0.3, 0.1]])  # k = 2, but the 2nd and 3rd sums tie at 0.3
    torch.testing.assert_close(key_sparse(weights, 0.5), w([[0.3, 0.3, 0.3, 0.0]]))


def test_per_batch_and_head():
    a = [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]  # column 0 wins
    b = [[0.1, 0.1, 0.8], [0.2, 0.1, 0.7]]  # column 2 wins
    weights = torch.tensor([[a, b], [b, a]])  # (B=2, H=2, 2, 3)
    out = key_sparse(weights, 0.5)
    assert (out[0, 0, :, 1:] == 0).all() and (out[0, 0, :, 0] > 0).all()
    assert (out[0, 1, :, :2] == 0).all() and (out[0, 1, :, 2] > 0).all()
    assert (out[1, 0, :, :2] == 0).all() and (out[1, 1, :, 1:] == 0).all()


def test_valid_mode_uses_each_items_keys_and_queries():
    # 4 keys, the last one padded (weight 0 after the masked softmax); query 2 is padding
    weights = w([[0.5, 0.3, 0.2, 0.0], [0.4, 0.4, 0.2, 0.0], [0.0, 0.1, 0.9, 0.0]])
    key_pad = torch.tensor([[False, False, False, True]])
    query_pad = torch.tensor([[False, False, True]])
    # valid: k = int(3 * 0.5) = 1; sums over the 2 real queries: 0.9, 0.7, 0.4 → keep key 0 only
    out = key_sparse(weights, 0.5, key_pad, query_pad, mode="valid")
    assert (out[..., 1:] == 0).all() and torch.equal(out[..., 0], weights[..., 0])
    # padded (authors' code): k = int(4 * 0.5) = 2 and all query rows count: sums 0.9, 0.8, 1.3, 0
    out = key_sparse(weights, 0.5, key_pad, query_pad, mode="padded")
    expected = weights.clone()
    expected[..., 1] = 0
    expected[..., 3] = 0
    torch.testing.assert_close(out, expected)


def _authors_code(weights, keep_rate):
    """The code's steps, transcribed (HappyColor/Key-Sparse-Transformer, model/KS_transformer.py)."""
    B, H, Tq, Tk = weights.shape
    attn = weights.reshape(B * H, Tq, Tk).transpose(1, 2)
    k_sum = attn.sum(dim=-1)
    top = int(Tk * keep_rate)
    values, _ = k_sum.topk(top, dim=-1, largest=True, sorted=True)
    threshold = values[:, top - 1].unsqueeze(-1)
    k_mask = torch.where(k_sum < threshold, torch.tensor(0.0), torch.ones_like(k_sum)).unsqueeze(-1)
    return (attn * k_mask).transpose(1, 2).reshape(B, H, Tq, Tk)


def test_matches_authors_code_without_padding():
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(3, 4, 7, 9), dim=-1)
    for rate in (0.3, 0.5, 0.9):  # the code crashes when int(Tk * rate) == 0; we keep at least 1
        expected = _authors_code(weights, rate)
        torch.testing.assert_close(key_sparse(weights, rate, mode="valid"), expected)
        torch.testing.assert_close(key_sparse(weights, rate, mode="padded"), expected)


def test_attention_applies_sparsity_after_softmax():
    torch.manual_seed(0)
    dense = KSAttention(8, 2, sparse=False).eval()
    sparse = KSAttention(8, 2, sparse=True, keep_rate=0.5).eval()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(2, 6, 8)
    assert not torch.allclose(dense(x), sparse(x))
    sparse.keep_rate = 1.0  # everything kept → identical to vanilla attention
    torch.testing.assert_close(dense(x), sparse(x))
