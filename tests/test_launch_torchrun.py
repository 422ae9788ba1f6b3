"""The real launcher and torchrun, end to end on this machine (a few seconds each):
- two torchrun launchers with --nnodes 2 rendezvous over loopback (c10d), train and checkpoint;
- SIGUSR1 sent to `python -m launch local` mid-run: every rank saves and the launcher exits 75;
  `python -m launch resume` continues, and the per-step losses of the interrupted + resumed run
  equal the uninterrupted two-node run's bit for bit (both are dp=2)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist.pool import free_port

from train.checkpoint import list_checkpoints
from train.metrics import read_step_log
from train.preemption import REQUEUE_EXIT_CODE, read_exit_record

REPO = Path(__file__).resolve().parent.parent
STEPS = 60
TINY = ["--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1", "--model.pattern=(*-)x1",
        "--data.seq_len=32", "--data.batch_size=2", "--data.max_doc_chars=800", "--metrics.tensorboard=false",
        "--train.log_every=1000", f"--train.steps={STEPS}", "--checkpoint.every=25"]
pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def launch(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launch", *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def losses(run_dir: Path) -> list[float]:
    log = read_step_log(run_dir)
    return [log[s]["loss"] for s in range(1, STEPS + 1)]


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("two_node") / "run"
    port = free_port()
    common = ["local", "--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port",
              str(port), "--rdzv-id", "loopback-test", *TINY, f"--train.run_dir={run}"]
    nodes = [launch(*common, "--node-rank", str(r)) for r in (0, 1)]
    results = [finish(p) for p in nodes]
    for rc, out in results:
        assert rc == 0, out[-3000:]
    return run


def test_two_launchers_rendezvous_over_loopback_train_and_checkpoint(two_node_run):
    ckpts = list_checkpoints(two_node_run / "checkpoints")
    assert [p.name for p in ckpts] == ["step-0000050", f"step-{STEPS:07d}"]
    assert sorted(f.name for f in ckpts[-1].glob("rank-*.pt")) == ["rank-00000.pt", "rank-00001.pt"]
    saved = json.loads((ckpts[-1] / "train_state.json").read_text())
    assert saved["step"] == STEPS
    assert read_exit_record(two_node_run)["exit_code"] == 0
    curve = losses(two_node_run)
    assert curve[-1] < curve[0] - 1.0                   # it trained


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"launcher exited with {proc.returncode} before step {step}: {proc.stdout.read()}")
        if len(read_step_log(run)) >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"no step {step} within {timeout}s")


def test_sigusr1_saves_exits_75_and_resume_matches_uninterrupted(two_node_run, tmp_path):
    run = tmp_path / "run"
    proc = launch("local", "--nproc-per-node", "2", *TINY, f"--train.run_dir={run}")
    wait_for_step(run, 3, proc)
    proc.send_signal(signal.SIGUSR1)                     # what srun / requeue.sh deliver on a SLURM preemption
    rc, out = finish(proc)
    assert rc == REQUEUE_EXIT_CODE, out[-3000:]
    assert "SIGUSR1 received; asking 2 worker(s)" in out
    record = read_exit_record(run)
    stopped = record["step"]
    assert record["exit_code"] == REQUEUE_EXIT_CODE and record["reason"] == "SIGUSR1" and 3 <= stopped < STEPS
    ckpt = list_checkpoints(run / "checkpoints")[-1]
    assert ckpt.name == f"step-{stopped:07d}"
    assert sorted(f.name for f in ckpt.glob("rank-*.pt")) == ["rank-00000.pt", "rank-00001.pt"]
    rc, out = finish(launch("resume", str(run)))
    assert rc == 0, out[-3000:]
    assert f"resumed from {ckpt} at step {stopped}" in out
    assert losses(run) == losses(two_node_run)           # bitwise equal to the uninterrupted run
