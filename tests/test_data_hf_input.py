"""data.prepare --input-hf: local parquet / arrow / json(l) / save_to_disk datasets through `datasets`,
offline, streamed; splits and fields; batched fast-tokenizer encoding equals per-document encoding."""
from __future__ import annotations

import json

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from data.manifest import read_manifest  # noqa: E402
from data.prepare import main as prepare_main  # noqa: E402
from data.shards import read_shard  # noqa: E402
from data.tokenizer import ByteTokenizer, get_tokenizer  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while seven tired owls watch quietly".split()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))) for _ in range(n)]


def all_docs(out) -> list[np.ndarray]:
    m = read_manifest(out)
    lengths = np.load(out / "lengths.npy")
    docs, first = [], 0
    for s in m.shards:
        part, _ = read_shard(out / s.name, lengths[first:first + s.documents], first)
        docs += part
        first += s.documents
    return docs


def prepare(src, out, *extra) -> int:
    return prepare_main(["--input-hf", str(src), "--output", str(out), "--quiet", *extra])


def test_parquet_jsonl_and_saved_datasets_in_order(tmp_path):
    rows = texts(40, 1)
    byte = ByteTokenizer()
    want = [byte.encode_document(t) for t in rows]
    datasets.Dataset.from_dict({"text": rows, "id": list(range(40))}).to_parquet(str(tmp_path / "a.parquet"))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"body": t, "n": 1}) + "\n" for t in rows))
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "saved"))
    for src, extra in ((tmp_path / "a.parquet", []), (tmp_path / "b.jsonl", ["--field", "body"]),
                       (tmp_path / "saved", [])):
        out = tmp_path / f"out_{src.name}"
        assert prepare(src, out, *extra) == 0
        got = all_docs(out)
        assert len(got) == 40 and all(np.array_equal(a, b) for a, b in zip(got, want)), src
    assert read_manifest(tmp_path / "out_a.parquet").created["inputs"] == str(tmp_path / "a.parquet")


def test_split_from_file_names_and_megatron_output(tmp_path):
    pytest.importorskip("megatron.core.datasets.indexed_dataset")
    from data.megatron import MegatronCorpus

    d = tmp_path / "ds"
    d.mkdir()
    train, test = texts(30, 2), texts(7, 3)
    datasets.Dataset.from_dict({"text": train}).to_parquet(str(d / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_dict({"text": test}).to_parquet(str(d / "test-00000-of-00001.parquet"))
    assert prepare(d, tmp_path / "mega", "--split", "test", "--format", "megatron") == 0
    corpus = MegatronCorpus(str(tmp_path / "mega"))
    got = [corpus.doc(0, i)[:] for i in range(len(corpus.lengths[0]))]
    assert len(got) == 7 and all(np.array_equal(g, ByteTokenizer().encode_document(t)) for g, t in zip(got, test))


def test_bad_inputs_are_one_line_errors_exit_2(tmp_path, capsys):
    datasets.Dataset.from_dict({"content": texts(5, 4)}).to_parquet(str(tmp_path / "a.parquet"))
    (tmp_path / "x.csvx").write_text("a")
    (tmp_path / "splits").mkdir()
    datasets.Dataset.from_dict({"text": texts(5, 4)}).to_parquet(str(tmp_path / "splits" / "train-0.parquet"))
    cases = [(tmp_path / "a.parquet", [], "no column 'text' (columns: content)"),
             (tmp_path / "missing", [], "no such file or directory"),
             (tmp_path / "x.csvx", [], "unknown file type"),
             (tmp_path / "splits", ["--split", "validation"], "split 'validation'")]
    for i, (src, extra, words) in enumerate(cases):
        assert prepare(src, tmp_path / f"out{i}", *extra) == 2, words
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
        assert len(err) == 1 and words in err[0], err


def test_fast_tokenizer_batches_equal_per_document_encoding_for_any_workers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(texts(200, 5), trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<eos>"]))
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>").save_pretrained(tmp_path / "tok")
    rows = texts(300, 6) + ["   "]                      # a blank row is dropped like any empty document
    datasets.Dataset.from_dict({"text": rows}).to_parquet(str(tmp_path / "a.parquet"))
    tok = get_tokenizer(f"hf:{tmp_path / 'tok'}")
    want = [tok.encode_document(t) for t in rows[:-1]]
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        assert prepare(tmp_path / "a.parquet", out, "--tokenizer", f"hf:{tmp_path / 'tok'}", "--workers", workers,
                       "--batch-docs", "64") == 0
        got = all_docs(out)
        assert len(got) == 300 and all(np.array_equal(a, b) for a, b in zip(got, want))
        assert read_manifest(out).skipped["empty_documents"] == 1
