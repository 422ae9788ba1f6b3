"""data/tasks/digit_induction.py and word_induction.py: warm-ups whose copies can only be found by matching
several previous tokens (digit strings, runs of filler words), each repeated at once; only the copies are scored."""
from __future__ import annotations

import pytest

from data.tasks import TaskError, get_task
from data.tasks.registry import WARMUPS, get_training_kind
from data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
HEAD = [TOK.BOS] + list(TOK.encode("Random digits: "))
DIGITS = set(TOK.encode("0123456789").tolist())


@pytest.mark.parametrize("length", [0, 60, 200, 256, 700])
def test_documents_are_exact_deterministic_and_made_of_digits(length):
    kind = get_training_kind("digit_induction")
    doc, scored = kind.document_scored(TOK, length, seed=length + 5)
    assert (doc, scored) == kind.document_scored(TOK, length, seed=length + 5)
    assert doc == kind.document(TOK, length, seed=length + 5) and len(doc) == len(scored)
    assert len(doc) == max(length, kind.min_length(TOK)) and kind.min_length(TOK) == len(HEAD) + 16 + 1
    assert doc[:len(HEAD)] == HEAD and doc[-1] == TOK.EOS and all(scored[:len(HEAD)]) and scored[-1]
    assert set(doc[len(HEAD):-1]) <= DIGITS
    assert kind.document(TOK, length, seed=1) != kind.document(TOK, length, seed=2)


def test_scored_digits_are_the_copies_and_one_digit_of_context_does_not_find_them():
    kind = get_training_kind("digit_induction")
    doc, scored = kind.document_scored(TOK, 256, seed=11)
    body = range(len(HEAD), len(doc) - 1)
    copies = [i for i in body if scored[i]]
    assert 0.3 < len(copies) / len(body) < 0.5                     # under half: first copies are not scored
    ambiguous = 0
    for i in copies:
        back = [d for d in range(8, 65) if i - 1 - d >= len(HEAD) and doc[i - d] == doc[i]
                and doc[i - 1 - d] == doc[i - 1]]
        assert back, i                                             # every scored digit is a copy 8..64 back
        earlier = [j for j in range(len(HEAD), i - 1) if doc[j] == doc[i - 1]]
        ambiguous += len(earlier) > 1                              # the previous digit alone recurs
    assert ambiguous > 0.8 * len(copies)
    assert not any(scored[len(HEAD):len(HEAD) + 8])                 # the first string (>= 8 digits) is unscored


def test_digit_induction_is_a_training_kind_not_an_evaluation_task_and_needs_one_token_digits():
    assert "digit_induction" in WARMUPS
    with pytest.raises(TaskError, match="unknown task 'digit_induction'"):
        get_task("digit_induction")

    class Pairs(ByteTokenizer):                                    # a tokenizer that splits a digit in two
        def encode(self, text):
            return super().encode(text.replace("7", "77"))

    with pytest.raises(TaskError, match="needs every digit to be one token"):
        get_training_kind("digit_induction").document_scored(Pairs(), 100, seed=0)


@pytest.mark.parametrize("length", [0, 90, 256, 700])
def test_word_induction_repeats_runs_of_filler_words_and_scores_only_the_copies(length):
    from data.synthetic import ADJ, NOUN, PREP, VERB

    kind = get_training_kind("word_induction")
    doc, scored = kind.document_scored(TOK, length, seed=length + 3)
    assert (doc, scored) == kind.document_scored(TOK, length, seed=length + 3) and len(doc) == len(scored)
    assert doc == kind.document(TOK, length, seed=length + 3) and len(doc) == max(length, kind.min_length(TOK))
    head = [TOK.BOS] + list(TOK.encode("Random words:"))
    assert doc[:len(head)] == head and doc[-1] == TOK.EOS and all(scored[:len(head)]) and scored[-1]
    words = TOK.decode(doc[len(head):-1]).split()
    assert set(words[:-1]) <= set(ADJ + NOUN + VERB + PREP)          # the last one may be cut at the length
    starts = [i for i in range(len(head), len(doc) - 1) if scored[i] and doc[i - 1] == ord(" ")]
    assert starts
    for i in starts:                       # a scored word start: a copy 3..MAX_WORDS words back ...
        back = [d for d in range(8, 130) if doc[i - d - 3:i - d + 1] == doc[i - 3:i + 1] and not scored[i - d]]
        assert back, i
    # ... that a one-token match on " " cannot find: " " precedes every word
    assert sum(t == ord(" ") for t in doc) > 3 * len(starts) / 2
    assert kind.document(TOK, 256, seed=1) != kind.document(TOK, 256, seed=2) and "word_induction" in WARMUPS
    with pytest.raises(TaskError, match="unknown task 'word_induction'"):
        get_task("word_induction")
