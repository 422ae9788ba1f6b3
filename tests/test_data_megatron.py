"""Megatron indexed datasets (.bin/.idx) through megatron-core: written by it and trained on, written by
data.prepare and read back by it; exact resume across data-parallel and worker counts; bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("megatron.core.datasets.indexed_dataset")

from data.corpus import ShardCorpus  # noqa: E402
from data.errors import DataError  # noqa: E402
from data.megatron import MegatronCorpus, import_indexed_dataset  # noqa: E402
from data.prepare import main as prepare_main  # noqa: E402
from data.prepare import write_synthetic_shards  # noqa: E402
from data.stream import ShardLoader  # noqa: E402
from train.__main__ import main as train_main  # noqa: E402
from train.config import load_config  # noqa: E402
from train.loop import train  # noqa: E402

VOCAB = 300
TINY = ["--model.pattern=(*-)x2", "--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1",
        f"--model.vocab_size={VOCAB}", "--data.source=megatron", "--data.seq_len=32", "--data.batch_size=2",
        "--optim.warmup_steps=2", "--train.log_every=100", "--metrics.log_every=1", "--checkpoint.keep_last=0"]

F64 = ("--train.dtype=float64",)


def write_with_megatron_core(prefix, docs: list[list[np.ndarray]], dtype=np.uint16) -> None:
    """megatron-core's own builder: each document is one or more sequences (add_item ... end_document)."""
    _, builder_cls, _ = import_indexed_dataset()
    builder = builder_cls(f"{prefix}.bin", dtype=dtype)
    for seqs in docs:
        for s in seqs:
            builder.add_item(torch.from_numpy(s.astype(np.int64)))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")


def random_docs(n: int, seed: int, vocab: int = VOCAB) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, vocab, size=int(rng.integers(5, 120))) for _ in range(int(rng.integers(1, 3)))]
            for _ in range(n)]


@pytest.fixture(scope="module")
def mega(tmp_path_factory):
    """Two prefixes in one directory, written by megatron-core (no sidecar: vocab = max id + 1)."""
    d = tmp_path_factory.mktemp("mega")
    write_with_megatron_core(d / "part_a", random_docs(50, 1))
    write_with_megatron_core(d / "part_b", random_docs(30, 2))
    return d


def test_corpus_reads_documents_as_megatron_core_wrote_them(mega):
    corpus = MegatronCorpus(str(mega), block_docs=16)
    docs = random_docs(50, 1) + random_docs(30, 2)
    assert corpus.n_shards == 4 + 2 and corpus.vocab_size == max(int(np.concatenate(d).max()) for d in docs) + 1
    got = [corpus.doc(int(s), int(i))[:] for s, i in zip(*corpus.locate(np.arange(80)))]   # lazy views
    for want, have in zip(docs, got):
        np.testing.assert_array_equal(np.concatenate(want), have)    # a document's sequences joined


def test_prepare_writes_what_megatron_core_reads_back(tmp_path):
    rc = prepare_main(["--synthetic", "30", "--seed", "3", "--min-chars", "20", "--max-chars", "400",
                       "--output", str(tmp_path / "mega"), "--format", "megatron", "--quiet"])
    assert rc == 0
    write_synthetic_shards(tmp_path / "shards", 30, shard_tokens=1 << 20, seed=3, min_chars=20, max_chars=400)
    shards = ShardCorpus(tmp_path / "shards")
    indexed_dataset, _, _ = import_indexed_dataset()
    ds = indexed_dataset(str(tmp_path / "mega" / "text_document"))
    assert len(ds) == 30 and ds.index.dtype == np.uint16
    for i in range(30):
        np.testing.assert_array_equal(ds[i], shards.doc(0, i))       # same tokens as the shard writer's
    meta = json.loads((tmp_path / "mega" / "text_document.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"], meta["eos"]) == ("byte", 259, 257)
    assert prepare_main(["--synthetic", "3", "--output", str(tmp_path / "mega"), "--format", "megatron",
                         "--quiet"]) == 2                            # refuses to overwrite


def batches(loader, steps):
    return [tuple(x.numpy().copy() for x in (b.tokens, b.labels, b.positions, b.doc_ids))
            for b in (loader.next_batch() for _ in range(steps))]


def loaders(mega, world, rows, workers=0, **kw):
    return [ShardLoader(str(mega), 16, rows, r, world, seed=7, num_workers=workers, source="megatron",
                        corpus=MegatronCorpus(str(mega), block_docs=16), **kw) for r in range(world)]


@pytest.mark.parametrize("packing", ["concat", "dd"])
def test_resume_across_dp_and_workers_is_exact(mega, packing):
    """dp=2 × 2 rows for 3 steps, then resume at dp=1 × 4 rows with 2 workers == dp=1 throughout."""
    kw = {"packing": packing, "dd_min_len": 4}
    ref = batches(loaders(mega, 1, 4, **kw)[0], 6)
    two = loaders(mega, 2, 2, **kw)
    first = [batches(ld, 3) for ld in two]
    for step in range(3):
        for k in range(4):
            np.testing.assert_array_equal(np.concatenate([first[0][step][k], first[1][step][k]]), ref[step][k])
    (one,) = loaders(mega, 1, 4, workers=2, **kw)
    one.load_state_dict(two[0].state_dict())
    for want, have in zip(ref[3:], batches(one, 3)):
        for a, b in zip(want, have):
            np.testing.assert_array_equal(a, b)
    assert one.state_dict()["source"] == "megatron"


