"""Packed-document self-attention without a dense mask (kernels/attention/doc_pieces.py): the
per-document causal pieces and the single-document shortcut equal the masked reference in
float64 — output, log-sum-exp, gradients — on random document boundaries; the mask builder is
never called on these paths; rows whose ids repeat non-contiguously still take the masked path."""
import pytest
import torch

import kernels.attention.sdpa as sdpa_mod
from kernels.attention import attention, attention_reference
from kernels.attention.doc_pieces import bucket_length, piece_bounds


def random_docs(b: int, t: int, gen: torch.Generator, p_cut: float) -> torch.Tensor:
    cuts = torch.rand(b, t, generator=gen) < p_cut
    cuts[:, 0] = False
    return (torch.cumsum(cuts.int(), dim=1) + 3).to(torch.int32)       # ids need not start at 0


def qkv(b, t, h, hkv, d, gen):
    mk = lambda n: torch.randn(b, t, n, d, dtype=torch.float64, generator=gen, requires_grad=True)  # noqa: E731
    return mk(h), mk(hkv), mk(hkv)


def check_equal(q, k, v, **kw):
    o1, l1 = attention(q, k, v, return_lse=True, **kw)
    o2, l2 = attention_reference(q, k, v, **kw)
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(l1, l2.to(l1.dtype), rtol=1e-10, atol=1e-10)
    go = torch.randn_like(o1)
    g1 = torch.autograd.grad(o1, (q, k, v), go)   # the fused kernel does not differentiate its LSE
    g2 = torch.autograd.grad(o2, (q, k, v), go)
    for a, b_ in zip(g1, g2):
        torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-9)


@pytest.fixture
def no_dense_mask(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dense mask was built")
    monkeypatch.setattr(sdpa_mod, "visible_mask", refuse)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_pieces_match_masked_reference(seed, heads, no_dense_mask):
    gen = torch.Generator().manual_seed(100 + seed)
    b, t, d = 3, 96, 8
    docs = random_docs(b, t, gen, p_cut=[0.02, 0.05, 0.15, 0.4][seed])
    q, k, v = qkv(b, t, *heads, d, gen)
    check_equal(q, k, v, causal=True, q_doc_ids=docs, k_doc_ids=docs)


def test_pieces_span_several_padded_buckets(no_dense_mask):
    """Pieces of lengths that pad differently (some exactly a bucket, some not, some tiny)."""
    lengths = [[1, 17, 40, 6], [64, 0, 0, 0], [33, 31, 0, 0]]
    rows = [torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(r) if n]) for r in lengths]
    docs = torch.stack(rows)
    starts, sizes = piece_bounds(docs)
    assert sorted(sizes.tolist()) == sorted(n for r in lengths for n in r if n)
    assert len({bucket_length(n) for n in sizes.tolist()}) >= 3
    assert all(bucket_length(n) >= n for n in range(1, 300))
    gen = torch.Generator().manual_seed(7)
    q, k, v = qkv(3, 64, 2, 2, 4, gen)
    check_equal(q, k, v, causal=True, q_doc_ids=docs, k_doc_ids=docs)


def test_single_document_rows_take_plain_causal(no_dense_mask):
    gen = torch.Generator().manual_seed(8)
    q, k, v = qkv(2, 40, 4, 2, 8, gen)
    docs = torch.tensor([[5], [9]]).expand(2, 40)                      # one document per row, ids differ
    check_equal(q, k, v, causal=True, q_doc_ids=docs, k_doc_ids=docs)


def test_window_longer_than_every_document_needs_no_mask(no_dense_mask):
    gen = torch.Generator().manual_seed(9)
    docs = torch.tensor([[0] * 10 + [1] * 14 + [2] * 8])
    q, k, v = qkv(1, 32, 2, 1, 8, gen)
    check_equal(q, k, v, causal=True, window=14, q_doc_ids=docs, k_doc_ids=docs)


@pytest.mark.parametrize("case", ["window_inside_docs", "repeated_ids"])
def test_other_document_layouts_stay_exact(case):
    """A window shorter than a document, and ids that repeat non-contiguously ([0, 1, 0]: raw
    id equality, the rule in masks.py, joins the two runs) keep the masked kernel."""
    gen = torch.Generator().manual_seed(10)
    q, k, v = qkv(2, 48, 4, 2, 8, gen)
    if case == "window_inside_docs":
        docs, window = random_docs(2, 48, gen, 0.1), 5
    else:
        docs, window = torch.tensor([[0] * 16 + [1] * 16 + [0] * 16, [2] * 20 + [1] * 28]), None
    check_equal(q, k, v, causal=True, window=window, q_doc_ids=docs, k_doc_ids=docs)


def test_float32_pieces_close_to_reference():
    gen = torch.Generator().manual_seed(11)
    docs = random_docs(2, 128, gen, 0.05)
    q, k, v = (torch.randn(2, 128, 4, 16, generator=gen) for _ in range(3))
    o1 = attention(q, k, v, causal=True, q_doc_ids=docs, k_doc_ids=docs)
    o2, _ = attention_reference(q, k, v, causal=True, q_doc_ids=docs, k_doc_ids=docs)
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-5)
