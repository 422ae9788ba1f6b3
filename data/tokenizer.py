"""Tokenizers. The byte tokenizer needs nothing: UTF-8 bytes 0..255 plus three specials."""
from __future__ import annotations

import numpy as np


class ByteTokenizer:
    name = "byte"
    BOS, EOS, PAD = 256, 257, 258
    vocab_size = 259

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
