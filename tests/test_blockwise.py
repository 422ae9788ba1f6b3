"""DistAttn's block kernels (parallel/sequence/blockwise.py) in one process, float64: a query
chunk's attention over key chunks, computed block by block (forward merged by log-sum-exp,
backward from the merged output and LSE only), equals autograd through the reference over all
keys at once — for the fused CPU kernels and the tiled fallback, with fully visible, diagonal
and partially masked (window, documents) blocks, MHA/GQA/MQA. The fused path builds no mask
for fully visible or diagonal blocks."""
import pytest
import torch

import kernels.attention.sdpa as sdpa_mod
import parallel.sequence.blockwise as bw
from kernels.attention import attention_reference
from kernels.attention.masks import mask_kind

N = 16            # tokens per chunk; query chunk = 2 (global tokens 32..47), key chunks 0, 1, 2


def docs_for(b: int) -> torch.Tensor:
    cuts = [[7, 20, 37, 41], [12, 33, 40, 46]][:b]
    rows = [torch.bucketize(torch.arange(3 * N), torch.tensor(c), right=True) for c in cuts]
    return torch.stack(rows)


def blockwise_grads(backward, q, k, v, do, window, docs, scale, with_out=False):
    kw = lambda j: dict(window=window, q_docs=None if docs is None else docs[:, 2 * N:],  # noqa: E731
                        k_docs=None if docs is None else docs[:, j * N:(j + 1) * N],
                        q_offset=2 * N, k_offset=j * N, scale=scale)
    o = lse = None
    for j in range(3):
        o_b, lse_b = bw.block_forward(q, k[:, j * N:(j + 1) * N], v[:, j * N:(j + 1) * N], **kw(j))
        o, lse = bw.merge(o, lse, o_b, lse_b)
    delta = bw.row_delta(o, do)
    dq, dks, dvs = 0, [], []
    for j in range(3):
        extra = dict(out=o.to(q.dtype)) if with_out else {}
        dq_b, dk_b, dv_b = backward(q, k[:, j * N:(j + 1) * N], v[:, j * N:(j + 1) * N], do, lse, delta,
                                    **kw(j), **extra)
        dq, dks, dvs = dq + dq_b, dks + [dk_b], dvs + [dv_b]
    return o, (dq, torch.cat(dks, 1), torch.cat(dvs, 1))


