"""RULER-style task generators (exact token lengths, any tokenizer), scorers, and the sized corpus."""
from __future__ import annotations

import numpy as np
import pytest

from data.batch import IGNORE_INDEX
from data.errors import DataError
from data.tasks import TASKS, TaskError, get_task, task_names
from data.tasks.corpus import FittingPacker, SizedCorpus
from data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def test_registry_holds_every_task_and_names_unknown_ones():
    assert {"passkey", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "copy"} <= set(TASKS)
    with pytest.raises(TaskError, match="unknown task .nope.; known tasks: copy, cwe"):
        get_task("nope")
    assert task_names() == sorted(task_names())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_prompts_have_the_exact_length_and_the_answer_in_the_context(name):
    task = get_task(name)
    for length in (300, 1000, 2500):
        for depth in (0.0, 0.5, 1.0):
            s = task.sample(TOK, length, depth, seed=7)
            assert len(s.prompt_ids) == length
            assert s.prompt_ids == task.sample(TOK, length, depth, seed=7).prompt_ids      # deterministic
            text = TOK.decode(s.context_ids)
            for a in s.answers:
                assert a in text
            assert task.score(s.completion, s) == 1.0                # the canonical answer scores 1
            assert task.score(" 0 0 xyz.", s) == 0.0
            jrt = s.jrt_prompt_ids(TOK.BOS)
            assert len(jrt) == 2 * len(s.context_ids) - 1 + len(s.question_ids) and jrt.count(TOK.BOS) == 1
    assert task.sample(TOK, 1000, 0.5, seed=1).prompt_ids != task.sample(TOK, 1000, 0.5, seed=2).prompt_ids


def test_needle_depth_moves_the_needle():
    shallow = TOK.decode(get_task("passkey").sample(TOK, 2000, 0.0, 3).prompt_ids)
    deep = TOK.decode(get_task("passkey").sample(TOK, 2000, 1.0, 3).prompt_ids)
    assert shallow.index("Remember it.") < 0.2 * len(shallow) and deep.index("Remember it.") > 0.8 * len(deep)


def test_partial_answers_score_partially():
    s = get_task("niah_multivalue").sample(TOK, 600, 0.3, 0)
    assert get_task("niah_multivalue").score(" " + s.answers[0] + ", 11111", s) == pytest.approx(1 / 3)
    vt = get_task("vt").sample(TOK, 600, 0.3, 0)
    assert get_task("vt").score(" " + vt.answers[1] + " ZZZ", vt) == pytest.approx(1 / 3)
    pk = get_task("passkey").sample(TOK, 600, 0.3, 0)
    assert get_task("passkey").score(" " + pk.answers[0] + "1", pk) == 0.0     # extra digit: no match


def test_cwe_common_words_are_the_most_frequent():
    s = get_task("cwe").sample(TOK, 3000, 0.5, 4)
    words = TOK.decode(s.context_ids).split(":", 1)[1].split()
    counts = {w: words.count(w) for w in set(words)}
    least_common = min(counts[a] for a in s.answers)
    assert all(c < least_common for w, c in counts.items() if w not in s.answers)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_too_short_is_one_line_naming_the_minimum(name):
    with pytest.raises(TaskError, match=r"shorter than the fixed parts of a .* ask for lengths of at least \d+") as e:
        get_task(name).sample(TOK, 20, 0.5, 0)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_training_documents_end_with_answer_and_fit(name):
    task = get_task(name)
    doc = task.document(TOK, 400, seed=11)
    assert len(doc) <= 400 and doc[0] == TOK.BOS and doc[-1] == TOK.EOS
    s = task.build(__import__("random").Random(11), TOK, 400, 0.5)
    assert TOK.decode(doc).endswith(s.completion)


