"""data/tasks/key_copy.py: units of a number written, filler, then asked back; only the asked-back digits
and their full stop are scored (not the written ones, nor the cues and prose around them)."""
from __future__ import annotations

import re

import pytest

from data.tasks import TaskError, get_task
from data.tasks.registry import WARMUPS, get_training_kind
from data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
UNIT = re.compile(r" key (\d{5})\.(.*?) key\? (\d{5})\.", re.S)


@pytest.mark.parametrize("length", [0, 70, 150, 256, 600])
def test_documents_are_exact_and_every_number_is_asked_back_after_a_short_gap(length):
    kind = get_training_kind("key_copy")
    doc, scored = kind.document_scored(TOK, length, seed=length + 1)
    assert doc == kind.document(TOK, length, seed=length + 1) and len(doc) == len(scored)
    assert len(doc) == max(length, kind.min_length(TOK)) and doc[0] == TOK.BOS and doc[-1] == TOK.EOS
    text = TOK.decode(doc[1:-1])
    units = UNIT.findall(text)
    assert len(units) >= max(1, length // 80)                      # several units per row, not one
    assert all(a == b and len(TOK.encode(gap)) <= 48 for a, gap, b in units)
    assert len({a for a, _, _ in units}) == len(units)             # a new number each time
    shown = TOK.decode([t for t, s in zip(doc, scored) if s])
    assert shown == "".join(b + "." for _, _, b in units)          # exactly the asked-back answers are scored
    assert kind.document(TOK, 256, seed=99) != kind.document(TOK, 256, seed=98)


def test_key_copy_is_a_training_kind_not_an_evaluation_task():
    assert "key_copy" in WARMUPS
    with pytest.raises(TaskError, match="unknown task 'key_copy'"):
        get_task("key_copy")
