"""Synthetic corpus determinism and concat-and-chunk packing metadata."""
import numpy as np
import torch

from data.batch import IGNORE_INDEX
from data.loader import SyntheticLoader
from data.packing import ConcatChunkPacker
from data.synthetic import passkey_prompt, synthetic_document


def test_documents_are_pure_functions_of_seed_and_index():
    assert synthetic_document(1, 5) == synthetic_document(1, 5)
    assert synthetic_document(1, 5) != synthetic_document(2, 5)
    assert synthetic_document(1, 5) != synthetic_document(1, 6)
    kinds = [synthetic_document(0, i) for i in range(60)]
    assert any("pass key" in d for d in kinds) and any("Recall k" in d for d in kinds)
    assert any(d.startswith("Copy this") for d in kinds)


def test_passkey_prompt_shape():
    prompt, key = passkey_prompt(2000, 0.5, seed=3)
    assert key.isdigit() and len(key) == 5
    assert f"The pass key is {key}. Remember it." in prompt
    assert prompt.endswith("What is the pass key? The pass key is")
    assert 1500 < len(prompt) < 2300
    early, _ = passkey_prompt(2000, 0.05, seed=3)
    late, _ = passkey_prompt(2000, 0.95, seed=3)
    assert early.index("pass key is") < late.index("pass key is")


def test_packing_metadata_and_continuity():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 250, size=int(n)) for n in rng.integers(3, 40, size=200)]
    packer = ConcatChunkPacker(lambda i: docs[i], seq_len=16)
    stream = np.concatenate(docs)
    doc_of = np.concatenate([np.full(len(d), i) for i, d in enumerate(docs)])
    pos_of = np.concatenate([np.arange(len(d)) for d in docs])
    for r in range(30):
        tok, lab, pos, doc = packer.next_row()
        sl = slice(r * 16, r * 16 + 16)
        assert np.array_equal(tok, stream[sl])
        assert np.array_equal(pos, pos_of[sl])
        nxt = slice(r * 16 + 1, r * 16 + 17)
        same = doc_of[nxt] == doc_of[sl]
        assert np.array_equal(lab[same], stream[nxt][same]) and np.all(lab[~same] == IGNORE_INDEX)
        assert doc[0] == 0 and np.array_equal(np.diff(doc) != 0, np.diff(doc_of[sl]) != 0)


def test_loader_state_resumes_and_splits_ranks():
    full = SyntheticLoader(64, 4, seed=7)
    first = [full.next_batch() for _ in range(3)]
    state = full.state_dict()
    after = [full.next_batch() for _ in range(2)]
    again = SyntheticLoader(64, 4, seed=7)
    again.load_state_dict(state)
    for a, b in zip(after, [again.next_batch() for _ in range(2)]):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
    r0, r1 = SyntheticLoader(64, 2, 0, 2, seed=7), SyntheticLoader(64, 2, 1, 2, seed=7)
    b0, b1 = r0.next_batch(), r1.next_batch()
    assert torch.equal(torch.cat([b0.tokens, b1.tokens]), first[0].tokens)
    assert first[0].doc_ids.dtype == torch.int32 and first[0].positions.dtype == torch.int64
