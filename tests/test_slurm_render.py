"""slurm/train.sbatch as rendered for several layouts (valid bash, the expected #SBATCH lines),
and slurm/requeue.sh's behaviour with a stand-in job step and a fake `scontrol`."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch.env import LaunchError
from launch.sbatch import REPO, SlurmSpec, render

REQUEUE = REPO / "slurm" / "requeue.sh"


def bash_n(text: str, tmp_path: Path) -> None:
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def directives(text: str) -> list[str]:
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH")]


LAYOUTS = [
    (SlurmSpec(nodes=1, nproc_per_node=2, time="00:20:00"),
     ["--nodes=1", "--ntasks-per-node=1", "--time=00:20:00", "--cpus-per-task=2", "--signal=B:USR1@120",
      "--requeue", "--open-mode=append"],
     "--nproc-per-node=2", ["--gpus-per-node", "--partition", "--account"]),
    (SlurmSpec(nodes=2, gpus_per_node=8, time="1-00:00:00", partition="gpu", account="proj42", qos="high",
               constraint="h100", signal_lead=300, job_name="mamba 370m", cpus_per_task=64),
     ["--nodes=2", "--gpus-per-node=8", "--cpus-per-task=64", "--partition=gpu", "--account=proj42",
      "--qos=high", "--constraint=h100", "--signal=B:USR1@300", "--time=1-00:00:00", "--job-name=mamba_370m"],
     "--nproc-per-node=8", ["--mem"]),
    (SlurmSpec(nodes=16, gpus_per_node=4, cpus_per_task=32, mem="0", extra=["--exclusive"],
               exports={"NCCL_DEBUG": "WARN"}, max_requeues=3),
     ["--nodes=16", "--gpus-per-node=4", "--cpus-per-task=32", "--mem=0", "--exclusive"],
     "--nproc-per-node=4", ["--partition"]),
]


@pytest.mark.parametrize("spec,expected,nproc,absent", LAYOUTS)
def test_rendered_sbatch(tmp_path, spec, expected, nproc, absent):
    text = render(spec, tmp_path / "run" / "launch" / "config.toml", tmp_path / "run", python="/opt/py/bin/python")
    bash_n(text, tmp_path)
    lines = directives(text)
    for flag in expected:
        assert flag in lines, (flag, lines)
    for flag in absent:
        assert not any(line.startswith(flag) for line in lines), (flag, lines)
    assert f"--output={tmp_path / 'run' / 'logs'}/%x-%j.out" in lines
    assert "{{" not in text
    assert f"bash {REPO}/slurm/requeue.sh" in text
    gpus = f" --gpus-per-node={spec.gpus_per_node}" if spec.gpus_per_node else ""
    cpus = spec.cpus_per_task or (8 * spec.gpus_per_node or 2)
    assert f"srun --ntasks-per-node=1 --cpus-per-task={cpus}{gpus} --kill-on-bad-exit=1" in text
    assert (f"/opt/py/bin/python -m launch local {nproc} --config {tmp_path / 'run' / 'launch' / 'config.toml'}"
            " --resume auto") in text
    assert f"export LONGWEAVE_MAX_REQUEUES={spec.max_requeues}" in text
    assert f"export LONGWEAVE_RUN_DIR={tmp_path / 'run'}" in text
    for key, value in spec.exports.items():
        assert f"export {key}={value}" in text
    # every #SBATCH line comes before the first command, or sbatch ignores it
    first_cmd = next(i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_cmd for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))


def test_cli_dry_run_is_valid_bash(tmp_path, capsys):
    from launch.__main__ import main

    rc = main(["slurm", "--dry-run", "--nodes", "4", "--gpus-per-node", "8", "--cpus-per-task", "64",
               "--partition", "batch", "--parallel.tp=4", f"--train.run_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0
    bash_n(out, tmp_path)
    assert "--nodes=4" in directives(out) and "--partition=batch" in directives(out)


def test_gpu_cpus_come_from_the_flag_or_sinfo_and_the_script_says_which(tmp_path, monkeypatch, capsys):
    from launch.__main__ import main

    monkeypatch.setattr("launch.sbatch.partition_cpus", lambda partition: None)   # no sinfo here
    args = ["slurm", "--dry-run", "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu", "--parallel.tp=4",
            f"--train.run_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "GPU jobs need --cpus-per-task" in err and err.count("\n") == 1
    monkeypatch.setattr("launch.sbatch.partition_cpus", lambda partition: {"gpu": 96}.get(partition))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "--cpus-per-task=96" in directives(out)
    assert "# --cpus-per-task=96: the CPUs per node sinfo reports for partition gpu" in out
    assert main([*args, "--cpus-per-task", "48"]) == 0
    out = capsys.readouterr().out
    assert "--cpus-per-task=48" in directives(out) and "# --cpus-per-task=48: from --cpus-per-task" in out
    cpu = render(SlurmSpec(nproc_per_node=3), tmp_path / "c.toml", tmp_path)
    assert "--cpus-per-task=3" in directives(cpu) and "one per process (CPU job" in cpu


def test_slurm_minutes():
    from launch.sbatch import slurm_minutes

    assert slurm_minutes("30") == 30 and slurm_minutes("30:30") == 30.5 and slurm_minutes("02:10:00") == 130
    assert slurm_minutes("1-00") == 1440 and slurm_minutes("1-02:30") == 1590 and slurm_minutes("2-00:00:30") == 2880.5
    with pytest.raises(LaunchError, match="not a SLURM time"):
        slurm_minutes("1h")


def test_spec_errors():
    with pytest.raises(LaunchError, match="drop --nproc-per-node"):
        SlurmSpec(gpus_per_node=8, nproc_per_node=4).check()
    with pytest.raises(LaunchError, match="one sbatch flag"):
        SlurmSpec(extra=["exclusive"]).check()


def fake_bin(tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.calls\n')
    (bindir / "scontrol").chmod(0o755)
    return bindir


STEP = """trap 'echo step got USR1; sleep 0.2; exit 75' USR1
echo step started; for i in $(seq 30); do sleep 0.05; done; exit {code}"""


def run_wrapper(tmp_path, code=0, signal_after=None, env=None, step=None):
    env = {**os.environ, "PATH": f"{fake_bin(tmp_path)}:{os.environ['PATH']}", **(env or {})}
    proc = subprocess.Popen(["bash", str(REQUEUE), "bash", "-c", step or STEP.format(code=code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if signal_after is not None:
        time.sleep(signal_after)
        proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    calls = tmp_path / "scontrol.calls"
    return proc.returncode, out, calls.read_text() if calls.exists() else ""


def test_requeue_wrapper_forwards_usr1_and_requeues(tmp_path):
    rc, out, calls = run_wrapper(tmp_path, signal_after=0.7, env={"SLURM_JOB_ID": "55", "SLURM_RESTART_COUNT": "1"})
    assert "step got USR1" in out and "training step exited with 75" in out
    assert calls.split() == ["requeue", "55"] and rc == 0


def test_requeue_wrapper_passes_other_codes_and_caps_requeues(tmp_path):
    rc, out, calls = run_wrapper(tmp_path, code=3, env={"SLURM_JOB_ID": "55"})
    assert rc == 3 and calls == ""
    (tmp_path / "bin").rename(tmp_path / "bin0")
    rc, out, calls = run_wrapper(tmp_path, code=75, env={"SLURM_JOB_ID": "55", "SLURM_RESTART_COUNT": "2",
                                                          "LONGWEAVE_MAX_REQUEUES": "2"})
    assert rc == 75 and calls == "" and "not requeueing again" in out


def test_requeue_wrapper_trusts_a_fresh_exit_record_over_a_killed_step(tmp_path):
    """Two nodes: srun kills the slower launcher (143) after the first exited 75; exit.json decides."""
    run = tmp_path / "run"
    run.mkdir()
    env = {"SLURM_JOB_ID": "56", "LONGWEAVE_RUN_DIR": str(run)}
    (run / "exit.json").write_text('{"exit_code": 75, "step": 9}')
    old = time.time() - 3600
    os.utime(run / "exit.json", (old, old))                 # a previous run's record: not trusted
    rc, out, calls = run_wrapper(tmp_path, code=143, env=env)
    assert rc == 143 and calls == ""
    (tmp_path / "bin").rename(tmp_path / "bin0")
    step = f"""echo '{{"exit_code": 75, "step": 9}}' > {run}/exit.json; exit 143"""
    rc, out, calls = run_wrapper(tmp_path, env=env, step=step)
    assert "treating the step as exit 75" in out and calls.split() == ["requeue", "56"] and rc == 0
