"""Shared fixtures: forked gloo worker pools (tests/dist/pool.py) and test-wide settings."""
from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in its CPU interpreter; must precede triton.jit
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))

from dist.pool import PoolRegistry  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def pools():
    registry = PoolRegistry()
    yield registry
    registry.close_all()


@pytest.fixture
def pool2(pools):
    return pools.get(2)


@pytest.fixture
def pool3(pools):
    return pools.get(3)


@pytest.fixture
def pool4(pools):
    return pools.get(4)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if PoolRegistry.replaced:
        terminalreporter.write_line(f"worker pools replaced for holding too many process groups: "
                                    f"{PoolRegistry.replaced}")
