"""The context-sized synthetic corpus (data.corpus = "sized") and its packer.

Document lengths are drawn relative to the current row length T (data.seq_len, or the
curriculum's length at the step the document starts): a share `fit_fraction` is T/8…T long and
is never cut by a row boundary (when it would be, the rest of the row is filled with a filler
piece instead), so a retrieval document's needle and question always share a row, at every
depth; the others are T…long_max·T and run across rows (loss by position and carried states
still see long documents). A share `task_mix` of documents are task documents (data/tasks/*,
drawn by `task_weights`); the rest are filler prose. A warm-up phase may come first: documents
0..warmup_docs-1 are all drawn from `warmup_tasks` (e.g. token_induction, so that copying forms
before the sparse retrieval signal has to find it), and rows are closed by warm-up pieces instead
of filler. Tokens a kind marks as unpredictable are left out of the labels. Document i is a pure function of
(seed, i, T); the packer's state is (document, offset, the T it was drawn at, steps).
"""
from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch

from data.batch import IGNORE_INDEX, Batch
from data.loader import SyntheticLoader
from data.tasks.base import TaskError, case_seed, doc_start, filler_ids
from data.tasks.registry import get_training_kind


class SizedCorpus:
    def __init__(self, tok, seed: int, tasks: list[str], weights: list[float], task_mix: float,
                 fit_fraction: float, long_max: float, warmup_tasks: list[str] = (), warmup_docs: int = 0,
                 task_loss: str = "all"):
        if weights and len(weights) != len(tasks):
            raise TaskError(f"data.task_weights has {len(weights)} entries for {len(tasks)} data.tasks; "
                            "give one weight per task (or none)")
        if not 0.0 <= task_mix <= 1.0 or not 0.0 <= fit_fraction <= 1.0 or long_max < 1.0:
            raise TaskError("data.task_mix and data.fit_fraction must lie in [0, 1] and data.long_max >= 1")
        self.tok, self.seed = tok, seed
        self.tasks = [get_training_kind(t) for t in tasks]
        self.weights = list(weights) or [1.0] * len(tasks)
        self.task_mix, self.fit_fraction, self.long_max = task_mix, fit_fraction, long_max
        if warmup_docs < 0 or (warmup_docs > 0 and not warmup_tasks):
            raise TaskError("data.warmup_docs must be >= 0, and > 0 only with data.warmup_tasks naming "
                            "the warm-up document kinds (e.g. [\"token_induction\"])")
        self.warmup = [get_training_kind(t) for t in warmup_tasks]
        self.warmup_docs = warmup_docs
        if task_loss not in ("all", "answers"):
            raise TaskError(f"data.task_loss must be 'all' or 'answers', not {task_loss!r}")
        self.answers_only = task_loss == "answers"
        self._min: dict[str, int] = {}

    def min_length(self, task) -> int:
        """The shortest training document of `task` (its fixed parts + completion + end token)."""
        if task.name not in self._min and hasattr(task, "min_length"):
            self._min[task.name] = task.min_length(self.tok)
        if task.name not in self._min:
            s = task.build(random.Random(0), self.tok, 8192, 0.5)
            self._min[task.name] = s.fixed_tokens + len(s.completion) + 8
        return self._min[task.name]

    def document(self, index: int, row_len: int) -> np.ndarray:
        return self.document_scored(index, row_len)[0]

    def document_scored(self, index: int, row_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Document `index` at row length T, and which of its tokens are scored as targets: all of them,
        except where a kind marks tokens that nothing in the context predicts (token_induction's first
        copies, random noise whose gradient would drown the copying signal it is there to teach), and,
        under data.task_loss = "answers", a task document's prompt (only its completion is scored)."""
        rng = random.Random(case_seed("sized", self.seed, index, row_len))
        fits = rng.random() < self.fit_fraction
        length = rng.randint(max(8, row_len // 8), row_len) if fits else \
            rng.randint(row_len + 1, max(row_len + 1, int(self.long_max * row_len)))
        task = None
        if index < self.warmup_docs:
            task = rng.choice(self.warmup)
        elif self.tasks and rng.random() < self.task_mix:
            task = rng.choices(self.tasks, self.weights)[0]
        if task is not None:
            length = max(length, self.min_length(task))      # longer than a row only if T is below its minimum
            seed = rng.randrange(2**31)
            if hasattr(task, "document_scored"):
                ids, scored = task.document_scored(self.tok, length, seed)
                return np.asarray(ids, dtype=np.int64), np.asarray(scored, dtype=bool)
            if not hasattr(task, "document_parts"):                  # a warm-up kind scored whole
                ids = np.asarray(task.document(self.tok, length, seed), dtype=np.int64)
                return ids, np.ones(len(ids), dtype=bool)
            prompt, tail = task.document_parts(self.tok, length, seed)
            scored = [not self.answers_only] * len(prompt) + [True] * len(tail)
            return np.asarray(prompt + tail, dtype=np.int64), np.asarray(scored, dtype=bool)
        start = doc_start(self.tok)
        body, _ = filler_ids(self.tok, rng, max(1, length - len(start) - 1))
        ids = np.asarray(start + body + [int(self.tok.eos)], dtype=np.int64)
        return ids, np.ones(len(ids), dtype=bool)

    def pad(self, index: int, room: int) -> tuple[np.ndarray, np.ndarray]:
        """A piece of exactly `room` tokens (its own document) that closes a row, and its scored
        tokens: filler prose, or during the warm-up a warm-up document of that size (prose would
        give the model something easier to learn than the copying the warm-up is there for)."""
        rng = random.Random(case_seed("pad", self.seed, index, room))
        if index < self.warmup_docs:
            task = rng.choice(self.warmup)
            if hasattr(task, "document_scored") and room >= self.min_length(task):
                ids, scored = task.document_scored(self.tok, room, rng.randrange(2**31))
                return np.asarray(ids[:room], dtype=np.int64), np.asarray(scored[:room], dtype=bool)
        start = doc_start(self.tok)[:room]
        body, _ = filler_ids(self.tok, rng, room - len(start))
        return np.asarray(start + body, dtype=np.int64), np.ones(room, dtype=bool)


class FittingPacker:
    """Rows of T tokens; a document of ≤ T tokens is never cut by a row boundary."""

    def __init__(self, corpus: SizedCorpus, seq_len: int):
        self.corpus, self.seq_len = corpus, seq_len
        self.doc_index, self.doc_offset, self.doc_row_len = 0, 0, seq_len
        self._cache: tuple | None = None

    def _doc(self, i: int, row_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scored) of document i."""
        if self._cache is None or self._cache[:2] != (i, row_len):
            self._cache = (i, row_len, self.corpus.document_scored(i, row_len))
        return self._cache[2]

    def state_dict(self) -> dict:
        return {"doc_index": self.doc_index, "doc_offset": self.doc_offset, "doc_row_len": self.doc_row_len}

    def load_state_dict(self, state: dict) -> None:
        self.doc_index, self.doc_offset = int(state["doc_index"]), int(state["doc_offset"])
        self.doc_row_len = int(state.get("doc_row_len", self.seq_len))

    def next_row(self) -> tuple[np.ndarray, ...]:
        t = self.seq_len
        toks, pos, doc, scored, nxt = [], [], [], [], IGNORE_INDEX
        filled, local = 0, 0
        while filled < t:
            if self.doc_offset == 0:
                self.doc_row_len = t                    # a new document is sized to the current length
            d, sc = self._doc(self.doc_index, self.doc_row_len)
            room = t - filled
            if self.doc_offset == 0 and room < len(d) <= t:
                piece, piece_scored = self.corpus.pad(self.doc_index, room)
                toks.append(piece), pos.append(np.arange(room)), doc.append(np.full(room, local))
                scored.append(piece_scored)
                break
            take = min(len(d) - self.doc_offset, room)
            toks.append(d[self.doc_offset:self.doc_offset + take])
            scored.append(sc[self.doc_offset:self.doc_offset + take])
            pos.append(np.arange(self.doc_offset, self.doc_offset + take))
            doc.append(np.full(take, local))
            filled += take
            self.doc_offset += take
            if self.doc_offset == len(d):
                self.doc_index, self.doc_offset, local = self.doc_index + 1, 0, local + 1
            elif filled == t and sc[self.doc_offset]:
                nxt = int(d[self.doc_offset])           # the document continues in the next row
        tok, p, dc = (np.concatenate(x).astype(np.int64) for x in (toks, pos, doc))
        labels = np.append(tok[1:], nxt)
        labels[:-1][(dc[1:] != dc[:-1]) | ~np.concatenate(scored)[1:]] = IGNORE_INDEX
        return tok, labels, p, dc

    def next_batch(self, rows: int) -> Batch:
        parts = [self.next_row() for _ in range(rows)]
        tok, lab, pos, doc = (np.stack([p[k] for p in parts]) for k in range(4))
        return Batch(torch.from_numpy(tok), torch.from_numpy(lab), torch.from_numpy(pos),
                     torch.from_numpy(doc.astype(np.int32)))


class SizedLoader(SyntheticLoader):
    """The loader for data.source = "synthetic", data.corpus = "sized" (byte tokenizer): the
    synthetic loader with the fitting packer over the sized corpus."""
    corpus = "sized"

    def __init__(self, data_cfg, dp_rank: int = 0, dp_size: int = 1,
                 length_at: Callable[[int], int] | None = None):
        self._setup(data_cfg.batch_size, dp_rank, dp_size, data_cfg.seed, length_at)
        corpus = SizedCorpus(self.tokenizer, data_cfg.seed, list(data_cfg.tasks), list(data_cfg.task_weights),
                             data_cfg.task_mix, data_cfg.fit_fraction, data_cfg.long_max,
                             list(data_cfg.warmup_tasks), data_cfg.warmup_docs, data_cfg.task_loss)
        self.packer = FittingPacker(corpus, data_cfg.seq_len)
