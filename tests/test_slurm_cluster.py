"""A real SLURM job (skipped when no SLURM cluster can be reached or started).

`python -m launch slurm` submits a 2-process CPU job (on two SLURM nodes when the cluster has two); `scancel --signal=USR1` makes it save and
exit 75, the wrapper requeues it, and it resumes; then `scontrol requeue` (SIGTERM to the whole
job) does the same once more; the job finishes every step after two automatic resumes.
The cluster comes from `bash slurm/local-cluster.sh` (.ci/run starts one when it can).

SLURM holds a requeued job for ~2 minutes (EligibleTime = requeue + 121 s). The test skips that
wait with `scontrol update JobId=N StartTime=now` (an admin command) once it has seen the job
back in the queue; nothing else is shortcut.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.checkpoint import list_checkpoints
from train.metrics import read_step_log
from train.preemption import read_exit_record

REPO = Path(__file__).resolve().parent.parent
STEPS = 300
pytestmark = pytest.mark.slow


def idle_nodes() -> int:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return sum(s.strip("*~#") == "idle" for s in out.stdout.split()) if out.returncode == 0 else 0


def max_idle_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%c"], capture_output=True, text=True, timeout=20)
    return max((int(c) for c in out.stdout.split() if c.isdigit()), default=0)


def cluster_up() -> bool:
    return idle_nodes() > 0


@pytest.fixture(scope="module")
def slurm():
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        pytest.skip("SLURM is not installed (sbatch not on PATH); `bash slurm/local-cluster.sh` installs one")
    try:
        if not cluster_up() and os.geteuid() == 0:
            subprocess.run(["bash", str(REPO / "slurm" / "local-cluster.sh"), "--no-install"], timeout=90,
                           capture_output=True)
        if not cluster_up():
            pytest.skip("no idle SLURM node (start one with `bash slurm/local-cluster.sh`)")
    except subprocess.TimeoutExpired:
        pytest.skip("SLURM does not answer")
    # One node with two processes when a node has two CPUs (what .ci/run starts: `--nodes 1`);
    # on a cluster of one-CPU nodes (`local-cluster.sh --nodes 2` splits this host's CPUs) the job
    # spans two SLURM nodes instead: their names do not resolve, hence MASTER_ADDR.
    if max_idle_cpus() >= 2:
        return ["--nodes", "1", "--nproc-per-node", "2"]
    return ["--nodes", "2", "--nproc-per-node", "1", "--export", "MASTER_ADDR=127.0.0.1"]


def job_field(job: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=20)
    m = re.search(rf"\b{name}=(\S+)", out.stdout)
    return m.group(1) if m else ""


def wait_for(what: str, cond, timeout: float = 240, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def nodes_settled(job: str) -> bool:
    """No step of `job` is left and no node is still completing or allocated."""
    steps = subprocess.run(["squeue", "-h", "-s", "-j", job], capture_output=True, text=True, timeout=20)
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    busy = [s for s in states.stdout.split() if not s.startswith("idle")]
    return steps.returncode == 0 and not steps.stdout.strip() and not busy


def requeued_and_released(job: str, restarts: int, log: Path) -> None:
    """Wait until the job is back in the queue after its `restarts`-th requeue and its previous run
    has been cleaned up on every node, then release the hold. Released any earlier, slurmd may get
    the new start while it still tears down the old one and refuse it ("Job N already killed, do not
    launch batch job"), which fails the job."""
    wait_for(f"requeue {restarts}", lambda: job_field(job, "Restarts") == str(restarts)
             and job_field(job, "JobState") == "PENDING", log=log)
    wait_for(f"clean-up after requeue {restarts}", lambda: nodes_settled(job), log=log)
    time.sleep(5)   # slurmd finishes its own bookkeeping a moment after the node reads idle
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=20)


def test_job_is_requeued_twice_and_finishes_after_auto_resume(slurm, tmp_path):
    run = tmp_path / "run"
    tiny = ["--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1", "--model.pattern=(*-)x1",
            "--data.seq_len=64", "--data.batch_size=2", "--metrics.tensorboard=false", "--train.log_every=50",
            f"--train.steps={STEPS}", "--checkpoint.every=100", f"--train.run_dir={run}"]
    out = subprocess.run([sys.executable, "-m", "launch", "slurm", *slurm, "--time", "00:15:00",
                          "--job-name", "lw-test", *tiny], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    job = re.search(r"submitted job (\d+)", out.stdout).group(1)
    log = run / "logs" / f"lw-test-{job}.out"
    try:
        # 1) USR1 to the job's steps mid-run: save, exit 75, the wrapper requeues
        wait_for("step 5", lambda: len(read_step_log(run)) >= 5, log=log)
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=20)
        requeued_and_released(job, 1, log)
        first = read_exit_record(run)
        assert first["exit_code"] == 75 and first["reason"] == "SIGUSR1", first
        assert list_checkpoints(run / "checkpoints")[-1].name == f"step-{first['step']:07d}"
        # 2) scontrol requeue once the resumed run has made progress: SIGTERM, save, requeued by SLURM
        wait_for("progress after resume", lambda: max(read_step_log(run)) >= first["step"] + 5, log=log)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=20)
        requeued_and_released(job, 2, log)
        second = read_exit_record(run)
        assert second["exit_code"] == 75 and second["step"] > first["step"], second
        # 3) the third start resumes and finishes
        wait_for("completion", lambda: job_field(job, "JobState") == "COMPLETED", timeout=300, log=log)
    finally:
        if job_field(job, "JobState") not in ("COMPLETED", "FAILED", "CANCELLED", ""):
            subprocess.run(["scancel", job], timeout=20)
    text = log.read_text()
    nodes = int(slurm[1])
    for node in range(nodes):                             # one launcher per SLURM node, c10d across them
        assert f"launch: slurm node {node}/{nodes}" in text
    for stop in (first["step"], second["step"]):
        assert f"resumed from {run / 'checkpoints' / f'step-{stop:07d}'}" in text
    assert text.count("checkpoint saved; requeueing job") >= 1
    final = read_exit_record(run)
    assert final["exit_code"] == 0 and final["step"] == STEPS and final["slurm_restart_count"] == "2"
    assert sorted(read_step_log(run)) == list(range(1, STEPS + 1))
    status = subprocess.run([sys.executable, "-m", "launch", "status", str(run), "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    info = json.loads(status.stdout)
    assert info["checkpoints"][-1] == STEPS and info["job_state"] == "COMPLETED"