def _local_hf_tokenizer(directory, alphabet_only: bool = False) -> str:
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    if alphabet_only:      # no digits in the vocabulary: numbers become <unk>
        bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
        bpe.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        trainer = tokenizers.trainers.BpeTrainer(vocab_size=200, special_tokens=["<eos>", "<unk>"])
        bpe.train_from_iterator(["the pass key is what remember it"] * 20, trainer)
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", unk_token="<unk>")
    else:
        bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
        bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                                 initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
        bpe.train_from_iterator(["The pass key is 12345. The quiet river watches the garden."] * 50, trainer)
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    fast.save_pretrained(directory)
    return str(directory)


def test_exact_token_lengths_with_a_bpe_tokenizer(tmp_path):
    from data.tokenizer import get_tokenizer

    tok = get_tokenizer(f"hf:{_local_hf_tokenizer(tmp_path / 'bpe')}")
    for name in sorted(TASKS):
        s = get_task(name).sample(tok, 700, 0.4, 1)
        assert len(s.prompt_ids) == 700
        assert all(a in tok.decode(s.context_ids) for a in s.answers)


def test_a_tokenizer_that_cannot_spell_the_answer_is_refused(tmp_path):
    from data.tokenizer import get_tokenizer

    tok = get_tokenizer(f"hf:{_local_hf_tokenizer(tmp_path / 'letters', alphabet_only=True)}")
    with pytest.raises(TaskError, match="cannot encode the passkey answer"):
        get_task("passkey").sample(tok, 400, 0.5, 0)


def _corpus(**kw):
    args = dict(tasks=["passkey", "niah_multikey", "copy"], weights=[], task_mix=0.8, fit_fraction=0.8,
                long_max=3.0)
    args.update(kw)
    return SizedCorpus(TOK, seed=5, **args)


def test_sized_documents_follow_the_row_length():
    c = _corpus(task_mix=0.0, fit_fraction=1.0)
    lens = [len(c.document(i, 256)) for i in range(200)]
    assert max(lens) <= 256 and min(lens) >= 32 and np.mean(lens) > 100
    c = _corpus(task_mix=0.0, fit_fraction=0.0)
    lens = [len(c.document(i, 128)) for i in range(100)]
    assert min(lens) > 128 and max(lens) <= 3 * 128
    assert np.array_equal(c.document(3, 128), c.document(3, 128))


def test_fitting_packer_never_cuts_a_fitting_document_and_labels_are_next_tokens():
    whole = FittingPacker(_corpus(fit_fraction=1.0), 256)    # every document fits: none may be cut
    mixed = FittingPacker(_corpus(fit_fraction=0.5), 256)
    questions = continued = 0
    for _ in range(60):
        tok, lab, pos, doc = whole.next_row()
        assert len(tok) == len(lab) == len(pos) == len(doc) == 256
        same = doc[1:] == doc[:-1]
        assert np.array_equal(lab[:-1][same], tok[1:][same]) and (lab[:-1][~same] == IGNORE_INDEX).all()
        starts = np.flatnonzero(np.r_[True, ~same])
        ends = np.r_[starts[1:], 256] - 1
        assert (pos[starts] == 0).all()                            # no document continues from the last row
        assert all(tok[e] == TOK.EOS or tok[s] != TOK.BOS or e == 255 for s, e in zip(starts, ends))
        text = TOK.decode(tok)
        questions += text.count("What is the pass key?")
        assert text.count("What is the pass key?") == text.count("Remember it.")   # needle and question together
        _, _, pos2, doc2 = mixed.next_row()
        continued += int(pos2[0] > 0)
    assert questions > 10 and continued > 5                        # long documents do run across rows


def test_sized_loader_resumes_exactly_under_a_curriculum():
    from data.loader import build_loader
    from train.config import load_config

    cfg = load_config(None, ["--data.corpus=sized", "--data.seq_len=256", "--data.batch_size=2",
                             "--data.curriculum=fixed_linear", "--data.curriculum_min_len=64",
                             "--data.curriculum_steps=6"])
    a = build_loader(cfg.data)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    b = build_loader(cfg.data)
    b.load_state_dict(state)
    for _ in range(5):
        x, y = a.next_batch(), b.next_batch()
        assert x.tokens.shape == y.tokens.shape and (x.tokens == y.tokens).all() and (x.labels == y.labels).all()
    assert x.tokens.shape[1] == 256


