"""The launcher without torchrun: environment detection, layout checks, the exact torchrun
command of `launch local --dry-run`, validation before submission, status/resume records."""
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import launch.__main__ as cli
from launch.env import (
    LaunchError,
    NodeEnv,
    check_layout,
    detect,
    expand_hostlist,
    merge_explicit,
    port_for_job,
)
from launch.torchrun import torchrun_has_signals_flag
from train.config import ParallelConfig

SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NODEID": "1", "SLURM_NNODES": "3",
              "SLURM_STEP_NUM_NODES": "3", "SLURM_STEP_NODELIST": "gpu[07-09]", "SLURM_JOB_NODELIST": "gpu[07-09]",
              "SLURM_STEP_TASKS_PER_NODE": "1(x3)", "SLURM_GPUS_ON_NODE": "8", "SLURM_RESTART_COUNT": "2"}
SIGNALS = ["--signals-to-handle=SIGINT"] if torchrun_has_signals_flag() else []
TINY = ["--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1", "--model.pattern=(*-)x1",
        "--data.seq_len=32", "--data.batch_size=2", "--metrics.tensorboard=false"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith(("SLURM_", "PET_")) or k in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK",
                                                    "RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
            monkeypatch.delenv(k)


def test_expand_hostlist():
    assert expand_hostlist("gpu[07-09,12],login5") == ["gpu07", "gpu08", "gpu09", "gpu12", "login5"]
    assert expand_hostlist("a1,b[1-2]-ib") == ["a1", "b1-ib", "b2-ib"]
    assert expand_hostlist("node") == ["node"]


def test_detect_slurm_step():
    env = detect(SLURM_STEP)
    assert env == NodeEnv("slurm", 3, 1, "gpu07", port_for_job("4242"), "slurm-4242-2", "4242", 8)
    assert 20000 <= env.master_port < 40000
    assert detect({**SLURM_STEP, "MASTER_ADDR": "10.1.1.1", "MASTER_PORT": "1234"}).master_port == 1234


def test_detect_slurm_contradictions():
    batch = {k: v for k, v in SLURM_STEP.items() if not k.startswith("SLURM_STEP")}
    with pytest.raises(LaunchError, match="not inside a job step"):
        detect(batch)                                  # 3 nodes but run in the batch shell: only 1 would start
    assert detect({**batch, "SLURM_NNODES": "1"}).nnodes == 1
    with pytest.raises(LaunchError, match="ntasks-per-node=1"):
        detect({**SLURM_STEP, "SLURM_STEP_TASKS_PER_NODE": "8(x3)"})
    with pytest.raises(LaunchError, match="--nnodes 2 contradicts the slurm environment"):
        merge_explicit(detect(SLURM_STEP), 2, None, None, None, None)
    with pytest.raises(LaunchError, match="already inside a torchrun worker"):
        detect({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"})


def test_detect_torchrun_variables_and_local():
    env = detect({"MASTER_ADDR": "head", "MASTER_PORT": "29400", "PET_NNODES": "4", "PET_NODE_RANK": "3"})
    assert (env.source, env.nnodes, env.node_rank, env.master_addr, env.master_port) == ("torchrun", 4, 3, "head", 29400)
    assert detect({}).source == "local"
    with pytest.raises(LaunchError, match="outside 0..1"):
        merge_explicit(detect({}), 2, 2, None, None, None)


def test_check_layout():
    assert check_layout(ParallelConfig(tp=2, sp=2), 2, 4) == 8
    with pytest.raises(LaunchError, match="needs 4 processes but 2 node"):
        check_layout(ParallelConfig(dp=4), 2, 4)
    with pytest.raises(LaunchError, match="multiple of tp\\*pp\\*sp=3"):
        check_layout(ParallelConfig(pp=3), 1, 4)
    with pytest.raises(LaunchError, match="must share a node"):
        check_layout(ParallelConfig(tp=8), 2, 4)


def run_cli(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_local_dry_run_prints_exact_torchrun_command(capsys):
    rc, out, _ = run_cli(capsys, "local", "--dry-run", "--nproc-per-node", "2", "--train.steps=5")
    assert rc == 0
    assert out.strip() == shlex.join([sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                                      "--nproc-per-node=2", "--max-restarts=0", *SIGNALS, "--standalone", "-m", "train",
                                      "--config", "configs/tiny.toml", "--train.steps=5"])
    rc, out, _ = run_cli(capsys, "local", "--dry-run", "--nproc-per-node", "4", "--nnodes", "2", "--node-rank",
                         "1", "--master-addr", "10.0.0.1", "--master-port", "29400", "--rdzv-id", "exp7",
                         "--resume", "auto")
    assert rc == 0
    assert out.strip() == shlex.join([sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                                      "--nproc-per-node=4", "--max-restarts=0", *SIGNALS, "--rdzv-backend=c10d",
                                      "--rdzv-endpoint=10.0.0.1:29400", "--rdzv-id=exp7", "--rdzv-conf=is_host=0",
                                      "--node-rank=1", "-m", "train", "--config", "configs/tiny.toml",
                                      "--checkpoint.resume=auto"])


def test_local_dry_run_inside_slurm(capsys, monkeypatch):
    for k, v in SLURM_STEP.items():
        monkeypatch.setenv(k, v)
    rc, out, _ = run_cli(capsys, "local", "--dry-run", "--train.device=cpu")   # 8 GPUs on the node -> 8 procs
    assert rc == 0
    assert "--nnodes=3 --nproc-per-node=8 --max-restarts=0" in out
    assert f"--rdzv-backend=c10d --rdzv-endpoint=gpu07:" \
           f"{port_for_job('4242')} --rdzv-id=slurm-4242-2 --rdzv-conf=is_host=0 --node-rank=1" in out
    rc, _, err = run_cli(capsys, "local", "--dry-run", "--nnodes", "2")
    assert rc == 2 and "contradicts the slurm environment" in err


def test_bad_config_and_layout_never_reach_the_queue(capsys, monkeypatch, tmp_path):
    def no_submit(path):
        raise AssertionError("sbatch must not be called")

    monkeypatch.setattr("launch.sbatch.submit", no_submit)
    rc, out, err = run_cli(capsys, "slurm", "--nodes", "2", "--train.stepz=3", f"--train.run_dir={tmp_path}")
    assert rc == 2 and err.strip().count("\n") == 0 and "nearest valid key: 'train.steps'" in err
    rc, _, err = run_cli(capsys, "slurm", "--nodes", "2", "--gpus-per-node", "4", "--parallel.dp=4",
                         f"--train.run_dir={tmp_path}")
    assert rc == 2 and "needs 4 processes but 2 node(s) x 4 per node = 8" in err
    rc, _, err = run_cli(capsys, "slurm", "--time", "forever", f"--train.run_dir={tmp_path}")
    assert rc == 2 and "is not a SLURM time" in err
    rc, _, err = run_cli(capsys, "slurm", "--train.device=cuda", f"--train.run_dir={tmp_path}")
    assert rc == 2 and "--gpus-per-node is 0" in err
    assert not (tmp_path / "launch").exists()


def fake_sbatch(tmp_path, monkeypatch, job_id="777"):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {bindir}/calls\necho "{job_id};cluster"\n')
    (bindir / "sbatch").chmod(0o755)
    for client in ("squeue", "scontrol", "sacct"):           # shadow a real cluster's: job state unknown
        (bindir / client).write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
        (bindir / client).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return bindir / "calls"


def test_a_slurm_controller_that_does_not_answer_gives_an_unknown_state(monkeypatch, tmp_path):
    from launch import rundir

    fake_sbatch(tmp_path, monkeypatch)
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\nexec sleep 30\n")
    monkeypatch.setattr(rundir, "SLURM_QUERY_TIMEOUT", 0.5)
    start = time.monotonic()
    assert rundir.slurm_job_state("777") == ""
    assert time.monotonic() - start < 10
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\necho RUNNING\n")
    assert rundir.slurm_job_state("777") == "RUNNING"


def test_slurm_submit_status_and_resume(capsys, monkeypatch, tmp_path):
    calls = fake_sbatch(tmp_path, monkeypatch)
    run = tmp_path / "run"
    rc, out, _ = run_cli(capsys, "slurm", "--nproc-per-node", "2", "--time", "00:30:00", *TINY,
                         "--train.steps=7", f"--train.run_dir={run}")
    assert rc == 0 and "submitted job 777" in out
    scripts = sorted((run / "launch").glob("job-*.sbatch"))
    assert len(scripts) == 1 and calls.read_text().split() == ["--parsable", str(scripts[0])]
    assert f"--config {run / 'launch' / 'config.toml'} --resume auto" in scripts[0].read_text()
    from train.config import load_config

    resolved = load_config(run / "launch" / "config.toml")                 # the resolved config, validated
    assert resolved.train.steps == 7 and resolved.train.time_limit == 29.0  # --time 00:30:00 less a minute
    rc, out, _ = run_cli(capsys, "status", str(run), "--json")
    info = json.loads(out)
    assert info["checkpoints"] == [] and info["last_launch"]["job_id"] == "777" and info["total_steps"] == 7
    rc, out, _ = run_cli(capsys, "resume", str(run), "--train.steps=9")
    assert rc == 0 and "resubmitted" in out
    assert load_config(run / "launch" / "config.toml").train.steps == 9     # overrides update the job's config
    assert len(calls.read_text().splitlines()) == 2
    rc, _, err = run_cli(capsys, "resume", str(run), "--parallel.dp=3")
    assert rc == 2 and "needs 3 processes" in err


def test_status_and_resume_of_a_local_run(capsys, tmp_path):
    from train.config import load_config
    from train.loop import train

    run = tmp_path / "run"
    cfg = load_config("configs/tiny.toml", [*TINY, "--train.steps=3", f"--train.run_dir={run}",
                                            "--checkpoint.every=2", "--train.log_every=100"])
    train(cfg, log=lambda *a: None)
    rc, out, _ = run_cli(capsys, "status", str(run))
    assert rc == 0
    assert "checkpoints  2, newest step 3 of 3" in out and "last exit    0 at step 3 (finished)\n" in out
    assert "finished: finished" not in out
    rc, out, _ = run_cli(capsys, "resume", str(run), "--dry-run", "--train.steps=6")
    assert rc == 0
    assert out.strip().endswith(shlex.join(["-m", "train", "--config", str(run / "config.toml"),
                                            "--train.steps=6", "--checkpoint.resume=auto"]))
    rc, _, err = run_cli(capsys, "status", str(tmp_path / "nothing"))
    assert rc == 2


FAKE_WORKER = """
import json, os, signal, sys, time
run_dir, rank = sys.argv[1], int(sys.argv[2])
assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN     # inherited from torchrun: ignored until ready
time.sleep(1.0)                                               # 'importing torch': a signal now is lost
got = []
for s in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(s, lambda s, f: got.append(s))
t0 = time.time()
while not got and time.time() - t0 < 30:
    time.sleep(0.05)
time.sleep(1.5)                                               # 'saving'; a repeated signal would land here
if got and rank == 0:
    with open(os.path.join(run_dir, "exit.json"), "w") as fh:
        json.dump({"exit_code": 75, "step": 1, "reason": signal.Signals(got[0]).name, "got": len(got)}, fh)
for s in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(s, signal.SIG_DFL)                          # like Python's own shutdown: a late signal kills
time.sleep(1.0)
sys.exit(75 if got else 3)
"""
FAKE_TORCHRUN = """
import signal, subprocess, sys
assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
kids = [subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], str(r)]) for r in range(2)]
codes = [k.wait() for k in kids]
print("worker exit codes", codes, flush=True)             # a worker killed by a late signal shows as -N
sys.exit(1 if any(codes) else 0)   # like torchrun: any worker failure is exit 1
"""


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_supervisor_forwards_early_signals_and_restores_the_requeue_code(tmp_path, signum):
    """A signal that arrives while the workers still ignore it is repeated until they take it; the
    launcher turns torchrun's exit 1 back into 75 from exit.json (torch-free stand-ins, fast)."""
    code = ("import sys; from launch.torchrun import supervise; "
            f"sys.exit(supervise([sys.executable, '-c', {FAKE_TORCHRUN!r}, {FAKE_WORKER!r}, {str(tmp_path)!r}], "
            f"{str(tmp_path)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    from launch.torchrun import catches

    t0 = time.time()
    while not catches(proc.pid, signum) and time.time() - t0 < 120:   # the launcher's handler is in
        time.sleep(0.05)
    proc.send_signal(signum)
    time.sleep(0.3)
    proc.send_signal(signum)                                   # a second signal: still one save, still 75
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert f"{signal.Signals(signum).name} received" in out and "exit 75 (requeue)" in out
    record = json.loads((tmp_path / "exit.json").read_text())
    assert record["reason"] == signal.Signals(signum).name and record["got"] == 1   # the true signal, once
    assert "worker exit codes [75, 75]" in out                                      # none killed after its save


def test_supervisor_passes_real_failures_through(tmp_path):
    from launch.torchrun import supervise

    (tmp_path / "exit.json").write_text(json.dumps({"exit_code": 75, "step": 1}))    # stale: cleared at start
    assert supervise([sys.executable, "-c", "import sys; sys.exit(1)"], tmp_path, log=lambda *a, **k: None) == 1
    assert supervise([sys.executable, "-c", "pass"], tmp_path, log=lambda *a, **k: None) == 0


def test_launcher_runs_the_trainers_layout_validation(capsys, monkeypatch, tmp_path):
    """A layout the trainer would refuse (heads not divisible by tp, seq_len not divisible by sp) is
    one line and exit 2 at --dry-run, before torchrun or sbatch."""
    monkeypatch.setattr("launch.sbatch.submit", lambda path: (_ for _ in ()).throw(AssertionError("submitted")))
    rc, out, err = run_cli(capsys, "slurm", "--gpus-per-node", "3", "--parallel.tp=3", "--dry-run",
                           f"--train.run_dir={tmp_path}")
    assert rc == 2 and err.strip().count("\n") == 0 and "parallel.tp=3" in err and not out, err
    rc, out, err = run_cli(capsys, "local", "--nproc-per-node", "2", "--parallel.sp=2", "--data.seq_len=33",
                           "--dry-run", f"--train.run_dir={tmp_path}")
    assert rc == 2 and err.strip().count("\n") == 0 and "multiples of parallel.sp=2" in err and not out, err
    rc, out, _ = run_cli(capsys, "local", "--nproc-per-node", "2", "--parallel.sp=2", "--data.seq_len=32",
                         "--dry-run", f"--train.run_dir={tmp_path}")
    assert rc == 0 and "torch.distributed.run" in out
