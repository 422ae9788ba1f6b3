"""Tokenizers. The byte tokenizer needs nothing: UTF-8 bytes 0..255 plus three specials.

`get_tokenizer(spec)` turns the `--tokenizer` string of `python -m data.prepare` into an
object with `name`, `vocab_size`, `eos` and `encode_document(text) -> int64 array`:
- `byte`           BOS + UTF-8 bytes + EOS (the built-in tokenizer; the synthetic corpus uses it)
- `tiktoken:NAME`  a tiktoken encoding (e.g. tiktoken:gpt2, tiktoken:cl100k_base) + its end-of-text
- `hf:PATH`        a Hugging Face tokenizer (hub name or local directory) + its eos token
tiktoken and transformers are optional (`pip install longweave[tokenizers]`); asking for one
that is not installed is a one-line error saying what to install.
"""
from __future__ import annotations

import numpy as np

from data.errors import DataError


class ByteTokenizer:
    name = "byte"
    BOS, EOS, PAD = 256, 257, 258
    vocab_size = 259
    eos = EOS

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def encode_document(self, text: str) -> np.ndarray:
        """BOS + bytes + EOS: a packed document carries its own start and end markers."""
        body = self.encode(text)
        out = np.empty(len(body) + 2, dtype=np.int64)
        out[0], out[-1] = self.BOS, self.EOS
        out[1:-1] = body
        return out

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class TiktokenTokenizer:
    """A tiktoken encoding; documents end with the encoding's end-of-text token."""

    def __init__(self, encoding: str):
        try:
            import tiktoken
        except ImportError:
            raise TokenizerError(f"tokenizer 'tiktoken:{encoding}' needs tiktoken; "
                                 "pip install tiktoken (or longweave[tokenizers])") from None
        try:
            self._enc = tiktoken.get_encoding(encoding)
        except ValueError as e:
            raise TokenizerError(f"unknown tiktoken encoding {encoding!r}: {e}") from None
        self.name = f"tiktoken:{encoding}"
        self.vocab_size = int(self._enc.n_vocab)
        self.eos = int(self._enc.eot_token)

    def encode_document(self, text: str) -> np.ndarray:
        ids = self._enc.encode_ordinary(text)
        return np.asarray([*ids, self.eos], dtype=np.int64)

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids])


class HFTokenizer:
    """A Hugging Face tokenizer; documents end with its eos token (required)."""

    def __init__(self, path: str):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise TokenizerError(f"tokenizer 'hf:{path}' needs transformers; "
                                 "pip install transformers (or longweave[tokenizers])") from None
        try:
            self._tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:   # not a directory / hub name, or no tokenizer files in it
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TokenizerError(f"could not load Hugging Face tokenizer {path!r} ({first}); give a local "
                                 "directory holding tokenizer files or a hub name reachable from here") from None
        if self._tok.eos_token_id is None:
            raise TokenizerError(f"Hugging Face tokenizer {path!r} has no eos token; pick one that defines it")
        self.name = f"hf:{path}"
        self.vocab_size = int(len(self._tok))
        self.eos = int(self._tok.eos_token_id)

    def encode_document(self, text: str) -> np.ndarray:
        ids = self._tok(text, add_special_tokens=False)["input_ids"]
        return np.asarray([*ids, self.eos], dtype=np.int64)

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        """encode_document of each text; a fast tokenizer encodes the batch at once (in parallel, in Rust).

        Blank texts come back empty, as data.prepare expects (it drops them)."""
        keep = [i for i, t in enumerate(texts) if t.strip()]
        out = [np.empty(0, np.int64) for _ in texts]
        if keep:
            ids = self._tok([texts[i] for i in keep], add_special_tokens=False)["input_ids"]
            for i, row in zip(keep, ids):
                out[i] = np.asarray([*row, self.eos], dtype=np.int64)
        return out

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])


class TokenizerError(DataError):
    """A bad or unavailable tokenizer spec (reported as one line)."""


def get_tokenizer(spec: str):
    """The tokenizer named by `spec`: byte | tiktoken:NAME | hf:PATH."""
    if spec == "byte":
        return ByteTokenizer()
    kind, _, arg = spec.partition(":")
    if kind == "tiktoken" and arg:
        return TiktokenTokenizer(arg)
    if kind == "hf" and arg:
        return HFTokenizer(arg)
    raise TokenizerError(f"unknown tokenizer {spec!r}; use byte, tiktoken:NAME or hf:PATH")
