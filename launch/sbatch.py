"""Render slurm/train.sbatch for a validated run and submit it with sbatch.

The template holds the fixed shape of every job (one launcher task per node, `--signal=B:USR1@lead`,
`--requeue`, the requeue wrapper); this module fills in the job's resources and the optional
`#SBATCH` lines (partition, account, qos, constraint, GPUs, memory, extra flags). The job runs the
*resolved* config written into the run directory at submit time, so what the queue runs is
exactly what was validated, even if the recipe file changes while the job waits.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launch.env import LaunchError

REPO = Path(__file__).resolve().parent.parent


def template_path() -> Path:
    """slurm/train.sbatch from the checkout or the installed wheel's share/longweave."""
    from train.assets import find_asset

    found = find_asset("slurm/train.sbatch")
    if found is None:
        raise LaunchError("slurm/train.sbatch is not installed; reinstall longweave or run from its checkout")
    return found
TIME_FORMAT = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@dataclass
class SlurmSpec:
    nodes: int = 1
    gpus_per_node: int = 0
    nproc_per_node: int = 0           # 0: gpus_per_node (or 1 on CPU)
    cpus_per_task: int = 0            # 0: sinfo's CPUs per node for GPU jobs, one per process on CPU
    time: str = "04:00:00"
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    mem: str = ""
    job_name: str = "longweave"
    log_dir: str = ""                 # default: <run>/logs
    signal_lead: int = 120            # seconds before the limit at which USR1 arrives
    max_requeues: int = 20
    extra: list[str] = field(default_factory=list)   # more `#SBATCH` flags, e.g. --exclusive
    exports: dict[str, str] = field(default_factory=dict)

    def processes_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node or 1

    def check(self) -> None:
        if self.nodes < 1:
            raise LaunchError(f"--nodes {self.nodes} must be >= 1")
        if self.gpus_per_node < 0 or self.nproc_per_node < 0 or self.cpus_per_task < 0:
            raise LaunchError("--gpus-per-node, --nproc-per-node and --cpus-per-task must be >= 0")
        if self.gpus_per_node and self.nproc_per_node and self.nproc_per_node != self.gpus_per_node:
            raise LaunchError(f"--nproc-per-node {self.nproc_per_node} differs from --gpus-per-node "
                              f"{self.gpus_per_node}; each process drives one GPU, drop --nproc-per-node")
        if not TIME_FORMAT.match(self.time):
            raise LaunchError(f"--time {self.time!r} is not a SLURM time; write e.g. 04:00:00 or 1-12:00:00")
        if self.signal_lead < 1:
            raise LaunchError(f"--signal-lead {self.signal_lead} must be >= 1 second")
        for flag in self.extra:
            if not flag.startswith("--") or "\n" in flag:
                raise LaunchError(f"--sbatch-arg {flag!r} must be one sbatch flag such as --exclusive")


def slurm_minutes(value: str) -> float:
    """SLURM's --time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in minutes."""
    if not TIME_FORMAT.match(value):
        raise LaunchError(f"--time {value!r} is not a SLURM time; write e.g. 04:00:00 or 1-12:00:00")
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, sec = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, sec = parts
    else:
        h, m, sec = 0, parts[0], (parts + [0])[1]
    return (int(days or 0) * 24 + h) * 60 + m + sec / 60


def partition_cpus(partition: str) -> int | None:
    """CPUs per node that `sinfo` reports for `partition` (the smallest, if nodes differ); None if it cannot say."""
    cmd = ["sinfo", "-h", "-o", "%c", *(["-p", partition] if partition else [])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    counts = [int(m.group()) for line in out.stdout.split() if (m := re.match(r"\d+", line))]
    return min(counts) if out.returncode == 0 and counts else None


def cpus_per_task(spec: SlurmSpec) -> tuple[int, str]:
    """(CPUs for the one task per node, where that number comes from) -- said in the rendered script.

    GPU nodes differ too much (32 to 224 CPUs for 8 GPUs) for a fixed guess: without
    --cpus-per-task the partition's CPUs per node come from sinfo, and without sinfo it is an error.
    """
    if spec.cpus_per_task:
        return spec.cpus_per_task, "from --cpus-per-task"
    if not spec.gpus_per_node:
        return spec.processes_per_node(), "one per process (CPU job; --cpus-per-task sets it)"
    cpus = partition_cpus(spec.partition)
    if cpus is None:
        raise LaunchError("GPU jobs need --cpus-per-task (the CPUs of one node for its "
                          f"{spec.processes_per_node()} processes, e.g. --cpus-per-task 64); sinfo could not say "
                          "how many the partition's nodes have")
    where = f"partition {spec.partition}" if spec.partition else "the default partition"
    return cpus, f"the CPUs per node sinfo reports for {where} (--cpus-per-task overrides)"


def render(spec: SlurmSpec, config_path: str | Path, run_dir: str | Path,
           python: str = sys.executable, workdir: str | Path | None = None) -> str:
    """The sbatch script text for `spec`, running `python -m launch local` on the resolved config."""
    spec.check()
    nproc = spec.processes_per_node()
    cpus, cpus_source = cpus_per_task(spec)
    template = template_path()
    directives = []
    if spec.gpus_per_node:
        directives.append(f"--gpus-per-node={spec.gpus_per_node}")
    directives.append(f"--cpus-per-task={cpus}")
    for flag, value in (("partition", spec.partition), ("account", spec.account), ("qos", spec.qos),
                        ("constraint", spec.constraint), ("mem", spec.mem)):
        if value:
            directives.append(f"--{flag}={value}")
    directives += spec.extra
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(spec.exports.items()))
    values = {
        "job_name": re.sub(r"[^\w.-]", "_", spec.job_name), "nodes": spec.nodes, "time": spec.time,
        "log_dir": shlex.quote(str(Path(spec.log_dir or Path(run_dir) / "logs").absolute())),
        "signal_lead": spec.signal_lead,
        "directives": "\n".join(f"#SBATCH {d}" for d in directives),
        "workdir": shlex.quote(str(Path(workdir or Path.cwd()).absolute())),
        "repo": shlex.quote(str(template.parent.parent)), "python": shlex.quote(python),
        "omp_threads": max(1, cpus // nproc), "max_requeues": spec.max_requeues, "exports": exports,
        "cpus_per_task": cpus, "nproc_per_node": nproc, "cpus_source": cpus_source,
        # the step asks for the GPUs itself: since SLURM 22.05 srun no longer inherits some job options
        "srun_gpus": f" --gpus-per-node={spec.gpus_per_node}" if spec.gpus_per_node else "",
        "config": shlex.quote(str(Path(config_path).absolute())),
        "run_dir": shlex.quote(str(Path(run_dir).absolute())),
    }
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    left = re.findall(r"\{\{(\w+)\}\}", text)
    if left:
        raise RuntimeError(f"slurm/train.sbatch has placeholders the launcher does not fill: {left}")
    return text


def submit(script_path: str | Path) -> str:
    """`sbatch --parsable script`; returns the job id."""
    try:
        out = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise LaunchError("sbatch not found; run on a SLURM login node, or use --dry-run to only print "
                          "the script") from None
    if out.returncode != 0:
        raise LaunchError(f"sbatch rejected {script_path}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip().split(";")[0]
