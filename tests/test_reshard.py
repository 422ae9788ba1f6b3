"""Checkpoints reshard across layouts (torch.distributed.checkpoint + DTensor parameters):
a run saved under one (dp, pp, tp, sp) layout resumes under another and continues with the
losses of an uninterrupted single-process run (next step and the rest, within 1e-5).

Each case trains 20 steps under layout A saving every 5 (so the LR schedule is the full
run's), then resumes from step 5 under layout B; the global batch is the same (dp × rows).
"""
from __future__ import annotations

import pytest
import torch
from test_layouts_helpers import reference_config, sp_available, tiny_config, train_losses

PATTERN = "M-*-R-"
_ref: dict = {}


def reference(global_rows: int) -> list[float]:
    if global_rows not in _ref:
        _ref[global_rows] = train_losses(0, 1, reference_config(PATTERN, global_rows // 4))
    return _ref[global_rows]


def save_under(pool, tmp_path, rows: int, **par) -> str:
    cfg = tiny_config(PATTERN, run_dir=str(tmp_path / "a"), **par)
    cfg.data.batch_size = rows
    cfg.checkpoint.every, cfg.checkpoint.keep_last = 5, 0
    (pool.run if pool is not None else (lambda f, c: [f(0, 1, c)]))(train_losses, cfg)
    return str(tmp_path / "a" / "checkpoints" / "step-0000005")


def resume_under(pool, tmp_path, ckpt: str, rows: int, **par) -> list[float]:
    cfg = tiny_config(PATTERN, run_dir=str(tmp_path / "b"), **par)
    cfg.data.batch_size = rows
    cfg.checkpoint.resume = ckpt
    if pool is None:
        return train_losses(0, 1, cfg)
    return pool.run(train_losses, cfg)[0]


def check(losses: list[float], global_rows: int) -> None:
    ref = reference(global_rows)
    assert len(losses) == 15
    assert abs(losses[0] - ref[5]) < 1e-5, (losses[0], ref[5])          # the next step
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref[5:]), atol=1e-5, rtol=0)


def test_dp2_tp2_to_dp4(pool4, tmp_path):
    ckpt = save_under(pool4, tmp_path, 4, dp=2, tp=2)
    check(resume_under(pool4, tmp_path, ckpt, 2, dp=4), 8)


def test_tp2_to_pp2(pool2, tmp_path):
    ckpt = save_under(pool2, tmp_path, 4, tp=2)
    check(resume_under(pool2, tmp_path, ckpt, 4, pp=2), 4)


def test_pp2_to_one_process(pool2, tmp_path):
    ckpt = save_under(pool2, tmp_path, 4, pp=2, pp_schedule="interleaved_1f1b")
    check(resume_under(None, tmp_path, ckpt, 4), 4)


def test_one_process_to_tp2_pp2(pool4, tmp_path):
    ckpt = save_under(None, tmp_path, 4)
    check(resume_under(pool4, tmp_path, ckpt, 4, tp=2, pp=2), 4)


def test_sp2_to_sp1(pool2, tmp_path):
    if not sp_available():
        pytest.skip("sequence parallelism (issue 6) is not in this checkout yet")
    ckpt = save_under(pool2, tmp_path, 4, sp=2)
    check(resume_under(None, tmp_path, ckpt, 4), 4)


def test_fsdp_dp2_to_ddp_tp2(pool2, tmp_path):
    ckpt = save_under(pool2, tmp_path, 2, engine="fsdp")
    check(resume_under(pool2, tmp_path, ckpt, 4, tp=2), 4)


def test_fsdp_dp2_pp2_to_one_process_and_back(pool4, tmp_path):
    ckpt = save_under(pool4, tmp_path, 2, engine="fsdp", pp=2)
    check(resume_under(None, tmp_path, ckpt, 4), 4)
    check(resume_under(pool4, tmp_path, ckpt, 2, engine="fsdp", pp=2, pp_schedule="interleaved_1f1b"), 4)


def test_pp2_to_pp2_same_layout(pool2, tmp_path):
    # a pipeline stage's optimizer groups hold only its own parameters (flattened per name)
    ckpt = save_under(pool2, tmp_path, 4, pp=2)
    check(resume_under(pool2, tmp_path, ckpt, 4, pp=2, pp_schedule="gpipe"), 4)
