"""bf16 parameters under FSDP2 with fp32 gradient reduction (train.dtype=bfloat16,
parallel.engine=fsdp) run on CPU/gloo too: one step at dp=2 equals the float32 single-process
step within bf16's precision, and differs from the float32 FSDP2 step (bf16 really computes)."""
from __future__ import annotations

import torch

from tests.test_layouts_helpers import apply_overrides, one_step_grads, reference_config, tiny_config

BF16_FSDP = ["--parallel.engine=fsdp", "--train.dtype=bfloat16"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def test_fsdp_bf16_parameters_match_fp32_single_process(pool2):
    ref_loss, ref = one_step_grads(0, 1, reference_config("M-*-", dp=2))
    fp32 = pool2.run(one_step_grads, apply_overrides(tiny_config("M-*-", dp=2), ["--parallel.engine=fsdp"]))
    bf16 = pool2.run(one_step_grads, apply_overrides(tiny_config("M-*-", dp=2), BF16_FSDP))
    for loss, grads in bf16:
        assert abs(loss - ref_loss) < 2e-3 * abs(ref_loss), (loss, ref_loss)     # bf16: 8 mantissa bits
        assert set(grads) == set(ref)
        for name, g in grads.items():
            assert g.dtype == torch.float32, (name, g.dtype)                     # reduced and kept in fp32
            assert relative_error(g, ref[name]) < 5e-2, (name, relative_error(g, ref[name]))
    assert abs(bf16[0][0] - fp32[0][0]) > 1e-6 * abs(ref_loss), "bf16 run equals the fp32 one: not in bf16"
    assert abs(fp32[0][0] - ref_loss) < 1e-5 * abs(ref_loss)
