"""`python -m launch local|slurm|status|resume` (console script: `longweave-launch`).

    python -m launch local  --config configs/tiny.toml --nproc-per-node 2 [--dry-run] [--train.steps=50]
    python -m launch slurm  --config configs/X.toml --nodes 4 --gpus-per-node 8 --time 12:00:00 [--dry-run]
    python -m launch status runs/tiny
    python -m launch resume runs/tiny [--dry-run] [--train.steps=600]

Every config is loaded and validated (and the process count checked against its parallel
layout) before anything starts or reaches the queue: a bad config is one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from launch import rundir
from launch.env import LaunchError, NodeEnv, check_layout, detect, merge_explicit
from train.config import Config, ConfigError, load_config


def check_run(cfg: Config, nnodes: int, nproc_per_node: int) -> int:
    """The process count against the layout (launch-specific: whole nodes, tp inside a node), then the
    trainer's own full layout validation (train/layout_check.py) with that world size."""
    from data.errors import DataError
    from parallel.dims import LayoutError
    from train.layout_check import validate_run_layout

    world = check_layout(cfg.parallel, nnodes, nproc_per_node)
    try:
        validate_run_layout(cfg, world)
    except (LayoutError, DataError) as e:
        raise LaunchError(f"{e} (the trainer would refuse this layout at start)") from None
    return world


