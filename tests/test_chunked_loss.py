"""Chunked cross-entropy (train.loss_chunk) equals the plain loss in float64, loss and every
gradient: the function alone, through the engine on one process (with and without activation
checkpointing), and vocab-parallel under tp=2 against the single-process plain run."""
from __future__ import annotations

import torch

from data.batch import IGNORE_INDEX
from parallel.loss import apply_chunked_loss, chunked_token_loss_sum, token_loss_sum
from tests.test_layouts_helpers import apply_overrides, assert_grads_close, one_step_grads, tiny_config

F64 = ["--train.dtype=float64"]


def f64_step(rank, world, cfg):
    """one_step_grads with the model built in float64 (module-level: the gloo pool runs it)."""
    torch.set_default_dtype(torch.float64)
    try:
        return one_step_grads(rank, world, cfg)
    finally:
        torch.set_default_dtype(torch.float32)


def test_chunked_function_equals_plain_loss_and_grads():
    torch.manual_seed(0)
    h = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :3] = IGNORE_INDEX
    ref = token_loss_sum(h @ w.t(), labels)
    g_ref = torch.autograd.grad(ref * 0.3, (h, w))
    for chunk in (1, 5, 21, 64):       # one token, a piece that does not divide 21 tokens, exact, larger
        got = chunked_token_loss_sum(h, labels, lambda x: x @ w.t(), chunk)
        assert torch.allclose(got, ref, rtol=0, atol=1e-12)
        for a, b in zip(torch.autograd.grad(got * 0.3, (h, w)), g_ref):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_the_model_still_returns_logits_without_labels():
    import models

    cfg = tiny_config("(*-)x2")
    model = models.build(cfg.model).double()
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 16))
    plain = model(tokens)
    apply_chunked_loss(model, 5)
    torch.testing.assert_close(model(tokens), plain, rtol=0, atol=0)
    model.loss_labels = tokens
    loss = model(tokens)
    assert loss.ndim == 0 and torch.allclose(loss, token_loss_sum(plain, tokens), rtol=0, atol=1e-10)


def test_engine_step_equal_with_and_without_chunks():
    for extra in ([], ["--train.activation_checkpointing=true"]):
        ref_loss, ref = f64_step(0, 1, apply_overrides(tiny_config("M-*-"), [*F64, *extra]))
        loss, grads = f64_step(0, 1, apply_overrides(tiny_config("M-*-"),
                                                           [*F64, *extra, "--train.loss_chunk=24"]))
        assert abs(loss - ref_loss) < 1e-12, (loss, ref_loss)
        assert_grads_close(grads, ref, atol=1e-12, rtol=1e-10)


def test_vocab_parallel_chunked_loss_equals_single_process_plain(pool2):
    ref_loss, ref = f64_step(0, 1, apply_overrides(tiny_config("(*-)x2"), F64))
    cfg = apply_overrides(tiny_config("(*-)x2", tp=2), [*F64, "--train.loss_chunk=24"])
    for loss, grads in pool2.run(f64_step, cfg):
        assert abs(loss - ref_loss) < 1e-10, (loss, ref_loss)
        assert_grads_close(grads, ref, atol=1e-10, rtol=1e-8)
