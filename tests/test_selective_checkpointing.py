"""Selective activation checkpointing (train.checkpoint_policy=selective: matmul and attention
outputs kept, the rest recomputed) beside full checkpointing: equal loss and gradients to the
run without checkpointing in float64 (every mixer kind; tensor parallel too; refused in one line
under sequence parallel), and a measured peak between full checkpointing's and none."""
from __future__ import annotations

import pytest
import torch

import models
from parallel.checkpointing import apply_activation_checkpointing
from parallel.loss import token_loss_sum
from tests.test_chunked_loss import f64_step
from tests.test_layouts_helpers import apply_overrides, assert_grads_close, tiny_config
from train.plan_measure import StorageTracker

F64 = ["--train.dtype=float64"]
CKPT = {"none": [], "full": ["--train.activation_checkpointing=true"],
        "selective": ["--train.activation_checkpointing=true", "--train.checkpoint_policy=selective"]}


def test_selective_and_full_equal_no_checkpointing():
    ref_loss, ref = f64_step(0, 1, apply_overrides(tiny_config("M-*-R-W-"), F64))
    for name in ("full", "selective"):
        loss, grads = f64_step(0, 1, apply_overrides(tiny_config("M-*-R-W-"), [*F64, *CKPT[name]]))
        assert abs(loss - ref_loss) < 1e-12, (name, loss, ref_loss)
        assert_grads_close(grads, ref, atol=1e-12, rtol=1e-10)


def test_selective_under_tensor_parallel_equals_single_process(pool2):
    ref_loss, ref = f64_step(0, 1, apply_overrides(tiny_config("M-*-"), F64))
    cfg = apply_overrides(tiny_config("M-*-", tp=2), [*F64, *CKPT["selective"]])
    for loss, grads in pool2.run(f64_step, cfg):
        assert abs(loss - ref_loss) < 1e-10, (loss, ref_loss)
        assert_grads_close(grads, ref, atol=1e-10, rtol=1e-8)


def peak(policy: str | None) -> int:
    cfg = tiny_config("(*-)x3")
    torch.manual_seed(0)
    model = models.build(cfg.model)
    if policy is not None:
        apply_activation_checkpointing(model, policy)
    tokens = torch.randint(0, cfg.model.vocab_size, (4, 64))
    with StorageTracker() as tracker:
        token_loss_sum(model(tokens), tokens).backward()
    return tracker.peak


def test_selective_memory_sits_between_full_and_none():
    none, selective, full = peak(None), peak("selective"), peak("full")
    assert full < selective < none, (full, selective, none)


def test_selective_under_sequence_parallel_is_refused_in_one_line(pool2):
    cfg = apply_overrides(tiny_config("M-*-", sp=2), [*F64, *CKPT["selective"]])
    with pytest.raises(RuntimeError, match="checkpoint_policy=selective does not run under sequence parallelism"):
        pool2.run(f64_step, cfg)
