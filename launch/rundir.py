"""What the launcher keeps in a run directory, and `launch status` / `launch resume` read back.

    <run>/launch/config.toml      the resolved, validated config every launch of this run uses
    <run>/launch/launches.jsonl   one line per launch: mode, command, script, SLURM job id
    <run>/launch/job-*.sbatch     rendered sbatch scripts
    <run>/config.toml, checkpoints/, metrics.jsonl, exit.json   written by the trainer
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from train.config import Config, dump_toml
from train.preemption import REQUEUE_EXIT_CODE, read_exit_record


def launch_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "launch"


def write_resolved_config(cfg: Config, run_dir: str | Path) -> Path:
    path = launch_dir(run_dir) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(cfg))
    return path


def record_launch(run_dir: str | Path, record: dict) -> None:
    path = launch_dir(run_dir) / "launches.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def launches(run_dir: str | Path) -> list[dict]:
    path = launch_dir(run_dir) / "launches.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# seconds one SLURM query may take: a controller that does not answer must not hang `launch status`
SLURM_QUERY_TIMEOUT = 15.0


def slurm_query(*argv: str) -> str:
    """stdout of a SLURM client command; "" if it fails or does not answer within SLURM_QUERY_TIMEOUT."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=SLURM_QUERY_TIMEOUT)
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout if out.returncode == 0 else ""


def slurm_job_state(job_id: str) -> str:
    """The job's state from squeue (queued/running) or sacct (finished); "" when neither answers."""
    if not job_id or not shutil.which("squeue"):
        return ""
    queued = slurm_query("squeue", "-h", "-j", job_id, "-o", "%T").split()
    if queued:
        return queued[0]
    m = re.search(r"JobState=(\S+)", slurm_query("scontrol", "show", "job", "-o", job_id))
    if m:
        return m.group(1)
    finished = slurm_query("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State").split() if shutil.which("sacct") else []
    return finished[0] if finished else ""


def status(run_dir: str | Path) -> dict:
    """Everything known about a run: config, checkpoints, progress, how it last ended, its jobs."""
    # imported here: torch.distributed.checkpoint is slow to import, and `status` is the only user
    from train.checkpoint import STEP_DIR, list_checkpoints
    from train.metrics import read_step_log

    run = Path(run_dir)
    info: dict = {"run_dir": str(run), "exists": run.is_dir()}
    cfg_path = launch_dir(run) / "config.toml"
    if not cfg_path.is_file():
        cfg_path = run / "config.toml"
    info["config"] = str(cfg_path) if cfg_path.is_file() else ""
    if info["config"]:
        from train.config import load_config

        cfg = load_config(cfg_path)
        info["total_steps"] = cfg.train.steps
        info["pattern"] = cfg.model.pattern
    ckpts = list_checkpoints(run / "checkpoints")
    info["checkpoints"] = [int(STEP_DIR.match(p.name).group(1)) for p in ckpts]
    info["incomplete_checkpoints"] = sorted(p.name for p in (run / "checkpoints").glob(".tmp-step-*")) \
        if (run / "checkpoints").is_dir() else []
    steps = read_step_log(run)
    if steps:
        last = steps[max(steps)]
        info["last_logged"] = {"step": last["step"], "loss": last.get("loss"), "time": last.get("time")}
    info["last_exit"] = read_exit_record(run)
    runs = launches(run)
    info["launches"] = len(runs)
    if runs:
        info["last_launch"] = runs[-1]
        job = runs[-1].get("job_id", "")
        if job:
            info["job_state"] = slurm_job_state(job)
    return info


def describe(info: dict) -> str:
    """`launch status` output: a few aligned lines a person reads at a glance."""
    lines = [f"run          {info['run_dir']}" + ("" if info["exists"] else "  (does not exist)")]
    if info.get("config"):
        lines.append(f"config       {info['config']}  (pattern {info['pattern']}, {info['total_steps']} steps)")
    ck = info["checkpoints"]
    total = info.get("total_steps")
    lines.append("checkpoints  " + (f"{len(ck)}, newest step {ck[-1]}" + (f" of {total}" if total else "")
                                    if ck else "none"))
    if info["incomplete_checkpoints"]:
        lines.append(f"incomplete   {', '.join(info['incomplete_checkpoints'])} (ignored by --resume auto)")
    if info.get("last_logged"):
        last = info["last_logged"]
        lines.append(f"last step    {last['step']}  loss {last['loss']:.4f}  at "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(last['time']))}")
    ex = info.get("last_exit")
    if ex:
        what = ("preempted, checkpoint saved: resume with `python -m launch resume " + info["run_dir"] + "`"
                if ex["exit_code"] == REQUEUE_EXIT_CODE else "finished" if ex["exit_code"] == 0 else "failed")
        why = f" ({ex['reason']})" if ex["reason"] else ""
        lines.append(f"last exit    {ex['exit_code']} at step {ex['step']}{why}" + ("" if what == ex["reason"] else f": {what}"))
    if info.get("last_launch"):
        ll = info["last_launch"]
        job = f"  job {ll['job_id']}" + (f" {info['job_state']}" if info.get("job_state") else "") \
            if ll.get("job_id") else ""
        lines.append(f"launched     {info['launches']} time(s), last: {ll['mode']}{job}")
    return "\n".join(lines)
