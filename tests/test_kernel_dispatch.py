"""The dispatchers and `python -m kernels`: forced modes reach every op, auto on a CPU stays on
the torch paths (the fused kernels are for CUDA), bad modes are a one-line error."""
from __future__ import annotations

import pytest
import torch

from kernels.__main__ import main, path_table


@pytest.mark.parametrize("mode,expected", [("reference", {"reference"}), ("triton", {"triton"})])
def test_forced_mode_reaches_every_op(mode, expected, monkeypatch):
    monkeypatch.setenv("LONGWEAVE_KERNELS", mode)
    assert {path for _, path in path_table("cpu", torch.float32)} == expected


def test_auto_on_cpu_uses_torch_paths(monkeypatch):
    monkeypatch.delenv("LONGWEAVE_KERNELS", raising=False)
    paths = dict(path_table("cpu", torch.float32))
    assert all(p in ("sdpa", "torch") for p in paths.values()), paths


def test_cli_prints_each_op(monkeypatch, capsys):
    monkeypatch.delenv("LONGWEAVE_KERNELS", raising=False)
    assert main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for op in ("attention", "ssd", "linear scan", "causal conv1d"):
        assert op in out


def test_bad_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LONGWEAVE_KERNELS", "fast")
    with pytest.raises(ValueError, match="LONGWEAVE_KERNELS"):
        path_table("cpu", torch.float32)
