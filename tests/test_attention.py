"""Attention fast path (torch SDPA / CPU flash kernel) equals the reference: fp64, random inputs,
output, log-sum-exp and gradients, with and without window, documents, GQA and offsets."""
import pytest
import torch

from kernels.attention import attention, attention_reference


def random_docs(b, t, gen):
    cuts = torch.rand(b, t, generator=gen) < 0.15
    cuts[:, 0] = False
    return torch.cumsum(cuts.int(), dim=1).to(torch.int32)


CASES = [
    dict(),
    dict(window=5),
    dict(docs=True),
    dict(docs=True, window=4),
    dict(causal=False),
    dict(q_offset=16, k_offset=0),        # remote earlier key chunk (sequence parallel block)
    dict(q_offset=0, k_offset=8),         # partially future keys: some rows see nothing
    dict(q_offset=16, k_offset=0, window=20),
]


def case_inputs(case: dict, heads: tuple[int, int], gen: torch.Generator):
    """(q, k, v, attention kwargs) of one CASES entry: float64 leaves, random documents when asked."""
    b, t, d = 2, 16, 8
    h, hkv = heads
    q = torch.randn(b, t, h, d, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(b, t, hkv, d, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(b, t, hkv, d, dtype=torch.float64, generator=gen, requires_grad=True)
    kw = dict(causal=case.get("causal", True), window=case.get("window"),
              q_offset=case.get("q_offset", 0), k_offset=case.get("k_offset", 0))
    if case.get("docs"):
        doc = random_docs(b, t, gen)
        kw.update(q_doc_ids=doc, k_doc_ids=doc)
    return q, k, v, kw


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_fast_path_matches_reference(case, heads):
    gen = torch.Generator().manual_seed(hash((str(case), heads)) % 2**31)
    q, k, v, kw = case_inputs(case, heads, gen)
    o1, l1 = attention(q, k, v, return_lse=True, **kw)
    o2, l2 = attention_reference(q, k, v, **kw)
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-10)
    assert torch.equal(torch.isinf(l1), torch.isinf(l2))
    fin = torch.isfinite(l2)
    torch.testing.assert_close(l1[fin], l2[fin].to(l1.dtype), rtol=1e-10, atol=1e-10)
    go = torch.randn_like(o1)
    g1 = torch.autograd.grad(o1, (q, k, v), go)
    g2 = torch.autograd.grad(o2, (q, k, v), go)
    for a, b_ in zip(g1, g2):
        torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-9)


def test_reference_matches_naive_softmax():
    """The reference itself against a from-scratch loop (guards the shared mask definition)."""
    gen = torch.Generator().manual_seed(3)
    t, d = 7, 4
    q, k, v = (torch.randn(1, t, 1, d, dtype=torch.float64, generator=gen) for _ in range(3))
    doc = torch.tensor([[0, 0, 0, 1, 1, 1, 1]], dtype=torch.int32)
    o, lse = attention_reference(q, k, v, window=2, q_doc_ids=doc, k_doc_ids=doc)
    for i in range(t):
        keys = [j for j in range(t) if j <= i and i - j < 2 and doc[0, i] == doc[0, j]]
        s = torch.stack([(q[0, i, 0] * k[0, j, 0]).sum() / d ** 0.5 for j in keys])
        p = torch.softmax(s, 0)
        expect = sum(p[n] * v[0, j, 0] for n, j in enumerate(keys))
        torch.testing.assert_close(o[0, i, 0], expect)
        torch.testing.assert_close(lse[0, 0, i], torch.logsumexp(s, 0))


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)], ids=["mha", "gqa"])
def test_lse_gradient_matches_reference(case, heads):
    """The LSE `attention(..., return_lse=True)` returns is differentiable and its gradient is exact
    (aten's CPU flash op marks it non-differentiable; sdpa.CpuFlash adds the LSE backward)."""
    gen = torch.Generator().manual_seed(hash((str(case), heads, "lse")) % 2**31)
    q, k, v, kw = case_inputs(case, heads, gen)
    b, t, h, d = q.shape
    go = torch.randn(b, t, h, d, dtype=torch.float64, generator=gen)
    gl = torch.randn(b, h, t, dtype=torch.float64, generator=gen)
    grads = []
    for fn in (attention, attention_reference):
        out = fn(q, k, v, return_lse=True, **kw) if fn is attention else fn(q, k, v, **kw)
        o, lse = out
        seen = torch.isfinite(lse)
        loss = (o * go).sum() + (torch.where(seen, lse, 0) * gl).sum()
        grads.append(torch.autograd.grad(loss, (q, k, v)))
    for a, b_ in zip(*grads):
        assert torch.isfinite(b_).all()
        torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-9)


def test_lse_gradcheck():
    """gradcheck of the LSE alone (no output term) on the CPU fast path, causal with an offset."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 5, 2, 4, dtype=torch.float64, generator=gen, requires_grad=True)
               for _ in range(3))
    torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, return_lse=True, q_offset=2)[1],
                             (q, k, v), eps=1e-6, atol=1e-7)
