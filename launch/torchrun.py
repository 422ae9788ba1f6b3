"""One torchrun agent per node, supervised so that preemption signals reach the trainer.

Why a supervisor instead of exec'ing torchrun:
- torchrun starts every worker in a new session and, on SIGTERM, kills them after 30 s;
  on SIGUSR1 it simply dies (default action) and orphans them. Neither lets the workers
  finish their step and write a checkpoint. So torchrun is started with USR1 and TERM
  ignored (and told to handle only SIGINT: `--signals-to-handle`), and the supervisor
  forwards USR1/TERM to the workers as the same signal (so exit.json names the true one):
  they agree on a step, save, and exit with the requeue code. Each worker gets the signal
  once, as soon as it catches it (/proc SigCgt): a worker still starting ignores it, and a
  repeat after its save could reach it while Python shuts down and kill it (torchrun's
  "Signal 10" report). After torchrun has exited, further signals are ignored: the outcome
  is already decided. (SLURM's own SIGTERM may reach the workers directly as well: same effect.)
- torchrun reports any worker failure as exit 1, so the requeue code (75) is lost; the
  trainer's rank 0 writes `<run>/exit.json` and the supervisor returns 75 from it. SLURM's
  srun then exits 75 and the batch wrapper (slurm/requeue.sh) requeues the job.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launch.env import NodeEnv
from train.preemption import EXIT_RECORD, REQUEUE_EXIT_CODE, read_exit_record


def torchrun_command(node: NodeEnv, nproc_per_node: int, train_args: list[str],
                     python: str = sys.executable) -> list[str]:
    """The torchrun command line for this node (single node: standalone; else c10d rendezvous)."""
    cmd = [python, "-m", "torch.distributed.run", f"--nnodes={node.nnodes}", f"--nproc-per-node={nproc_per_node}",
           "--max-restarts=0"]
    if torchrun_has_signals_flag():   # else TORCHELASTIC_SIGNALS_TO_HANDLE (see supervise) does the same
        cmd.append("--signals-to-handle=SIGINT")
    if node.nnodes == 1 and node.source == "local":
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={node.master_addr}:{node.master_port}",
                f"--rdzv-id={node.rdzv_id}", f"--rdzv-conf=is_host={int(node.node_rank == 0)}",
                f"--node-rank={node.node_rank}"]
    return [*cmd, "-m", "train", *train_args]


def torchrun_has_signals_flag() -> bool:
    """torch >= 2.8 sets TORCHELASTIC_SIGNALS_TO_HANDLE from `--signals-to-handle`, overriding the environment."""
    import dataclasses

    from torch.distributed.launcher.api import LaunchConfig

    return any(f.name == "signals_to_handle" for f in dataclasses.fields(LaunchConfig))


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (the torchrun workers), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler installed for `signum` (the SigCgt mask in /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def _ignore_preemption_signals() -> None:   # runs in the torchrun child before exec
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def supervise(cmd: list[str], run_dir: str | Path, clear_exit_record: bool = True, log=print) -> int:
    """Run torchrun, forward SIGUSR1/SIGTERM to its workers, return the trainer's exit code."""
    run_dir = Path(run_dir)
    if clear_exit_record:
        (run_dir / EXIT_RECORD).unlink(missing_ok=True)
    env = dict(os.environ, TORCHELASTIC_SIGNALS_TO_HANDLE="SIGINT")
    env.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_ignore_preemption_signals)

    requested: list[int] = []
    delivered: set[int] = set()

    def signal_workers() -> None:
        for pid in child_pids(proc.pid):
            if pid in delivered or not catches(pid, requested[0]):
                continue                  # already told, or still starting (it ignores the signal): later
            try:
                os.kill(pid, requested[0])
                delivered.add(pid)
            except ProcessLookupError:
                pass

    def forward(signum, frame) -> None:
        if not requested:
            log(f"launch: {signal.Signals(signum).name} received; asking {len(child_pids(proc.pid))} worker(s) "
                "to save a checkpoint and stop", flush=True)
        requested.append(signum)
        signal_workers()

    previous = {s: signal.signal(s, forward) for s in (signal.SIGUSR1, signal.SIGTERM)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, lambda s, f: None)   # torchrun handles Ctrl-C
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.5)   # (a handler run inside a blocking wait would not end it)
                break
            except subprocess.TimeoutExpired:
                if requested:   # workers still starting ignore the signal until the trainer's handler is in
                    signal_workers()
    finally:
        for s, handler in previous.items():
            # the run is over: a late preemption signal must not kill the launcher before it reports
            signal.signal(s, signal.SIG_IGN if requested and s != signal.SIGINT else handler)
    if rc != 0:
        record = read_exit_record(run_dir)
        fresh = record is not None and (run_dir / EXIT_RECORD).stat().st_mtime >= started - 5
        if fresh and record.get("exit_code") == REQUEUE_EXIT_CODE:
            log(f"launch: the trainer stopped at step {record.get('step')} ({record.get('reason')}) with a "
                f"checkpoint; exit {REQUEUE_EXIT_CODE} (requeue)", flush=True)
            return REQUEUE_EXIT_CODE
    return rc
