"""Bad data: truncated/corrupt shards name shard and sample or are skipped with a count; manifest mismatches stop at start."""
from __future__ import annotations

import numpy as np
import pytest

from data.batch import IGNORE_INDEX
from data.manifest import ManifestError, read_manifest
from data.prepare import write_synthetic_shards
from data.shards import CorruptShardError
from data.stream import ShardLoader


@pytest.fixture
def shards(tmp_path):
    write_synthetic_shards(tmp_path, 40, shard_tokens=1500, seed=2, min_chars=20, max_chars=300)
    return tmp_path


def loader(path, **kw):
    """A loader and the warnings it logs (the end-of-epoch "ran dry" line is not a warning)."""
    logs = []

    def warn(msg: str) -> None:
        if "ran dry" not in msg:
            logs.append(msg)
    ld = ShardLoader(str(path), 16, 2, seed=1, log=warn, **kw)
    return ld, logs


def epoch_steps(ld) -> int:
    return ld.plan.stream.epoch_tokens // 32 + 2


def test_truncated_shard_names_shard_and_sample_at_start(shards):
    m = read_manifest(shards)
    victim = shards / m.shards[2].name
    victim.write_bytes(victim.read_bytes()[: int(m.shards[2].bytes * 0.6)])
    first = sum(s.documents for s in m.shards[:2])
    with pytest.raises(CorruptShardError, match=rf"shard {m.shards[2].name} sample 00000000\d\d .*skip_corrupt"):
        loader(shards)
    ld, logs = loader(shards, skip_corrupt=True)
    lost = [i for i, n in enumerate(ld.corpus.lengths[2]) if n == 0]
    assert lost and lost == list(range(lost[0], m.shards[2].documents))          # the tail after the cut
    assert len(logs) == 1 and len(lost) == ld.state_dict()["skipped_corrupt"] == ld.skipped_documents
    assert f"{len(lost)} documents skipped so far" in logs[-1] and m.shards[2].name in logs[0]
    assert ld.corpus.lengths[2][: lost[0]].tolist() == ld.corpus.written_lengths[2][: lost[0]].tolist()
    assert ld.plan.stream.epoch_tokens == m.tokens - int(ld.corpus.written_lengths[2][lost].sum())
    for _ in range(epoch_steps(ld)):
        ld.next_batch()
    assert first > 0


def corrupt_sample(path, which: int) -> None:
    """Overwrite the .npy magic of the which-th sample (file size unchanged)."""
    raw = bytearray(path.read_bytes())
    at = [i for i in range(len(raw)) if raw.startswith(b"\x93NUMPY", i)][which]
    raw[at:at + 6] = b"GARBGE"
    path.write_bytes(bytes(raw))


def test_corrupt_sample_mid_run_raises_with_names(shards):
    m = read_manifest(shards)
    corrupt_sample(shards / m.shards[1].name, 1)
    ld, _ = loader(shards)                                     # same size: found only when read
    key = f"{m.shards[0].documents + 1:010d}"
    with pytest.raises(CorruptShardError, match=rf"shard {m.shards[1].name} sample {key}"):
        for _ in range(epoch_steps(ld)):
            ld.next_batch()


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_sample_mid_run_is_masked_and_counted_once(shards, workers):
    m = read_manifest(shards)
    corrupt_sample(shards / m.shards[1].name, 1)
    ld, logs = loader(shards, skip_corrupt=True, num_workers=workers)
    masked_tokens = 0
    for _ in range(epoch_steps(ld)):
        b = ld.next_batch()
        masked_tokens += int(((b.tokens == 0) & (b.labels == IGNORE_INDEX)).sum())
    ld.close()
    assert len(logs) == 1 and "1 documents skipped so far" in logs[0] and m.shards[1].name in logs[0]
    assert ld.state_dict()["skipped_corrupt"] == 1
    assert masked_tokens >= int(ld.corpus.written_lengths[1][1]) - 1


def test_skipped_count_survives_a_resume(shards):
    """The skipped-document count is part of the loader state: a resumed loader reports the
    documents skipped before the checkpoint, and meeting the same bad sample again adds nothing."""
    m = read_manifest(shards)
    corrupt_sample(shards / m.shards[1].name, 1)
    ld, _ = loader(shards, skip_corrupt=True)
    for _ in range(epoch_steps(ld)):
        ld.next_batch()
    state = ld.state_dict()
    assert state["skipped_corrupt"] == 1
    resumed, logs = loader(shards, skip_corrupt=True)
    resumed.load_state_dict(state)
    assert resumed.skipped_documents == 1
    for _ in range(epoch_steps(resumed)):
        resumed.next_batch()
    assert resumed.state_dict()["skipped_corrupt"] == 1 and not logs


def test_manifest_mismatch_is_an_error_at_start(shards):
    m = read_manifest(shards)
    (shards / m.shards[-1].name).unlink()
    with pytest.raises(ManifestError, match=rf"{m.shards[-1].name} is listed in the manifest but missing"):
        loader(shards)


def test_lengths_and_extra_bytes_mismatch(shards, tmp_path_factory):
    lengths = np.load(shards / "lengths.npy")
    np.save(shards / "lengths.npy", lengths[:-1])
    with pytest.raises(ManifestError, match="lists 39 documents but the manifest says 40"):
        loader(shards)
    np.save(shards / "lengths.npy", lengths)
    m = read_manifest(shards)
    with open(shards / m.shards[0].name, "ab") as fh:
        fh.write(b"\0" * 512)
    with pytest.raises(ManifestError, match=rf"shard {m.shards[0].name} is \d+ bytes but the manifest says"):
        loader(shards)
    with pytest.raises(ManifestError, match="not a directory"):
        loader(tmp_path_factory.getbasetemp() / "nope")
