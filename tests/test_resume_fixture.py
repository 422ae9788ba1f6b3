"""A checkpoint written by the trainer as it was before the engine redesign (issue 13) still
resumes to the same losses, gradient norms and console lines.

fixtures/pre_engine_ckpt.tar.gz holds `checkpoints/step-0000003/` of a 6-step run (pattern
"M-*-R-", one process) saved at step 3 by main at ab80dea; the figures below are what that
code printed and logged for steps 4-6 after resuming it. They are compared to a relative 1e-5,
not bit for bit: on another CPU (CI's) the same float32 steps round differently in the last bits
(5.370278835 against 5.370278358, 9e-8 relative), while a resume whose schedule is off by one
warm-up step already moves them by 5e-3.
"""
import json
import tarfile
from pathlib import Path

import pytest

from train.config import load_config
from train.loop import train

FIXTURE = Path(__file__).parent / "fixtures" / "pre_engine_ckpt.tar.gz"
ARGS = ["--model.pattern=M-*-R-", "--model.d_model=16", "--model.n_heads=2", "--model.n_kv_heads=1",
        "--model.d_state=8", "--model.ssm_headdim=8", "--model.ssm_chunk_size=8", "--data.seq_len=32",
        "--data.batch_size=2", "--data.max_doc_chars=800", "--train.log_every=1", "--metrics.log_every=1",
        "--optim.warmup_steps=2", "--model.mlp_hidden=32", "--train.steps=6", "--checkpoint.every=3",
        "--checkpoint.resume=auto"]
LOSSES = [5.430322647094727, 5.370278358459473, 5.341887474060059]
GRAD_NORMS = [1.692000150680542, 1.4945409297943115, 1.4732564687728882]
LINES = ["model: M-*-R-  params 0.01M  0.1 MFLOP/token  world 1 (dp 1)  device cpu",
         "step      4/6 | loss 5.4303 | lr 2.32e-03 | grad 1.692 |",
         "step      5/6 | loss 5.3703 | lr 9.75e-04 | grad 1.495 |",
         "step      6/6 | loss 5.3419 | lr 3.00e-04 | grad 1.473 |"]


def test_checkpoint_from_before_the_redesign_resumes_exactly(tmp_path):
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    lines: list[str] = []
    result = train(load_config("configs/tiny.toml", [*ARGS, f"--train.run_dir={tmp_path}"]), log=lines.append)
    assert result.losses == pytest.approx(LOSSES, rel=1e-5, abs=0)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in logged] == pytest.approx(GRAD_NORMS, rel=1e-5, abs=0)
    assert lines[0] == f"resumed from {tmp_path}/checkpoints/step-0000003 at step 3"
    assert lines[1] == LINES[0]
    for line, want in zip(lines[2:], LINES[1:]):
        assert line.startswith(want)
    assert (tmp_path / "checkpoints" / "step-0000006" / ".metadata").is_file()
