"""The worker pool itself: every rank runs the task, collectives work, failures surface."""
import pytest
import torch
import torch.distributed as dist


def _sum_ranks(rank, world, scale):
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return (rank, world, t.item() * scale)


def _fail_on_one(rank, world):
    if rank == 1:
        raise ValueError("boom on rank 1")
    return rank


def test_pool_runs_collectives(pool2):
    assert pool2.run(_sum_ranks, 2.0) == [(0, 2, 6.0), (1, 2, 6.0)]


def test_pool_reports_rank_error_and_recovers(pools):
    pool = pools.get(2)
    with pytest.raises(RuntimeError, match="boom on rank 1"):
        pool.run(_fail_on_one)
    assert pools.get(2).run(_sum_ranks, 1.0)[0] == (0, 2, 3.0)
