"""The task evaluation grid: every registered task scored by an oracle, JRT prompts, bad input, CLI."""
from __future__ import annotations

import json

import pytest
import torch

from data.tasks import TASKS, TaskError, get_task, text_ids
from data.tokenizer import ByteTokenizer
from train.plots import _train_length_boundary
from train.task_eval import check_tasks, run_task, summary_table

TOK = ByteTokenizer()


class LookupOracle(torch.nn.Module):
    """Knows (prompt → completion) pairs and emits the completion token by token (optionally wrong)."""

    def __init__(self, pairs: list[tuple[list[int], str]], wrong: bool = False):
        super().__init__()
        shift = str.maketrans("0123456789", "1234567890")     # every digit wrong
        self.pairs = [(p, text_ids(TOK, c.translate(shift) if wrong else c)) for p, c in pairs]
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens, positions=None, doc_ids=None):
        logits = torch.zeros(tokens.shape[0], tokens.shape[1], 260)
        for b, row in enumerate(tokens.tolist()):
            logits[b, -1, self.next_token(row)] = 1.0
        return logits

    def next_token(self, row: list[int]) -> int:
        for prompt, comp in self.pairs:
            if row[:len(prompt)] == prompt:
                done = len(row) - len(prompt)
                return comp[done] if done < len(comp) else ord("\n")
        raise AssertionError("the oracle was asked about a prompt it does not know")


def _pairs(task, lengths, depths, trials, seed=0):
    out = []
    for L in lengths:
        for d in depths:
            for t in range(trials):
                s = task.sample(TOK, L, d, seed * 1000 + t)
                out += [(s.prompt_ids, s.completion), (task.jrt_ids(TOK, s), s.completion)]
    return out


@pytest.mark.parametrize("name", sorted(TASKS))
def test_oracle_scores_one_and_a_wrong_oracle_scores_less(name):
    task = get_task(name)
    lengths, depths = [400, 700], [0.0, 1.0]
    oracle = LookupOracle(_pairs(task, lengths, [0.5] if name == "cwe" else depths, 2))
    for jrt in (False, True):
        res = run_task(oracle, TOK, task, lengths, depths, 2, use_generate=False, jrt=jrt)
        assert all(v == 1.0 for row in res["accuracy"] for v in row), res["cases"][:2]
        assert res["jrt"] is jrt and len(res["cases"]) == len(res["depths"]) * 2 * 2
    if name in ("passkey", "niah_multikey", "niah_multivalue", "niah_multiquery"):
        bad = LookupOracle(_pairs(task, lengths, depths, 2), wrong=True)
        res = run_task(bad, TOK, task, lengths, depths, 2, use_generate=False)
        assert max(v for row in res["accuracy"] for v in row) == 0.0


def test_jrt_prompt_reads_the_context_twice():
    s = get_task("passkey").sample(TOK, 300, 0.5, 0)
    jrt = TOK.decode(get_task("passkey").jrt_ids(TOK, s))
    assert jrt.count(f"The pass key is {s.answers[0]}. Remember it.") == 2 and jrt.count("What is the pass key?") == 1


def test_check_tasks_refuses_bad_input_before_decoding():
    with pytest.raises(TaskError, match="unknown task 'needle'"):
        check_tasks(["passkey", "needle"], TOK, [256], 260)
    with pytest.raises(TaskError, match="shorter than the fixed parts of a passkey prompt"):
        check_tasks(["passkey"], TOK, [64, 256], 260)
    with pytest.raises(TaskError, match="model's vocab_size is 200"):
        check_tasks(["passkey"], TOK, [256], 200)
    assert [t.name for t in check_tasks(["vt", "cwe"], TOK, [256], 260)] == ["vt", "cwe"]


def test_summary_table_and_train_length_marker():
    table = summary_table({"passkey": {"256": 1.0, "512": 0.25}, "passkey_jrt": {"256": 0.5, "512": 0.0}},
                          [256, 512], 256)
    lines = table.splitlines()
    assert lines[0].split() == ["task", "256", "(T)", "512"] and lines[2].split() == ["passkey", "1.00", "0.25"]
    assert lines[3].split() == ["passkey_jrt", "0.50", "0.00"]
    assert _train_length_boundary([256, 512, 1024], 256) == 0.5        # in the gap, never over a cell label
    assert _train_length_boundary([128, 256, 512], 256) == 1.5
    assert _train_length_boundary([256], 256) is None and _train_length_boundary([512], 256) is None


def test_cli_tasks_jrt_table_and_bad_names(tmp_path, capsys):
    from train.config import load_config
    from train.evaluate import main
    from train.loop import train

    run = tmp_path / "run"
    cfg = load_config(None, [
        "--model.pattern=(*-)x1", "--model.d_model=32", "--model.n_heads=2", "--data.seq_len=128",
        "--data.corpus=sized", "--data.batch_size=2", "--train.steps=1", f"--train.run_dir={run}",
        "--checkpoint.every=0", "--train.log_every=100", "--train.device=cpu", "--metrics.tensorboard=false",
    ])
    train(cfg, log=lambda *_: None)
    capsys.readouterr()
    out = tmp_path / "eval"
    rc = main(["--checkpoint", str(run), "--tasks", "passkey,niah_multikey,vt,cwe", "--jrt", "--lengths", "2x",
               "--depths", "2", "--trials", "1", "--loss-docs", "0", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    cap = capsys.readouterr()
    for name in ("passkey", "niah_multikey", "vt", "cwe"):
        for suffix in ("", "_jrt"):
            res = json.loads((out / f"{name}{suffix}.json").read_text())
            assert res["lengths"] == [256] and res["jrt"] is bool(suffix)
            assert all(c["tokens"] == (256 if not suffix else c["tokens"]) for c in res["cases"])
            assert (out / f"{name}{suffix}.png").read_bytes()[:4] == b"\x89PNG"
            assert f"{name}{suffix} " in cap.out                        # a row of the summary table
        assert f"{name:<22} length    256:" in cap.err                  # progress per task and length
    assert main(["--checkpoint", str(run), "--tasks", "passkey,bogus", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown task 'bogus'") and "\n" not in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("pattern", ["(*-)x2", "M-*-", "R-W-"])
def test_batched_decoding_equals_one_prompt_at_a_time(pattern, monkeypatch):
    """A length's prompts decode as batches (several of them here, by a small token budget), and every
    continuation equals decoding that prompt alone: the grid's scores do not depend on batching."""
    import models
    import train.task_eval as te
    from models.config import ModelConfig
    from train.passkey import greedy_decode

    torch.manual_seed(0)
    model = models.build(ModelConfig(pattern=pattern, d_model=32, n_heads=2, n_kv_heads=1, vocab_size=260,
                                     d_state=8, ssm_headdim=8, ssm_chunk_size=8, lru_heads=2, window=16))
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)        # sharper logits: greedy choices are not near-ties
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 260, (n,), generator=g).tolist() for n in (40, 40, 40, 40, 40, 33, 33)]
    monkeypatch.setattr(te, "BATCH_TOKENS", 100)           # rows of 40 tokens: batches of 2, 2, 1
    batched = te.decode_batched(model, prompts, 6, "cpu", use_generate=True)
    alone = [greedy_decode(model, torch.tensor([p]), 6)[0].tolist() for p in prompts]
    assert batched == alone
    assert len({tuple(x) for x in alone}) > 1              # the prompts do get different continuations
