"""Causal depthwise conv1d: torch path vs reference, carried context = conv of the concatenation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.conv1d import causal_conv1d, causal_conv1d_reference, causal_conv1d_torch

F64 = torch.float64


def make_inputs(b=2, t=19, c=5, k=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, dtype=F64, generator=gen)
    w = torch.randn(c, k, dtype=F64, generator=gen)
    bias = torch.randn(c, dtype=F64, generator=gen)
    left = torch.randn(b, k - 1, c, dtype=F64, generator=gen)
    return x, w, bias, left


DOCS = torch.tensor([[0] * 6 + [1] * 2 + [2] * 11, [5] * 1 + [6] * 15 + [5] * 3])


def test_reference_matches_plain_conv():
    x, w, bias, _ = make_inputs()
    want = F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), w.unsqueeze(1), bias, groups=5).transpose(1, 2)
    torch.testing.assert_close(causal_conv1d_reference(x, w, bias), want)


@pytest.mark.parametrize("with_docs", [False, True])
@pytest.mark.parametrize("with_left", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_torch_matches_reference(with_docs, with_left, activation):
    x, w, bias, left = (v.requires_grad_() for v in make_inputs())
    kw = dict(doc_ids=DOCS if with_docs else None, left_context=left if with_left else None,
              activation=activation)
    y_ref = causal_conv1d_reference(x, w, bias, **kw)
    y = causal_conv1d_torch(x, w, bias, **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(y)
    inputs = (x, w, bias, left) if with_left else (x, w, bias)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), inputs)
    g = torch.autograd.grad((y * gy).sum(), inputs)
    for u, v in zip(g, g_ref):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 6, 7, 15])
@pytest.mark.parametrize("fn", [causal_conv1d_reference, causal_conv1d_torch])
def test_carried_context_equals_conv_of_concatenation(fn, k):
    x, w, bias, _ = make_inputs()
    full = fn(x, w, bias, doc_ids=DOCS, activation="silu")
    first = fn(x[:, :k], w, bias, doc_ids=DOCS[:, :k], activation="silu")
    left = F.pad(x[:, :k], (0, 0, 3, 0))[:, -3:]               # the 3 inputs before position k
    left_docs = F.pad(DOCS[:, :k], (3, 0), value=-1)[:, -3:]
    second = fn(x[:, k:], w, bias, doc_ids=DOCS[:, k:], left_context=left, left_doc_ids=left_docs,
                activation="silu")
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=1e-12, atol=1e-12)


def test_left_context_without_doc_ids_belongs_to_token0_document():
    x, w, bias, left = make_inputs()
    y = causal_conv1d_torch(x, w, bias, doc_ids=DOCS, left_context=left)
    y_ref = causal_conv1d_reference(x, w, bias, doc_ids=DOCS, left_context=left)
    torch.testing.assert_close(y, y_ref)
    plain = causal_conv1d_torch(x, w, bias, left_context=left)
    torch.testing.assert_close(y[:, :1], plain[:, :1])          # token 0 reads the whole left context


def test_dispatch_and_float32(monkeypatch):
    x, w, bias, left = make_inputs()
    y32 = causal_conv1d(x.float(), w.float(), bias.float(), doc_ids=DOCS, left_context=left.float())
    monkeypatch.setenv("LONGWEAVE_KERNELS", "reference")
    y64 = causal_conv1d(x, w, bias, doc_ids=DOCS, left_context=left)
    torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=1e-5)
