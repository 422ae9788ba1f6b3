"""Where am I launching? SLURM allocation, a torchrun-style multi-node set-up, or one machine.

The launcher runs one torchrun agent per node. What it needs to know about the node it is on
(number of nodes, this node's rank, the rendezvous host and port, a rendezvous id) comes from:
1. SLURM (`SLURM_JOB_ID` with `SLURM_NNODES`, `SLURM_NODEID`, `SLURM_JOB_NODELIST`): the first
   host of the allocation hosts the c10d rendezvous; the port is derived from the job id, so
   every node computes the same endpoint without talking to the others;
2. torchrun-style variables (`MASTER_ADDR`, `MASTER_PORT`, `NNODES`/`PET_NNODES`,
   `NODE_RANK`/`PET_NODE_RANK`), as set by Kubernetes PyTorchJob and most cluster wrappers;
3. nothing: one node, a standalone rendezvous on localhost.
Explicit command-line values win only when they agree with the scheduler; a contradiction is a
one-line LaunchError, as is a process count the config's parallel layout cannot use.
"""
from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass


class LaunchError(RuntimeError):
    """A launch that cannot work (one line saying what is wrong and how to fix it); exit code 2."""


@dataclass(frozen=True)
class NodeEnv:
    source: str                 # "slurm" | "torchrun" | "local"
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    rdzv_id: str = "longweave"
    job_id: str = ""
    gpus_on_node: int | None = None   # what the scheduler gave this node (None: unknown)


def expand_hostlist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed host list: "gpu[01-03,07],login5" -> gpu01 gpu02 gpu03 gpu07 login5."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo)
            for i in range(int(lo), int(hi) + 1):
                hosts.append(f"{prefix}{i:0{width}d}{suffix}")
    return hosts


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (our own parser; `scontrol show hostnames` if it disagrees)."""
    try:
        hosts = expand_hostlist(nodelist)
    except ValueError:
        hosts = []
    if hosts:
        return hosts[0]
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False)
    if out.returncode != 0 or not out.stdout.split():
        raise LaunchError(f"cannot read the host list SLURM_JOB_NODELIST={nodelist!r}; set MASTER_ADDR")
    return out.stdout.split()[0]


def port_for_job(job_id: str, base: int = 20000, span: int = 20000) -> int:
    """A rendezvous port every node of a job derives alike (two jobs sharing a first node rarely collide)."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return base + int(digits) % span


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name, "")
        if value.strip():
            try:
                return int(value.split("(")[0])   # SLURM_GPUS_ON_NODE may read "4(x2)" in old versions
            except ValueError:
                raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def detect(env: Mapping[str, str] | None = None) -> NodeEnv:
    """This node's launch environment (see the module docstring for the precedence)."""
    env = os.environ if env is None else env
    if env.get("RANK") and env.get("LOCAL_RANK") and env.get("WORLD_SIZE") and env.get("TORCHELASTIC_RUN_ID"):
        raise LaunchError("already inside a torchrun worker (RANK/LOCAL_RANK set); run `python -m train` "
                          "directly instead of `python -m launch`")
    if env.get("SLURM_JOB_ID"):
        return _detect_slurm(env)
    nnodes = _int(env, "NNODES", "PET_NNODES")
    node_rank = _int(env, "NODE_RANK", "PET_NODE_RANK", "GROUP_RANK")
    if env.get("MASTER_ADDR") and (nnodes or node_rank is not None):
        port = _int(env, "MASTER_PORT") or 29500
        return NodeEnv("torchrun", nnodes or 1, node_rank or 0, env["MASTER_ADDR"], port,
                       env.get("PET_RDZV_ID") or env.get("RDZV_ID") or "longweave")
    return NodeEnv("local", master_port=_int(env, "MASTER_PORT") or 29500)


