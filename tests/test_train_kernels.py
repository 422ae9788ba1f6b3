"""Our Triton attention in the training path: train.kernels=triton routes the model's attention
layer through it (on a CPU in Triton's interpreter, tiny shapes), forward and backward equal the
reference path; on CUDA the automatic choice for packed documents is Triton (flash-attn varlen
first when installed). train.float8 is refused in one line where it cannot run."""
from __future__ import annotations

import pytest
import torch

import kernels.attention as attention_mod
from kernels.dispatch import kernel_mode, use_kernels
from parallel.dims import LayoutError
from parallel.float8 import apply_float8, float8_refusal
from tests.test_layouts_helpers import apply_overrides, assert_grads_close, one_step_grads, tiny_config

pytest.importorskip("triton")

HEAD16 = ["--model.d_model=64", "--model.n_heads=4", "--model.n_kv_heads=2", "--model.mlp_hidden=64",
          "--data.batch_size=1"]


@pytest.fixture
def triton_calls(monkeypatch):
    """Counts the model's calls into our Triton attention; the kernel mode is restored after."""
    monkeypatch.delenv("LONGWEAVE_KERNELS", raising=False)
    calls = []
    real = attention_mod._attention_triton
    monkeypatch.setattr(attention_mod, "_attention_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    yield calls
    use_kernels("auto")


def step_with(mode: str):
    previous = use_kernels(mode)
    try:
        return one_step_grads(0, 1, apply_overrides(tiny_config("*-"), HEAD16))
    finally:
        use_kernels(previous)


def test_model_attention_through_triton_equals_reference(triton_calls):
    ref_loss, ref = step_with("reference")
    assert not triton_calls
    loss, grads = step_with("triton")
    assert triton_calls, "the model's attention did not take the Triton path"
    assert abs(loss - ref_loss) < 1e-5 * abs(ref_loss), (loss, ref_loss)
    assert_grads_close(grads, ref, atol=1e-5, rtol=1e-3)       # float32 kernels vs float32 reference


def test_trainer_switch_selects_triton(triton_calls, tmp_path):
    """The trainer sets the mode from train.kernels at build time; the test above shows the mode
    routes the model's attention (no step here: the interpreter is slow)."""
    from train.build import build_run

    cfg = apply_overrides(tiny_config("*-", steps=1, run_dir=str(tmp_path)), [*HEAD16, "--train.kernels=triton"])
    build_run(cfg)
    assert kernel_mode() == "triton"
    build_run(apply_overrides(cfg, ["--train.kernels=auto"]))
    assert kernel_mode() == "auto"


def test_auto_picks_triton_for_packed_documents_on_cuda(monkeypatch):
    monkeypatch.delenv("LONGWEAVE_KERNELS", raising=False)
    monkeypatch.setattr(attention_mod, "triton_ok", lambda q: True)           # as a CUDA tensor would be
    monkeypatch.setattr(attention_mod, "flash_supports", lambda *a: False)     # flash-attn not installed
    q = torch.randn(1, 64, 4, 16)
    assert attention_mod.select_attention_path(q, 64, 0, 0, False, plain_causal=False) == "triton"
    monkeypatch.setattr(attention_mod, "flash_supports", lambda *a: True)
    assert attention_mod.select_attention_path(q, 64, 0, 0, False, plain_causal=False) == "flash_attn"


def test_float8_refusals_are_one_line():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert "needs torchao" in float8_refusal(gpu, 1, torchao=False, capability=(9, 0))
    assert "needs a CUDA GPU" in float8_refusal(cpu, 1, torchao=True)
    assert "compute capability >= 8.9" in float8_refusal(gpu, 1, torchao=True, capability=(8, 0))
    assert "tensor parallelism" in float8_refusal(gpu, 2, torchao=True, capability=(9, 0))
    assert float8_refusal(gpu, 1, torchao=True, capability=(9, 0)) is None
    with pytest.raises(LayoutError, match="train.float8 needs"):
        apply_float8(torch.nn.Linear(16, 16), cpu, 1)
