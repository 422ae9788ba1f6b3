"""Thread policy (train/threads.py): cores this process may use, split among the local processes,
capped by what is idle; train.threads and OMP_NUM_THREADS (outside torchrun) override."""
import pytest
import torch

from train.config import ConfigError
from train.threads import choose_threads, configure_threads, idle_cores, usable_cores


def test_auto_splits_usable_cores_among_local_processes():
    assert choose_threads(0, cores=16, idle=16.0, local_world=1, env={}).threads == 16
    assert choose_threads(0, cores=16, idle=16.0, local_world=4, env={}).threads == 4
    assert choose_threads(0, cores=2, idle=2.0, local_world=4, env={}).threads == 1


def test_auto_takes_fewer_threads_on_a_busy_machine():
    assert choose_threads(0, cores=16, idle=5.6, local_world=1, env={}).threads == 6
    assert choose_threads(0, cores=16, idle=5.6, local_world=2, env={}).threads == 3
    assert choose_threads(0, cores=2, idle=0.1, local_world=1, env={}).threads == 1
    assert choose_threads(0, cores=8, idle=None, local_world=1, env={}).threads == 8   # no /proc/stat


def test_overrides():
    assert choose_threads(3, cores=16, idle=0.0, local_world=1, env={"OMP_NUM_THREADS": "5"}).threads == 3
    omp = choose_threads(0, cores=16, idle=16.0, local_world=1, env={"OMP_NUM_THREADS": "5"})
    assert omp.threads == 5 and "OMP_NUM_THREADS" in omp.line()
    # torchrun sets OMP_NUM_THREADS=1 for every worker; the policy decides there
    run = choose_threads(0, cores=16, idle=16.0, local_world=4, env={"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "4"})
    assert run.threads == 4 and "4 process(es)" in run.line()
    with pytest.raises(ConfigError, match="train.threads"):
        choose_threads(-1)


def test_this_machine_and_configure():
    assert 1 <= usable_cores()
    idle = idle_cores(0.05)
    assert idle is None or 0.0 <= idle <= 1024
    before = torch.get_num_threads()
    try:
        assert configure_threads(1).threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
