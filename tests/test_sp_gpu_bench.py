"""benchmarks/sp_gpu.py (issue 21's GPU timing) runs its whole code path on a CPU with --dry-run
(Triton interpreter, tiny shapes) and refuses a CPU run without it in one line, exit 2."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*argv):
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sp_gpu.py"), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_dry_run_prints_both_tables():
    pytest.importorskip("triton")
    out = run("--dry-run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| n | block | ours_ms | ref_ms | ratio | dq_rel_err |" in out.stdout
    errors = [float(line.split("|")[6]) for line in out.stdout.splitlines() if line.startswith("| 32 |")]
    assert len(errors) == 2 and max(errors) < 1e-4      # our Triton blocks = SDPA's gradient
    assert "| world | n | alone_ms | with_comm_ms | slowdown |" in out.stdout
    assert "| 32 | diagonal |" in out.stdout and "| 32 | visible |" in out.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU machine runs the real tables")
def test_without_a_gpu_or_dry_run_is_one_line_exit_2():
    out = run()
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "--dry-run" in out.stderr
