"""Tensor parallelism with the biases imported models carry (Qwen2's q/k/v, Llama's
attention_bias and mlp_bias): one step's loss and gathered gradients equal the single-process
run at tp = 2, also with one kv head (K/V projections replicated, each rank slicing its head's
weight rows and bias entries)."""
from __future__ import annotations

import pytest
from test_layouts_helpers import (
    apply_overrides,
    assert_grads_close,
    one_step_grads,
    reference_config,
    tiny_config,
)

BIASES = ["--model.attn_qkv_bias=true", "--model.attn_out_bias=true", "--model.mlp_bias=true"]


@pytest.mark.parametrize("kv", [2, 1], ids=["kv-sharded", "kv-replicated"])
def test_tp2_with_biases_matches_single_process(pool2, kv):
    over = [*BIASES, f"--model.n_kv_heads={kv}"]
    ref_loss, ref_grads = one_step_grads(0, 1, apply_overrides(reference_config("(*-)x2", 1), over))
    loss, grads = pool2.run(one_step_grads, apply_overrides(tiny_config("(*-)x2", tp=2), over))[0]
    assert abs(loss - ref_loss) < 1e-5, (loss, ref_loss)
    assert any(name.endswith("wk.bias") for name in grads)
    assert_grads_close(grads, ref_grads)
