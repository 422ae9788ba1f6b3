"""End-to-end sequence-parallel training: 20 steps of a hybrid model (M, *, R, W) with
sp = 2, dp = 2 × sp = 2 (with rematerialization-aware checkpointing) and sp = 2 × tp = 2 give the
sp = 1 losses within 1e-5; a bad SP layout is a one-line error."""
from __future__ import annotations

import pytest
import torch

from parallel.dims import LayoutError, ParallelDims
from train.config import load_config
from train.loop import train

ARGS = ["--model.pattern=M-*-R-W-", "--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1",
        "--model.window=6", "--model.d_state=8", "--model.ssm_headdim=8", "--model.ssm_chunk_size=8",
        "--data.seq_len=32", "--data.min_doc_chars=10", "--data.max_doc_chars=40", "--train.steps=20",
        "--train.log_every=1000", "--checkpoint.every=0", "--checkpoint.save_final=false",
        "--metrics.tensorboard=false", "--optim.warmup_steps=5"]


def silent(*_):
    pass


def _sp_run(rank, world, run_dir, extra):
    cfg = load_config("configs/tiny.toml", [*ARGS, f"--train.run_dir={run_dir}", *extra])
    return train(cfg, log=silent).losses


def test_sp2_and_dp2_sp2_match_single_process(pool2, pool4, tmp_path):
    single = train(load_config("configs/tiny.toml", [*ARGS, f"--train.run_dir={tmp_path / 's'}",
                                                      "--data.batch_size=4"]), log=silent).losses
    sp2 = pool2.run(_sp_run, str(tmp_path / "sp2"), ["--parallel.sp=2", "--data.batch_size=4"])
    dp_sp = pool4.run(_sp_run, str(tmp_path / "dpsp"), ["--parallel.sp=2", "--parallel.dp=2", "--data.batch_size=2",
                                                         "--train.activation_checkpointing=true"])
    assert len(single) == 20 and single[-1] < single[0]
    for losses in (sp2[0], dp_sp[0]):
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(single), rtol=1e-5, atol=0)


def test_sp_layout_errors_are_one_line():
    class P:
        dp, tp, pp, sp = -1, 1, 1, 3
    with pytest.raises(LayoutError, match="sp=3 needs 3 processes"):
        ParallelDims.from_config(P, 4)


def test_sp2_with_tp2_matches_single_process(pool4, tmp_path):
    """Sequence parallel inside tensor parallel: each tp rank runs DistAttn / state passing on
    its own heads (attention heads, Mamba-2 heads, Griffin width) over its sp group."""
    steps = ["--data.batch_size=4", "--train.steps=6"]
    single = train(load_config("configs/tiny.toml", [*ARGS, f"--train.run_dir={tmp_path / 's'}", *steps]),
                   log=silent).losses
    sp_tp = pool4.run(_sp_run, str(tmp_path / "sptp"), ["--parallel.sp=2", "--parallel.tp=2", *steps])
    torch.testing.assert_close(torch.tensor(sp_tp[0]), torch.tensor(single), rtol=1e-5, atol=0)
