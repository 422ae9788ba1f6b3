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


def _make_groups(rank, world, n):
    for _ in range(n):
        dist.new_group(list(range(world)))
    return len(dist.distributed_c10d._world.pg_map)


def test_pool_holding_many_groups_is_replaced(pools):
    """Idle gloo groups cost CPU in every worker; a pool past MAX_GROUPS is swapped for a fresh fork."""
    from dist.pool import MAX_GROUPS

    pool = pools.get(2)
    held = pool.run(_make_groups, MAX_GROUPS + 1)
    assert held[0] > MAX_GROUPS and pool.retired
    fresh = pools.get(2)
    assert fresh is not pool and not pool.procs
    assert fresh.run(_make_groups, 0) == [1, 1]            # only the default group
    assert fresh.run(_sum_ranks, 1.0)[0] == (0, 2, 3.0)
