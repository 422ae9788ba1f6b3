"""benchmarks/mfu.py --quick runs end to end on CPU: a throughput row per family and switch
variant, and the longest-context bisection beside the planner's prediction."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "mfu.py"


@pytest.fixture(scope="module")
def mfu():
    spec = importlib.util.spec_from_file_location("bench_mfu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_longest_bisection_finds_the_boundary(mfu):
    for limit in (0, 100, 640, 4095, 10**6):
        assert mfu.longest(lambda t, lim=limit: t <= lim, 128, 128, 4096) == min(limit, 4096) // 128 * 128


def test_quick_run_prints_both_tables(mfu, capsys):
    mfu.main(["--quick", "--families", "transformer,mamba2", "--longest", "hybrid"])
    out = capsys.readouterr().out
    rows = {(m[0], m[1]): (float(m[2]), float(m[3]))
            for m in re.findall(r"^\| (\w+) \| 64 \| ([\w ]+) \| ([\d.]+) \| - \| ([\d.]+) \|$", out, re.M)}
    for family in ("transformer", "mamba2"):
        assert {v for f, v in rows if f == family} == {"fast", "loss_chunk off", "checkpoint off"}, out
        assert all(rows[family, v][0] > 0 for v in ("fast", "loss_chunk off", "checkpoint off"))
        # checkpointing is what holds this tiny model's activations down (exact tracked bytes, not timing)
        assert rows[family, "checkpoint off"][1] > rows[family, "fast"][1], out
    measured, planned = map(int, re.search(r"^\| hybrid \| (\d+) \| (\d+) \| 4.0 MiB budget", out, re.M).groups())
    assert measured >= 128 and planned >= 128, out