def _detect_slurm(env: Mapping[str, str]) -> NodeEnv:
    in_step = env.get("SLURM_STEP_ID", "batch") not in ("batch", "extern", "interactive")
    nnodes = _int(env, "SLURM_STEP_NUM_NODES" if in_step else "SLURM_NNODES", "SLURM_NNODES",
                  "SLURM_JOB_NUM_NODES") or 1
    if not in_step and nnodes > 1:
        raise LaunchError(f"this SLURM allocation has {nnodes} nodes but the launcher is not inside a job step; "
                          "run it as `srun --ntasks-per-node=1 python -m launch local ...`")
    tasks = env.get("SLURM_STEP_TASKS_PER_NODE", "1") if in_step else "1"
    if any(int(t.split("(")[0]) > 1 for t in tasks.split(",") if t.split("(")[0].isdigit()):
        raise LaunchError(f"SLURM started {tasks} launcher tasks per node; torchrun starts the per-GPU "
                          "processes itself, so use `srun --ntasks-per-node=1`")
    job_id = env["SLURM_JOB_ID"]
    node_rank = _int(env, "SLURM_NODEID") or 0
    nodelist = (env.get("SLURM_STEP_NODELIST") if in_step else None) or env.get("SLURM_JOB_NODELIST") \
        or env.get("SLURM_NODELIST", "")
    addr = env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else "127.0.0.1")
    port = _int(env, "MASTER_PORT") or port_for_job(job_id)
    restart = env.get("SLURM_RESTART_COUNT", "0")
    return NodeEnv("slurm", nnodes, node_rank, addr, port, f"slurm-{job_id}-{restart}", job_id,
                   _int(env, "SLURM_GPUS_ON_NODE"))


def merge_explicit(found: NodeEnv, nnodes: int | None, node_rank: int | None,
                   master_addr: str | None, master_port: int | None, rdzv_id: str | None) -> NodeEnv:
    """Apply command-line values; under a scheduler they must agree with what it says."""
    if found.source != "local":
        for name, given, have in (("--nnodes", nnodes, found.nnodes), ("--node-rank", node_rank, found.node_rank)):
            if given is not None and given != have:
                raise LaunchError(f"{name} {given} contradicts the {found.source} environment ({have}); "
                                  f"drop {name} or launch outside the allocation")
    nn = nnodes if nnodes is not None else found.nnodes
    nr = node_rank if node_rank is not None else found.node_rank
    if nn < 1:
        raise LaunchError(f"--nnodes {nn} must be >= 1")
    if not 0 <= nr < nn:
        raise LaunchError(f"node rank {nr} is outside 0..{nn - 1}; give --node-rank between 0 and --nnodes - 1")
    return NodeEnv(found.source, nn, nr, master_addr or found.master_addr, master_port or found.master_port,
                   rdzv_id or found.rdzv_id, found.job_id, found.gpus_on_node)


def check_layout(parallel_cfg, nnodes: int, nproc_per_node: int) -> int:
    """The world size nnodes·nproc_per_node must fit the config's (dp, pp, tp, sp); returns it."""
    world = nnodes * nproc_per_node
    inner = parallel_cfg.tp * parallel_cfg.pp * parallel_cfg.sp
    layout = f"dp={parallel_cfg.dp} pp={parallel_cfg.pp} tp={parallel_cfg.tp} sp={parallel_cfg.sp}"
    if min(parallel_cfg.tp, parallel_cfg.pp, parallel_cfg.sp) < 1:
        raise LaunchError(f"parallel layout {layout} has a size below 1; tp, pp and sp must be >= 1")
    if parallel_cfg.dp > 0 and parallel_cfg.dp * inner != world:
        raise LaunchError(f"parallel layout {layout} needs {parallel_cfg.dp * inner} processes but "
                          f"{nnodes} node(s) x {nproc_per_node} per node = {world}; set parallel.dp=-1 "
                          "or change --nnodes/--nproc-per-node")
    if world % inner:
        raise LaunchError(f"parallel layout {layout} needs a multiple of tp*pp*sp={inner} processes but "
                          f"{nnodes} node(s) x {nproc_per_node} per node = {world}")
    if parallel_cfg.tp > nproc_per_node or nproc_per_node % parallel_cfg.tp:
        raise LaunchError(f"parallel.tp={parallel_cfg.tp} must divide the {nproc_per_node} processes per node "
                          "(tensor-parallel ranks exchange activations every layer and must share a node)")
    return world
