"""torch.compile of each block (train.compile; inductor on CPU): the losses of three float32
training steps equal the eager run's within 1e-5 relative (the compiled graphs only fuse
elementwise work; matmuls stay the same library calls), single-process for a hybrid that holds
attention, MLP and Mamba-2 blocks, and under sequence parallel with FSDP2 against the
single-process eager run; refused in one line under tensor parallelism.

Compiles are slow on a small machine, so one tiny model, one shape (dynamic=False), three steps."""
from __future__ import annotations

import pytest

from tests.test_layouts_helpers import apply_overrides, tiny_config, train_losses

PATTERN = "M-*-"
COMPILE = ["--train.compile=true"]
REL = 1e-5


def compiled_losses(rank, world, cfg):
    """(losses, graphs dynamo compiled): the count shows the blocks really ran compiled."""
    import torch._dynamo
    import torch._inductor.config
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # dynamic=False: one static graph; compile in-process: a compile-worker pool started here would be
    # inherited half-alive by the forked gloo workers, whose compiles then wait on it forever
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False), torch._inductor.config.patch(compile_threads=1):
        losses = train_losses(rank, world, cfg)
    return losses, counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def eager_losses(tmp_path_factory):
    return train_losses(0, 1, tiny_config(PATTERN, steps=3, run_dir=str(tmp_path_factory.mktemp("eager"))))


def assert_close(got: list[float], ref: list[float]) -> None:
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref):
        assert abs(a - b) <= REL * abs(b), (got, ref)


def test_compiled_blocks_match_eager(eager_losses, tmp_path):
    cfg = apply_overrides(tiny_config(PATTERN, steps=3, run_dir=str(tmp_path)), COMPILE)
    losses, graphs = compiled_losses(0, 1, cfg)
    assert graphs > 0, "nothing was compiled"
    assert_close(losses, eager_losses)


def test_compiled_blocks_under_sequence_parallel_and_fsdp(eager_losses, pool2, tmp_path):
    cfg = apply_overrides(tiny_config(PATTERN, steps=3, run_dir=str(tmp_path), sp=2, engine="fsdp"), COMPILE)
    for losses, graphs in pool2.run(compiled_losses, cfg, timeout=900):   # compiles are slow on a busy CPU
        assert graphs > 0, "nothing was compiled"
        assert_close(losses, eager_losses)


def test_compile_under_tensor_parallel_is_refused_in_one_line(pool2, tmp_path):
    cfg = apply_overrides(tiny_config(PATTERN, steps=1, run_dir=str(tmp_path), tp=2), COMPILE)
    with pytest.raises(RuntimeError, match="train.compile does not run under tensor parallelism"):
        pool2.run(train_losses, cfg)

