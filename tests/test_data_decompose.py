"""Dataset Decomposition invariants: pieces cover documents, rows never mix documents, tokens per step fixed."""
from __future__ import annotations

import numpy as np
import pytest

from data.batch import IGNORE_INDEX
from data.decompose import decompose
from data.errors import DataError
from data.prepare import write_synthetic_shards
from data.stream import ShardLoader


def test_binary_decomposition_covers_each_document_once():
    lengths = np.random.default_rng(0).integers(1, 5000, size=400)
    dec = decompose(lengths, 16, 256, seed=3)
    covered = [[] for _ in lengths]
    for k, size in enumerate(dec.bucket_lens):
        for d, s in zip(dec.docs[k], dec.starts[k]):
            covered[d].append((int(s), size))
    dropped = 0
    for n, pieces in zip(lengths, covered):
        pieces.sort()
        pos = 0
        for s, size in pieces:
            assert s == pos, "pieces must tile the document without gap or overlap"
            pos += size
        tail = n - pos
        assert 0 <= tail < 16, "only a tail shorter than the min bucket may be left out"
        dropped += tail
    assert dropped == dec.dropped_tokens
    # a 13-token document with min 1: 8 + 4 + 1, longest first
    small = decompose(np.array([13]), 1, 8, 0)
    assert [(size, int(s)) for k, size in enumerate(small.bucket_lens) for s in small.starts[k]] == \
        [(1, 12), (4, 8), (8, 0)]


def test_oversize_pieces_are_redrawn_to_equal_expected_tokens():
    dec = decompose(np.full(3000, 4096), 16, 256, seed=1)       # every piece is oversize (4096 > 256)
    tokens = np.array([dec.tokens(k) for k in range(len(dec.bucket_lens))], dtype=np.float64)
    assert tokens.sum() == 3000 * 4096 and dec.dropped_tokens == 0
    assert np.all(np.abs(tokens / tokens.mean() - 1) < 0.12), tokens


def test_bucket_settings_are_checked():
    with pytest.raises(DataError, match="power of two"):
        decompose(np.array([100]), 24, 256, 0)
    with pytest.raises(DataError, match="larger than"):
        decompose(np.array([100]), 512, 256, 0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("dd")
    write_synthetic_shards(d, 50, shard_tokens=2000, seed=9, min_chars=10, max_chars=400)
    return d


def test_dd_rows_hold_one_piece_of_one_document(shards):
    seq, rows, world = 32, 2, 2
    loaders = [ShardLoader(str(shards), seq, rows, r, world, seed=4, packing="dd", dd_min_len=4, dd_order="grow_p2")
               for r in range(world)]
    plan, corpus = loaders[0].plan, loaders[0].corpus
    state = plan.initial_state()
    seen = set()
    for _ in range(40):
        spec = plan.spec(state)
        cycle, k, start = spec[:3]
        length = plan.dec.bucket_lens[k]
        batch = [ld.next_batch() for ld in loaders]
        assert sum(b.tokens.numel() for b in batch) == seq * rows * world          # tokens per step constant
        picks = plan.order(cycle, k)[start:start + plan.rows_global[k]]
        for r, b in enumerate(batch):
            assert b.shape == (rows * seq // length, length)
            assert (b.doc_ids == 0).all() and (b.positions == np.arange(length)).all()
            for i in range(b.shape[0]):
                p = picks[r * b.shape[0] + i]
                doc_index, s = int(plan.dec.docs[k][p]), int(plan.dec.starts[k][p])
                assert (cycle, doc_index, s) not in seen                           # no piece twice in a cycle
                seen.add((cycle, doc_index, s))
                shard, local = corpus.locate(np.array([doc_index]))
                doc = corpus.doc(int(shard[0]), int(local[0])).astype(np.int64)
                np.testing.assert_array_equal(b.tokens[i].numpy(), doc[s:s + length])
                nxt = doc[s + 1:s + length + 1]
                np.testing.assert_array_equal(b.labels[i, :len(nxt)].numpy(), nxt)
                assert (b.labels[i, len(nxt):] == IGNORE_INDEX).all()
        state = plan.advance(state, spec)


def test_dd_needs_bucket_lengths_dividing_tokens_per_step(shards):
    with pytest.raises(DataError, match="not a multiple of the bucket length"):
        ShardLoader(str(shards), 24, 1, packing="dd", dd_min_len=4, dd_max_len=16)


def test_dd_resume_with_another_world_size_takes_each_piece_once_per_cycle(shards):
    """4 ranks for a while, then 1 rank to the end of the cycle: no piece twice, only sub-batch tails left."""
    def take(plan, state, steps):
        """(bucket, piece) of every row of `steps` steps (None: to the end of cycle 0) and the state after."""
        taken = []
        while steps is None or steps > 0:
            spec = plan.spec(state)
            if spec[0] != 0:
                break
            cycle, k, start, rows = spec[:4]
            taken += [(k, int(p)) for p in plan.order(cycle, k)[start:start + rows]]
            state = plan.advance(state, spec)
            steps = None if steps is None else steps - 1
        return taken, state

    kw = dict(seed=4, packing="dd", dd_min_len=4, dd_max_len=16)
    four = ShardLoader(str(shards), 16, 1, 0, 4, **kw)
    before, state = take(four.plan, four.plan.initial_state(), 15)
    one = ShardLoader(str(shards), 16, 1, 0, 1, **kw)
    one.load_state_dict(four.state_dict() | state)
    after, _ = take(one.plan, one.state, None)
    taken = before + after
    assert len(taken) == len(set(taken))
    for k, n in enumerate(one.plan.pieces):
        left = n - sum(1 for b, _ in taken if b == k)
        assert 0 <= left < one.plan.rows_global[k]