def case_and_reference(seed: int, case: dict, hkv: int, d: int):
    """Random float64 q (chunk 2), k, v (chunks 0..2), dO, the case's window and documents, and the
    reference output and gradients over all keys at once."""
    gen = torch.Generator().manual_seed(seed)
    b, h = 2, 4
    q = torch.randn(b, N, h, d, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(b, 3 * N, hkv, d, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(b, 3 * N, hkv, d, dtype=torch.float64, generator=gen, requires_grad=True)
    do = torch.randn(b, N, h, d, dtype=torch.float64, generator=gen)
    window, docs = case.get("window"), docs_for(b) if case.get("docs") else None
    o_ref, _ = attention_reference(q, k, v, causal=True, window=window, q_offset=2 * N,
                                   q_doc_ids=None if docs is None else docs[:, 2 * N:], k_doc_ids=docs)
    g_ref = torch.autograd.grad(o_ref, (q, k, v), do)
    return (q.detach(), k.detach(), v.detach(), do, window, docs), o_ref.detach(), g_ref


@pytest.mark.parametrize("backward", ["fused", "tiled"])
@pytest.mark.parametrize("case", [dict(), dict(window=21), dict(docs=True), dict(docs=True, window=30)],
                         ids=["causal", "window", "docs", "docs+window"])
@pytest.mark.parametrize("hkv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_blocks_equal_reference(backward, case, hkv):
    d = 8
    (q, k, v, do, window, docs), o_ref, g_ref = case_and_reference(hash((backward, str(case), hkv)) % 2**31,
                                                                   case, hkv, d)
    fn = bw.block_backward_fused if backward == "fused" else bw.block_backward_tiled
    o, grads = blockwise_grads(fn, q, k, v, do, window, docs, d ** -0.5)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_fully_visible_and_diagonal_blocks_build_no_mask(monkeypatch):
    """Off-diagonal blocks whose keys all precede the queries run unmasked whatever their
    offsets, the diagonal block runs causal: neither forward nor backward builds a mask."""
    assert mask_kind(N, N, True, None, None, None, 2 * N, 0) == "none"
    assert mask_kind(N, N, True, None, None, None, 2 * N, N) == "none"
    assert mask_kind(N, N, True, None, None, None, 2 * N, 2 * N) == "causal"
    assert mask_kind(N, N, True, 21, None, None, 2 * N, N) == "masked"

    def refuse(*args, **kwargs):
        raise AssertionError("a dense mask was built")
    monkeypatch.setattr(sdpa_mod, "visible_mask", refuse)
    monkeypatch.setattr(bw, "visible_mask", refuse)
    gen = torch.Generator().manual_seed(5)
    q, do = (torch.randn(1, N, 2, 8, dtype=torch.float64, generator=gen) for _ in range(2))
    k, v = (torch.randn(1, 3 * N, 2, 8, dtype=torch.float64, generator=gen) for _ in range(2))
    o, grads = blockwise_grads(bw.block_backward_fused, q, k, v, do, None, None, 8 ** -0.5)
    assert all(torch.isfinite(g).all() for g in grads)


def test_stand_in_output_reproduces_delta():
    gen = torch.Generator().manual_seed(6)
    do = torch.randn(2, 3, 5, 8, dtype=torch.float64, generator=gen)
    do[0, 1, 2] = 0                                              # a row with no gradient
    delta = torch.randn(2, 3, 5, dtype=torch.float64, generator=gen)
    delta[0, 1, 2] = 0
    out = bw.stand_in_output(do, delta)
    torch.testing.assert_close((do * out).sum(-1), delta, rtol=1e-12, atol=1e-12)


def test_document_crop_keeps_only_shared_documents():
    """Chunk 2's queries share only their first document with chunk 1's last one: the
    off-diagonal block shrinks to that corner (the equality above covers its numbers); chunk 0
    shares no document with chunk 2 at all."""
    docs = docs_for(1)
    rows, keys = bw.document_crop(docs[:, 2 * N:], docs[:, N:2 * N], 2 * N, N)
    assert (rows.start, keys.stop) == (0, N) and rows.stop < N and keys.start > 0
    assert bw.document_crop(docs[:, 2 * N:], docs[:, :N], 2 * N, 0) == (slice(0, 0), slice(0, 0))
    assert bw.document_crop(docs[:, N:2 * N], docs[:, N:2 * N], N, N) is None     # diagonal: never cropped


def test_packed_documents_build_no_mask(monkeypatch):
    """One row of contiguous documents: off-diagonal blocks crop to one-document corners
    (unmasked) or nothing, the diagonal runs per document both ways: no mask anywhere, and the
    gradients still equal the reference's."""
    def refuse(*args, **kwargs):
        raise AssertionError("a dense mask was built")
    monkeypatch.setattr(sdpa_mod, "visible_mask", refuse)
    monkeypatch.setattr(bw, "visible_mask", refuse)
    gen = torch.Generator().manual_seed(12)
    docs = docs_for(1)
    q = torch.randn(1, N, 4, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    k, v = (torch.randn(1, 3 * N, 2, 8, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(2))
    do = torch.randn(1, N, 4, 8, dtype=torch.float64, generator=gen)
    o_ref, _ = attention_reference(q, k, v, causal=True, q_offset=2 * N, q_doc_ids=docs[:, 2 * N:], k_doc_ids=docs)
    g_ref = torch.autograd.grad(o_ref, (q, k, v), do)
    o, grads = blockwise_grads(bw.block_backward, q.detach(), k.detach(), v.detach(), do, None, docs, 8 ** -0.5)
    torch.testing.assert_close(o, o_ref.detach(), rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", [dict(), dict(window=21), dict(docs=True)], ids=["causal", "window", "docs"])
def test_query_owner_backward_reading_the_output_equals_reference(case):
    """The query owner passes the saved output (out=) instead of the stand-in built from delta:
    every block kind (visible, diagonal, masked, per-document pieces, cropped) still equals the
    reference's gradients."""
    gen = torch.Generator().manual_seed(21)
    q = torch.randn(1, N, 4, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    k, v = (torch.randn(1, 3 * N, 2, 8, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(2))
    do = torch.randn(1, N, 4, 8, dtype=torch.float64, generator=gen)
    window, docs = case.get("window"), docs_for(1) if case.get("docs") else None
    o_ref, _ = attention_reference(q, k, v, causal=True, window=window, q_offset=2 * N,
                                   q_doc_ids=None if docs is None else docs[:, 2 * N:], k_doc_ids=docs)
    g_ref = torch.autograd.grad(o_ref, (q, k, v), do)
    o, grads = blockwise_grads(bw.block_backward, q.detach(), k.detach(), v.detach(), do, window, docs,
                               8 ** -0.5, with_out=True)
    for got, want in zip(grads, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


TRITON_CASES = [(dict(), 2), (dict(window=21), 2), (dict(docs=True), 1), (dict(docs=True, window=30), 4)]


@pytest.mark.parametrize("case,hkv", TRITON_CASES, ids=["causal-gqa", "window-gqa", "docs-mqa", "docs+window-mha"])
def test_triton_block_backward_equals_reference(case, hkv, monkeypatch):
    """The CUDA block backward (our fused Triton dq and dk/dv kernels fed the merged LSE and delta),
    run here in Triton's interpreter through block_backward's own dispatch (LONGWEAVE_KERNELS=triton):
    float32 kernels against float64 autograd through the reference."""
    pytest.importorskip("triton")
    monkeypatch.setenv("LONGWEAVE_KERNELS", "triton")
    assert bw.backward_path(torch.zeros(1, 1, 1, 16)) == "triton"
    d = 16
    (q, k, v, do, window, docs), o_ref, g_ref = case_and_reference(hash((str(case), hkv)) % 2**31, case, hkv, d)
    o, grads = blockwise_grads(bw.block_backward, q, k, v, do, window, docs, d ** -0.5)
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, g_ref):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_block_backward_path_follows_the_kernel_mode(monkeypatch):
    """CPU: torch's fused flash backward; reference mode: the tiled one; a tensor the Triton kernels
    take on CUDA (simulated) or LONGWEAVE_KERNELS=triton: the Triton kernels."""
    q = torch.zeros(1, 4, 2, 16)
    for mode, want in (("auto", "cpu_fused"), ("reference", "tiled"), ("triton", "triton")):
        monkeypatch.setenv("LONGWEAVE_KERNELS", mode)
        assert bw.backward_path(q) == want
    monkeypatch.setenv("LONGWEAVE_KERNELS", "auto")
    monkeypatch.setattr(bw, "triton_ok", lambda q: True)
    assert bw.backward_path(q) == "triton"