@pytest.mark.parametrize("name", ["long-context-tiny", "long-context-mamba2-tiny", "long-context-hawk-tiny",
                                  "long-context-hybrid-tiny"])
def test_long_context_recipes_load_and_give_task_dense_rows(name):
    from pathlib import Path

    import models
    from data.loader import build_loader
    from train.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.toml")
    assert cfg.data.corpus == "sized" and cfg.data.seq_len == 256
    models.build(cfg.model)
    if cfg.data.warmup_docs:                       # a warm-up first: its rows are the warm-up kinds only
        first = TOK.decode(build_loader(cfg.data).next_batch().tokens[0].tolist())
        assert first.startswith("Random ids: ") and "pass key" not in first
        cfg.data.warmup_docs = 0                   # the mix after it
    loader = build_loader(cfg.data)
    text = "".join(TOK.decode(row) for _ in range(4) for row in loader.next_batch().tokens.tolist())
    assert text.count("What is the pass key?") >= 4 and "The code of" in text and " Recall: " in text


def test_induction_warmup_documents_repeat_their_random_half_and_are_training_only():
    from data.tasks.registry import WARMUPS, get_training_kind

    ind = get_training_kind("induction")
    doc = ind.document(TOK, 200, seed=3)
    assert 195 <= len(doc) <= 200 and doc[0] == TOK.BOS and doc[-1] == TOK.EOS
    first, second = TOK.decode(doc).removeprefix("Random: ").rstrip(".").split(" Again: ")
    assert first == second and len(first) >= 90 and first != ind.document(TOK, 200, seed=4)
    assert "induction" in WARMUPS and "induction" not in TASKS
    with pytest.raises(TaskError, match="unknown task 'induction'"):
        get_task("induction")                      # not an evaluation task: nothing to score
    with pytest.raises(TaskError, match=r"unknown data.tasks entry 'inductoin'; known: .*induction"):
        get_training_kind("inductoin")


def test_token_induction_pairs_random_byte_ids_and_scores_only_what_the_context_predicts():
    from data.tasks.registry import WARMUPS, get_training_kind

    kind = get_training_kind("token_induction")
    doc, scored = kind.document_scored(TOK, 200, seed=3)
    assert len(doc) == len(scored) == 200 and doc == kind.document(TOK, 200, seed=3)
    head = [TOK.BOS] + list(TOK.encode("Random ids: "))
    assert doc[:len(head)] == head and doc[-1] == TOK.EOS and all(scored[:len(head)]) and scored[-1]
    ids = doc[len(head):-1]
    assert len(set(ids)) > 60 and max(ids) > 127           # ids from the whole byte range, not letters
    # every scored id inside the body is a copy: the id and its predecessor recur 8..64 tokens back
    for i in range(len(head) + 1, len(doc) - 1):
        if scored[i]:
            assert any(doc[i - d] == doc[i] and doc[i - 1 - d] == doc[i - 1] for d in range(8, 65)), i
    assert 0.3 < sum(scored[len(head):-1]) / len(ids) < 0.5       # under half: first copies are not scored
    assert kind.document(TOK, 200, seed=4) != doc and "token_induction" in WARMUPS
    with pytest.raises(TaskError, match="unknown task 'token_induction'"):
        get_task("token_induction")


def test_packer_leaves_unscored_tokens_out_of_the_labels_and_warmup_docs_come_first():
    from data.batch import IGNORE_INDEX

    corpus = _corpus(fit_fraction=1.0, warmup_tasks=["token_induction"], warmup_docs=3)
    packer = FittingPacker(corpus, 128)
    first = corpus.document(0, 128)
    tok, labels, _, doc = packer.next_row()
    n = len(first)
    _, scored = corpus.document_scored(0, 128)
    assert np.array_equal(tok[:n], first) and tok[0] == TOK.BOS
    assert np.array_equal(labels[:n - 1] != IGNORE_INDEX, scored[1:])
    assert all(TOK.decode(corpus.document(i, 128).tolist()).startswith("Random ids: ") for i in range(3))
    assert not TOK.decode(corpus.document(3, 128).tolist()).startswith("Random ids: ")
    with pytest.raises(TaskError, match="data.warmup_docs must be >= 0"):
        _corpus(warmup_docs=5)