def default_nproc(cfg: Config, node: NodeEnv) -> int:
    """GPUs on the node when training on GPUs; on CPU, what the parallel layout asks for (at least 1)."""
    if node.gpus_on_node:
        return node.gpus_on_node
    if cfg.train.device != "cpu":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    p = cfg.parallel
    inner = p.tp * p.pp * p.sp
    world = p.dp * inner if p.dp > 0 else inner
    return max(1, world // node.nnodes)


def cmd_local(args, overrides: list[str]) -> int:
    from launch.torchrun import supervise, torchrun_command

    if args.resume is not None:
        overrides = [*overrides, f"--checkpoint.resume={args.resume}"]
    cfg = load_config(args.config, overrides)
    node = merge_explicit(detect(), args.nnodes, args.node_rank, args.master_addr, args.master_port, args.rdzv_id)
    nproc = args.nproc_per_node or default_nproc(cfg, node)
    if cfg.train.device == "cuda" and node.gpus_on_node is not None and nproc > node.gpus_on_node:
        raise LaunchError(f"{nproc} processes per node but SLURM gave this node {node.gpus_on_node} GPU(s); "
                          "match --nproc-per-node to --gpus-per-node")
    check_run(cfg, node.nnodes, nproc)
    cmd = torchrun_command(node, nproc, ["--config", str(args.config), *overrides])
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    if node.node_rank == 0 and node.source != "slurm":   # a SLURM job's record is its submission
        rundir.record_launch(cfg.train.run_dir, {"mode": "local", "config": str(Path(args.config).absolute()),
                                                 "overrides": overrides, "nnodes": node.nnodes,
                                                 "nproc_per_node": nproc, "env": node.source,
                                                 "job_id": node.job_id, "command": cmd})
    print(f"launch: {node.source} node {node.node_rank}/{node.nnodes}, {nproc} process(es): {shlex.join(cmd)}",
          flush=True)
    return supervise(cmd, cfg.train.run_dir, clear_exit_record=node.node_rank == 0)


def slurm_spec(args):
    from launch.sbatch import SlurmSpec

    exports = {}
    for item in args.export:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise LaunchError(f"--export {item!r} must look like NAME=value")
        exports[key] = value
    return SlurmSpec(nodes=args.nodes, gpus_per_node=args.gpus_per_node, nproc_per_node=args.nproc_per_node,
                     cpus_per_task=args.cpus_per_task, time=args.time, partition=args.partition,
                     account=args.account, qos=args.qos, constraint=args.constraint, mem=args.mem,
                     job_name=args.job_name or Path(args.config).stem, log_dir=args.log_dir,
                     signal_lead=args.signal_lead, max_requeues=args.max_requeues, extra=args.sbatch_arg,
                     exports=exports)


def submit_slurm(cfg: Config, spec, dry_run: bool, origin: dict) -> int:
    from launch.sbatch import render, submit

    spec.check()
    nproc = spec.processes_per_node()
    check_run(cfg, spec.nodes, nproc)
    if cfg.train.device == "cuda" and not spec.gpus_per_node:
        raise LaunchError("train.device=cuda but --gpus-per-node is 0; ask for GPUs or set train.device=cpu")
    if cfg.train.time_limit == 0:
        # A second line of defence behind `--signal=B:USR1@lead`: the trainer itself stops when the
        # measured step + save time no longer fits (a minute is left for start-up before train()).
        from launch.sbatch import slurm_minutes

        cfg.train.time_limit = max(1.0, slurm_minutes(spec.time) - 1.0)
    run_dir = Path(cfg.train.run_dir).absolute()
    config_path = rundir.launch_dir(run_dir) / "config.toml"
    script = render(spec, config_path, run_dir)
    if dry_run:
        print(script, end="")
        return 0
    rundir.write_resolved_config(cfg, run_dir)
    script_path = rundir.launch_dir(run_dir) / f"job-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    script_path.write_text(script)
    Path(spec.log_dir or run_dir / "logs").mkdir(parents=True, exist_ok=True)
    job_id = submit(script_path)
    rundir.record_launch(run_dir, {"mode": "slurm", "job_id": job_id, "script": str(script_path),
                                   "nnodes": spec.nodes, "nproc_per_node": nproc, **origin})
    print(f"submitted job {job_id}: {spec.nodes} node(s) x {nproc} process(es); script {script_path}")
    print(f"logs: {Path(spec.log_dir or run_dir / 'logs')}/{spec.job_name}-{job_id}.out; "
          f"status: python -m launch status {run_dir}")
    return 0


def cmd_slurm(args, overrides: list[str]) -> int:
    cfg = load_config(args.config, overrides)
    origin = {"config": str(Path(args.config).absolute()), "overrides": overrides}
    return submit_slurm(cfg, slurm_spec(args), args.dry_run, origin)


def cmd_status(args, overrides: list[str]) -> int:
    if overrides:
        raise LaunchError(f"status takes a run directory only; unexpected {' '.join(overrides)}")
    info = rundir.status(args.run_dir)
    print(json.dumps(info, indent=2, default=str) if args.json else rundir.describe(info))
    return 0 if info["exists"] else 2   # a path that is not a run is a user error


ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD"}


def cmd_resume(args, overrides: list[str]) -> int:
    """Start a run again the way it was last launched, from its newest checkpoint."""
    run = Path(args.run_dir)
    info = rundir.status(run)
    if not info["config"]:
        raise LaunchError(f"{run} has no config.toml; is it a run directory (train.run_dir)?")
    last = info.get("last_launch") or {"mode": "local", "nproc_per_node": 0, "nnodes": 1}
    if info.get("job_state") in ACTIVE_STATES:
        raise LaunchError(f"job {last['job_id']} of this run is still {info['job_state']}; wait for it or "
                          f"`scancel {last['job_id']}` first")
    cfg = load_config(info["config"], overrides)
    if Path(cfg.train.run_dir).absolute() != run.absolute():
        overrides = [*overrides, f"--train.run_dir={run}"]
        cfg = load_config(info["config"], overrides)
    if last["mode"] == "slurm":
        from launch.sbatch import submit

        script = Path(last.get("script", ""))
        if not script.is_file():
            raise LaunchError(f"the last job's sbatch script {script} is gone; submit again with "
                              f"`python -m launch slurm --config {info['config']} ...`")
        check_run(cfg, last["nnodes"], last["nproc_per_node"])
        if args.dry_run:
            print(script.read_text(), end="")
            return 0
        if overrides:   # the script runs <run>/launch/config.toml: update it, validated above
            rundir.write_resolved_config(cfg, run)
        job_id = submit(script)
        rundir.record_launch(run, {**last, "job_id": job_id, "resumed": True, "overrides": overrides})
        print(f"resubmitted {script} as job {job_id}; status: python -m launch status {run}")
        return 0
    ns = argparse.Namespace(config=info["config"], resume="auto", dry_run=args.dry_run,
                            nproc_per_node=last.get("nproc_per_node") or 0, nnodes=last.get("nnodes") or 1,
                            node_rank=None, master_addr=None, master_port=None, rdzv_id=None)
    if ns.nnodes > 1:
        print(f"note: this run used {ns.nnodes} nodes; run this on every node with --node-rank", file=sys.stderr)
    return cmd_local(ns, overrides)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch", description="Launch longweave training runs.")
    sub = p.add_subparsers(dest="command", required=True)
    loc = sub.add_parser("local", help="torchrun on this node (also used on every node of a SLURM job)")
    loc.add_argument("--config", default="configs/tiny.toml")
    loc.add_argument("--nproc-per-node", type=int, default=0, help="processes on this node (default: GPUs, "
                     "or what the parallel layout needs on CPU)")
    loc.add_argument("--nnodes", type=int, default=None)
    loc.add_argument("--node-rank", type=int, default=None)
    loc.add_argument("--master-addr", default=None, help="rendezvous host (multi-node; default from SLURM/env)")
    loc.add_argument("--master-port", type=int, default=None)
    loc.add_argument("--rdzv-id", default=None)
    loc.add_argument("--resume", default=None, help="none | auto | checkpoint directory")
    loc.add_argument("--dry-run", action="store_true", help="print the torchrun command and exit")
    sl = sub.add_parser("slurm", help="render slurm/train.sbatch and submit it with sbatch")
    sl.add_argument("--config", default="configs/tiny.toml")
    sl.add_argument("--nodes", type=int, default=1)
    sl.add_argument("--gpus-per-node", type=int, default=0)
    sl.add_argument("--nproc-per-node", type=int, default=0, help="CPU jobs: processes per node")
    sl.add_argument("--cpus-per-task", type=int, default=0)
    sl.add_argument("--time", default="04:00:00")
    for name in ("partition", "account", "qos", "constraint", "mem", "job-name", "log-dir"):
        sl.add_argument(f"--{name}", default="")
    sl.add_argument("--signal-lead", type=int, default=120, help="seconds before the limit to save and requeue")
    sl.add_argument("--max-requeues", type=int, default=20)
    sl.add_argument("--sbatch-arg", action="append", default=[], help="extra #SBATCH flag (repeatable)")
    sl.add_argument("--export", action="append", default=[], help="NAME=value exported in the job (repeatable)")
    sl.add_argument("--dry-run", action="store_true", help="print the sbatch script instead of submitting it")
    st = sub.add_parser("status", help="checkpoints, progress, last exit and jobs of a run directory")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true")
    rs = sub.add_parser("resume", help="launch a run again, the way it was launched, from its newest checkpoint")
    rs.add_argument("run_dir")
    rs.add_argument("--dry-run", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    handler = {"local": cmd_local, "slurm": cmd_slurm, "status": cmd_status, "resume": cmd_resume}[args.command]
    try:
        return handler(args, overrides)
    except (ConfigError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