def config(path, run_dir, *extra):
    return load_config(None, [*TINY, f"--data.path={path}", f"--train.run_dir={run_dir}", *extra])


def test_trains_on_megatron_core_data_and_resumes_bitwise_with_other_workers(mega, tmp_path):
    full = train(config(mega, tmp_path / "a", "--train.steps=6", "--checkpoint.every=3"), log=lambda m: None)
    assert len(full.losses) == 6 and all(np.isfinite(full.losses))
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-0000003", tmp_path / "b" / "checkpoints" / "step-0000003")
    resumed = train(config(mega, tmp_path / "b", "--train.steps=6", "--checkpoint.every=3",
                           "--checkpoint.resume=auto", "--data.num_workers=2"), log=lambda m: None)
    assert resumed.losses == full.losses[3:]                                   # bitwise equal floats


def one_line_error(capsys, path, tmp_path, *extra) -> str:
    rc = train_main(["--config", "configs/tiny.toml", *TINY, f"--data.path={path}",
                     f"--train.run_dir={tmp_path / 'bad'}", "--train.steps=1", *extra])
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("error")]
    assert rc == 2 and len(err) == 1
    return err[0]


def test_bad_prefixes_are_one_line_errors(mega, tmp_path, capsys):
    d = tmp_path / "broken"
    d.mkdir()
    shutil.copy(mega / "part_a.idx", d / "only_idx.idx")
    shutil.copy(mega / "part_a.bin", d / "only_bin.bin")
    assert "only_idx.bin is missing" in one_line_error(capsys, d / "only_idx", tmp_path)
    assert "only_bin.idx is missing" in one_line_error(capsys, d / "only_bin", tmp_path)
    assert "neither" in one_line_error(capsys, d / "nothing", tmp_path)
    shutil.copy(mega / "part_a.idx", d / "short.idx")
    (d / "short.bin").write_bytes((mega / "part_a.bin").read_bytes()[:-6])
    assert "does not match" in one_line_error(capsys, d / "short", tmp_path)
    msg = one_line_error(capsys, mega, tmp_path, "--model.vocab_size=100")       # ids up to ~299 > 100
    assert "model.vocab_size" in msg


def test_a_rank_reads_only_the_tokens_it_packs(tmp_path):
    write_with_megatron_core(tmp_path / "long", [[np.arange(5000) % VOCAB] for _ in range(4)])
    corpus = MegatronCorpus(str(tmp_path / "long"))
    (ld,) = [ShardLoader("", 16, 2, 1, 4, seed=7, source="megatron", corpus=corpus)]   # rank 1 of 4
    for _ in range(10):
        ld.next_batch()
    assert corpus.bytes_read == 10 * (2 * 16 + 1) * 2          # its 2 rows + the last label token, uint16


def test_dtype_or_ids_disagreeing_with_the_tokenizer(tmp_path):
    write_with_megatron_core(tmp_path / "p", random_docs(5, 3))
    meta = {"format": "longweave-megatron", "tokenizer": "hf:big", "vocab_size": 100_000, "eos": 2}
    (tmp_path / "p.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="uint16 ids.*100000 ids"):
        MegatronCorpus(str(tmp_path / "p"))
    (tmp_path / "p.json").write_text(json.dumps({**meta, "vocab_size": 50}))   # ids up to 299 in the .bin
    corpus = MegatronCorpus(str(tmp_path / "p"))
    with pytest.raises(DataError, match="outside the vocabulary of 50"):
        [corpus.doc(0, i)[2:9] for i in range(5)]                       # checked where read
    skipping = MegatronCorpus(str(tmp_path / "p"), skip_corrupt=True)
    assert all(skipping.doc(0, i) is None for i in range(5)) and len(skipping.problems) == 5


def _megatron_run(rank, world, path, run_dir, *extra):
    return train(config(path, run_dir, *extra), log=lambda m: None).losses


def test_a_dp2_checkpoint_resumes_on_one_process_with_the_same_global_batches(pool2, mega, tmp_path):
    two = pool2.run(_megatron_run, str(mega), str(tmp_path / "dp2"), "--train.steps=4", "--checkpoint.every=2", *F64)
    assert two[0] == two[1] and len(two[0]) == 4
    (tmp_path / "one" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "dp2" / "checkpoints" / "step-0000002", tmp_path / "one" / "checkpoints" / "step-0000002")
    one = _megatron_run(0, 1, str(mega), str(tmp_path / "one"), "--train.steps=4", "--checkpoint.every=2",
                        "--checkpoint.resume=auto", "--data.batch_size=4", "--data.num_workers=2", *F64)
    # dp=2·2 rows = 1·4 rows: the same batches and weights; in float64 all that differs is the order in
    # which the gradient all-reduce sums, so the losses agree to round-off (float32: ~1e-6)
    assert len(one) == 2 and max(abs(a - b) for a, b in zip(two[0][2:], one)) < 1e-12