def test_warmup_rows_are_closed_by_warmup_pieces_not_prose():
    """During the warm-up a row's leftover room is a warm-up document of that size (prose there kept
    copying from forming) unless it is shorter than the smallest one; after it, filler prose as before."""
    corpus = _corpus(fit_fraction=1.0, warmup_tasks=["token_induction"], warmup_docs=40)
    packer = FittingPacker(corpus, 128)
    rows = [packer.next_row() for _ in range(6)]
    assert packer.doc_index < 40
    for tok, _, _, doc in rows:
        for d in np.unique(doc):
            piece = tok[doc == d].tolist()
            assert len(piece) < corpus.min_length(corpus.warmup[0]) or TOK.decode(piece).startswith("Random ids: ")
    ids, scored = corpus.pad(0, 100)
    assert len(ids) == len(scored) == 100 and not scored.all()
    ids, scored = corpus.pad(40, 100)                          # past the warm-up: prose, every token scored
    assert len(ids) == 100 and scored.all() and TOK.decode(ids.tolist()).isprintable()


def test_sized_and_classic_synthetic_loaders_refuse_each_others_state():
    from data.loader import SyntheticLoader
    from data.tasks.corpus import SizedLoader
    from train.config import DataConfig

    sized = SizedLoader(DataConfig(corpus="sized", seq_len=128, batch_size=2, tasks=["passkey", "induction"]))
    classic = SyntheticLoader(128, 2)
    sized.next_batch(), classic.next_batch()
    with pytest.raises(DataError, match="data.corpus='sized', not 'classic'"):
        classic.load_state_dict(sized.state_dict())
    with pytest.raises(DataError, match="data.corpus='classic', not 'sized'"):
        sized.load_state_dict(classic.state_dict())


def test_recall_warmup_asks_every_pair_again_in_another_order():
    from data.tasks.registry import get_training_kind

    doc = get_training_kind("recall").document(TOK, 256, seed=5)
    assert len(doc) <= 256 and doc[0] == TOK.BOS and doc[-1] == TOK.EOS
    first, second = TOK.decode(doc).removeprefix("Pairs:").rstrip(".").split(". Recall:")
    pairs, again = [p.split() for p in first.split(",")], [p.split() for p in second.split(",")]
    assert len(pairs) >= 8 and sorted(pairs) == sorted(again) and pairs != again
    assert len({k for k, _ in pairs}) == len(pairs) and all(len(v) == 5 for _, v in pairs)


def test_task_loss_answers_scores_only_a_task_documents_completion():
    """data.task_loss = "answers": a passkey document's prompt is left out of the loss, its answer and end
    token are scored; the same documents, and filler prose stays scored, as under "all"."""
    every = _corpus(tasks=["passkey"], task_mix=0.5, fit_fraction=1.0)
    answers = _corpus(tasks=["passkey"], task_mix=0.5, fit_fraction=1.0, task_loss="answers")
    kinds = set()
    for i in range(30):
        ids, scored_all = every.document_scored(i, 256)
        same, scored = answers.document_scored(i, 256)
        assert np.array_equal(ids, same) and scored_all.all()
        text = TOK.decode(ids[1:-1].tolist())
        if "pass key" not in text:
            kinds.add("filler")
            assert scored.all()
            continue
        kinds.add("passkey")
        key = text.rsplit("The pass key is", 1)[1]
        assert TOK.decode(ids[scored][:-1].tolist()) == key and ids[scored][-1] == TOK.EOS
        assert key.strip(" .").isdigit() and not scored[:-len(key) - 1].any()
    assert kinds == {"filler", "passkey"}
    with pytest.raises(TaskError, match="data.task_loss must be 'all' or 'answers'"):
        _corpus(task_loss="prompt")
