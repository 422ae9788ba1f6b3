"""Shard writer: round trip, inputs, skipped data, manifest, tokenizers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds

from data.manifest import read_lengths, read_manifest
from data.prepare import main as prepare_main
from data.prepare import write_synthetic_shards
from data.shards import ShardWriter, read_shard
from data.synthetic import synthetic_document
from data.tokenizer import ByteTokenizer, TokenizerError, get_tokenizer


def all_docs(directory) -> list[np.ndarray]:
    m = read_manifest(directory)
    lengths = read_lengths(directory, m)
    docs, first = [], 0
    for s, lens in zip(m.shards, lengths):
        got, problems = read_shard(directory / s.name, lens, first)
        assert not problems
        docs += got
        first += len(lens)
    return docs


def test_synthetic_round_trip_every_token_in_order(tmp_path):
    m = write_synthetic_shards(tmp_path, 60, shard_tokens=4000, seed=7, min_chars=50, max_chars=900)
    tok = ByteTokenizer()
    want = [tok.encode_document(synthetic_document(7, i, 50, 900)) for i in range(60)]
    got = all_docs(tmp_path)
    assert len(got) == 60 and len(m.shards) > 3
    for w, g in zip(want, got):
        assert g.dtype == np.uint16
        np.testing.assert_array_equal(w, g.astype(np.int64))
    assert m.tokens == sum(len(w) for w in want) and m.documents == 60
    assert m.vocab_size == 259 and m.eos == 257 and m.dtype == "uint16"
    assert all(s.tokens >= 4000 for s in m.shards[:-1])          # a shard closes once it passes shard_tokens
    # a stock webdataset pipeline reads the same samples
    urls = [str(tmp_path / s.name) for s in m.shards]
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None).decode()
    keys = [(s["__key__"], s["tokens.npy"]) for s in ds]
    assert [k for k, _ in keys] == [f"{i:010d}" for i in range(60)]
    np.testing.assert_array_equal(keys[13][1], got[13])


def test_workers_do_not_change_output(tmp_path):
    a = write_synthetic_shards(tmp_path / "a", 40, 3000, seed=3, min_chars=50, max_chars=700, workers=1)
    b = write_synthetic_shards(tmp_path / "b", 40, 3000, seed=3, min_chars=50, max_chars=700, workers=2)
    assert [vars(s) for s in a.shards] == [vars(s) for s in b.shards]
    for s in a.shards:
        assert (tmp_path / "a" / s.name).read_bytes() == (tmp_path / "b" / s.name).read_bytes()


def test_text_inputs_bad_files_and_empty_documents(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("first document, with ünïcode")
    (src / "sub" / "b.jsonl").write_text(
        json.dumps({"body": "second"}) + "\n" + "not json\n" + json.dumps({"body": ""}) + "\n"
        + json.dumps({"other": "x"}) + "\n" + json.dumps({"body": "third"}) + "\n")
    (src / "sub" / "c.txt").write_bytes(b"\xff\xfe latin-1 \xe9 junk")
    (src / "empty.txt").write_text("   \n")
    (src / "ignored.bin").write_bytes(b"binary")
    out = tmp_path / "out"
    rc = prepare_main(["--input", str(src), str(tmp_path / "missing.txt"), "--output", str(out),
                       "--jsonl-field", "body", "--quiet"])
    assert rc == 0
    docs = all_docs(out)
    tok = ByteTokenizer()
    assert [tok.decode(d) for d in docs] == ["first document, with ünïcode", "second", "third"]
    m = read_manifest(out)
    skipped = m.skipped
    assert skipped["empty_documents"] == 2
    files = skipped["files"]
    assert files[str(src / "sub" / "c.txt")] == {"non-UTF-8 text": 1}
    assert sum(files[str(src / "sub" / "b.jsonl")].values()) == 2
    assert str(tmp_path / "missing.txt") in files
    assert m.created["args"][:2] == ["--input", str(src)]
    err = capsys.readouterr().err
    assert "c.txt" in err and "non-UTF-8" in err and "empty" in err


def test_refuses_to_overwrite_and_large_vocab_dtype(tmp_path):
    write_synthetic_shards(tmp_path, 3, min_chars=20, max_chars=40)
    assert prepare_main(["--synthetic", "3", "--output", str(tmp_path), "--quiet"]) == 2   # one line: --overwrite
    w = ShardWriter(tmp_path / "big", "uint32", 10)
    doc = np.array([70000, 5, 100000], dtype=np.int64)
    w.add(doc)
    shards, lengths = w.close()
    got, _ = read_shard(tmp_path / "big" / shards[0].name, lengths, 0)
    assert got[0].dtype == np.uint32 and got[0].tolist() == doc.tolist()
    with pytest.raises(ValueError, match="out of range"):
        ShardWriter(tmp_path / "small", "uint16", 10).add(np.array([70000]))


def test_optional_tokenizers_say_what_to_install(monkeypatch):
    import sys

    for spec, pkg in (("tiktoken:gpt2", "tiktoken"), ("hf:gpt2", "transformers")):
        monkeypatch.setitem(sys.modules, pkg, None)          # as if not installed: import fails
        with pytest.raises(TokenizerError) as e:
            get_tokenizer(spec)
        assert pkg in str(e.value) and "pip install" in str(e.value)
    with pytest.raises(TokenizerError, match="byte, tiktoken:NAME or hf:PATH"):
        get_tokenizer("sentencepiece")
    assert prepare_main(["--input", "x", "--output", "/nonexistent-lw", "--tokenizer", "bogus", "--quiet"]) == 2


class _FakeEncoding:
    n_vocab, eot_token = 70_000, 69_999

    def encode_ordinary(self, text):
        return [60_000 + ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i - 60_000) for i in ids)


def test_tiktoken_path_appends_end_token_and_writes_uint32(tmp_path, monkeypatch):
    import sys
    import types

    fake = types.SimpleNamespace(get_encoding=lambda name: _FakeEncoding())
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    tok = get_tokenizer("tiktoken:fake")
    assert tok.encode_document("ab").tolist() == [60_097, 60_098, 69_999] and tok.vocab_size == 70_000
    (tmp_path / "a.txt").write_text("hello")
    assert prepare_main(["--input", str(tmp_path / "a.txt"), "--output", str(tmp_path / "out"),
                         "--tokenizer", "tiktoken:fake", "--quiet"]) == 0
    m = read_manifest(tmp_path / "out")
    assert (m.tokenizer, m.vocab_size, m.eos, m.dtype) == ("tiktoken:fake", 70_000, 69_999, "uint32")
    (doc,) = all_docs(tmp_path / "out")
    assert tok.decode(doc[:-1]) == "hello" and doc[-1] == 69_999


def _local_hf_tokenizer(directory) -> str:
    """A tiny byte-level BPE tokenizer trained here and saved as a transformers tokenizer dir."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    fast.save_pretrained(directory)
    return str(directory)


def test_hf_tokenizer_from_a_local_directory(tmp_path):
    path = _local_hf_tokenizer(tmp_path / "tok")
    tok = get_tokenizer(f"hf:{path}")
    ids = tok.encode_document("the lazy fox")
    assert ids[-1] == tok.eos and tok.decode(ids[:-1]) == "the lazy fox" and len(ids) < len("the lazy fox")
    (tmp_path / "a.txt").write_text("the quick dog")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "over the fox"}) + "\n")
    assert prepare_main(["--input", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), "--output",
                         str(tmp_path / "out"), "--tokenizer", f"hf:{path}", "--quiet"]) == 0
    m = read_manifest(tmp_path / "out")
    assert (m.tokenizer, m.vocab_size, m.eos, m.dtype) == (f"hf:{path}", tok.vocab_size, tok.eos, "uint16")
    assert sorted(tok.decode(d[:-1]) for d in all_docs(tmp_path / "out")) == ["over the fox", "the quick dog"]


def test_hf_tokenizer_bad_directory_is_one_line(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="could not load Hugging Face tokenizer") as e:
        get_tokenizer(f"hf:{tmp_path / 'empty'}")
    assert "\n" not in str(e.value)
