"""torch.compile of each block (train.compile; inductor on CPU): the losses of three float32
training steps equal the eager run's within 1e-5 relative (the compiled graphs only fuse
elementwise work; matmuls stay the same library calls), single-process for a hybrid that holds
attention, MLP and Mamba-2 blocks, and with tensor parallel, sequence parallel and FSDP2 at once
(tp=2 x sp=2, FSDP2 over sp) against the eager run of the same layout.

Compiles are slow on a small machine, so one tiny model, one shape (dynamic=False), three steps,
and one distributed run covering the three layouts. That run compiles with the `aot_eager`
backend: dynamo's capture and AOTAutograd's tracing of DTensor / FSDP2 / our SP autograd
functions (where layouts break compiles: the tensor-parallel `_local_tensor` failure was there)
are the real ones, but no C++ is generated four times over (inductor on four ranks took ~7 CPU
minutes cold); inductor's numerics are checked by the single-process test."""
from __future__ import annotations

import pytest

from tests.test_layouts_helpers import apply_overrides, tiny_config, train_losses

PATTERN = "M-*-"
COMPILE = ["--train.compile=true"]
REL = 1e-5


def compiled_losses(rank, world, cfg, backend: str = "inductor"):
    """(losses, graphs dynamo compiled): the count shows the blocks really ran compiled.

    `backend` replaces the one the trainer's `block.compile()` calls use (inductor by default)."""
    from unittest import mock

    import torch
    import torch._dynamo
    import torch._inductor.config
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # dynamic=False: one static graph; compile in-process: a compile-worker pool started here would be
    # inherited half-alive by the forked gloo workers, whose compiles then wait on it forever
    module_compile = torch.nn.Module.compile

    def compile_with_backend(self, *args, **kwargs):
        return module_compile(self, *args, **{**kwargs, "backend": backend})

    with torch._dynamo.config.patch(automatic_dynamic_shapes=False), torch._inductor.config.patch(compile_threads=1), \
            mock.patch.object(torch.nn.Module, "compile", compile_with_backend):
        losses = train_losses(rank, world, cfg)
    return losses, counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def eager_losses(tmp_path_factory):
    return train_losses(0, 1, tiny_config(PATTERN, steps=3, run_dir=str(tmp_path_factory.mktemp("eager"))))


def assert_close(got: list[float], ref: list[float], rel: float = REL) -> None:
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref):
        assert abs(a - b) <= rel * abs(b), (got, ref)


def test_compiled_blocks_match_eager(eager_losses, tmp_path):
    cfg = apply_overrides(tiny_config(PATTERN, steps=3, run_dir=str(tmp_path)), COMPILE)
    losses, graphs = compiled_losses(0, 1, cfg)
    assert graphs > 0, "nothing was compiled"
    assert_close(losses, eager_losses)


def test_compiled_blocks_under_tensor_sequence_parallel_and_fsdp(eager_losses, pool4, tmp_path):
    """Compiled equals eager in the same layout within REL; both equal the single-process run
    within the layout tests' tolerance (reductions split over ranks sum in another order)."""
    cfg = tiny_config(PATTERN, steps=3, run_dir=str(tmp_path), tp=2, sp=2, engine="fsdp")
    eager = pool4.run(train_losses, cfg)
    compiled = pool4.run(compiled_losses, apply_overrides(cfg, COMPILE), backend="aot_eager", timeout=900)
    for (losses, graphs), same_layout in zip(compiled, eager):
        assert graphs > 0, "nothing was compiled"
        assert_close(losses, same_layout)
        assert_close(same_layout, eager_losses, rel=1e-4)
