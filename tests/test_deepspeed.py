"""DeepSpeed ZeRO-1/2/3 as the data-parallel engine (2 gloo ranks, CPU): 20 training steps match
the single-process run within 1e-5, and its checkpoints resume to the same losses.
Skipped when DeepSpeed is not installed (it is the optional `[deepspeed]` extra)."""
from __future__ import annotations

import pytest
import torch
from test_layouts_helpers import reference_config, tiny_config, train_losses

pytest.importorskip("deepspeed")

PATTERN = "M-*-R-"


@pytest.fixture(scope="module")
def reference():
    return train_losses(0, 1, reference_config(PATTERN, 2))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_matches_single_process(pool2, reference, stage):
    got = pool2.run(train_losses, tiny_config(PATTERN, engine="deepspeed", zero_stage=stage))[0]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(reference), atol=1e-5, rtol=0)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_checkpoint_resumes(pool2, reference, tmp_path, stage):
    """Train 20 steps saving every 5, then resume from step 5: steps 6..20 repeat exactly."""
    first = tiny_config(PATTERN, run_dir=str(tmp_path), engine="deepspeed", zero_stage=stage)
    first.checkpoint.every, first.checkpoint.keep_last = 5, 0
    pool2.run(train_losses, first)
    resumed = tiny_config(PATTERN, run_dir=str(tmp_path / "resumed"), engine="deepspeed", zero_stage=stage)
    resumed.checkpoint.resume = str(tmp_path / "checkpoints" / "step-0000005")
    got = pool2.run(train_losses, resumed)[0]
    assert len(got) == 15
    torch.testing.assert_close(torch.tensor(got), torch.tensor(reference[5:]), atol=1e-5, rtol=0)


def test_deepspeed_layout_errors():
    from parallel.deepspeed_engine import check_deepspeed_layout
    from parallel.dims import LayoutError, ParallelDims
    from parallel.layout import ParallelState

    with pytest.raises(LayoutError, match="data parallelism only"):
        check_deepspeed_layout(ParallelState(dims=ParallelDims(dp=1, tp=2), world=2))
    with pytest.raises(LayoutError, match="torchrun"):
        check_deepspeed_layout(ParallelState(dims=ParallelDims(), world=1))
