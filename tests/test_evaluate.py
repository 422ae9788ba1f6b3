"""Passkey scoring/decoding, loss by position, the evaluation CLI and periodic evaluation."""
from __future__ import annotations

import json
import re

import pytest
import torch

from data.tokenizer import ByteTokenizer
from train.evaluate import local_positions, loss_in_ranges, main, parse_length
from train.passkey import build_case, depth_grid, full_forward_greedy, run_passkey, score_passkey

TOK = ByteTokenizer()


@pytest.mark.parametrize("generated,key,ok", [
    (" 12345.", "12345", True),
    ("12345", "12345", True),
    (" 12345 is the key", "12345", True),
    (" 123456", "12345", False),     # extra digit: not an exact match
    (" 1234", "12345", False),
    (" 12346.", "12345", False),
    (" the key 12345", "12345", False),   # the answer must come first
    ("", "12345", False),
])
def test_score_passkey_hand_made(generated, key, ok):
    assert score_passkey(generated, key) is ok


def test_build_case_shape_and_length():
    for length in (256, 1000, 3000):
        for depth in (0.0, 0.5, 1.0):
            case = build_case(TOK, length, depth, seed=3, trial=1)
            text = TOK.decode(case.prompt_ids)
            assert case.prompt_ids[0] == TOK.BOS
            assert abs(len(case.prompt_ids) - length) <= max(40, length // 40)
            assert text.startswith("There is an important piece of information")
            assert text.endswith("What is the pass key? The pass key is")
            assert f"The pass key is {case.key}. Remember it." in text
            assert re.fullmatch(r"\d{5}", case.key)
    shallow = TOK.decode(build_case(TOK, 2000, 0.0, 1).prompt_ids)
    deep = TOK.decode(build_case(TOK, 2000, 1.0, 1).prompt_ids)
    assert shallow.index("Remember it.") < 0.2 * len(shallow) < 0.8 * len(deep) < deep.index("Remember it.")
    assert depth_grid(3) == [0.0, 0.5, 1.0] and depth_grid(1) == [0.5]


class OracleModel(torch.nn.Module):
    """Reads the needle from its input and emits ' KEY.' (or a wrong key): a model with known answers."""

    def __init__(self, wrong: bool = False):
        super().__init__()
        self.wrong = wrong
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens, positions=None, doc_ids=None):
        rows = []
        for row in tokens.tolist():
            text = TOK.decode(row)
            key = re.search(r"The pass key is (\d+)\. Remember", text).group(1)
            if self.wrong:
                key = key[:-1] + str((int(key[-1]) + 1) % 10)
            q = text.rindex("The pass key is")
            done = text[q + len("The pass key is"):]
            target = f" {key}."
            nxt = target[len(done)] if len(done) < len(target) else "\n"
            logits = torch.zeros(tokens.shape[1], 260)
            logits[-1, ord(nxt)] = 1.0
            rows.append(logits)
        return torch.stack(rows)


def test_run_passkey_oracle_and_wrong_model():
    good = run_passkey(OracleModel(), TOK, [300, 600], depth_grid(3), trials=2, seed=0, use_generate=False)
    assert good["accuracy"] == [[1.0, 1.0]] * 3
    bad = run_passkey(OracleModel(wrong=True), TOK, [300], depth_grid(2), trials=1, use_generate=False)
    assert bad["accuracy"] == [[0.0], [0.0]]
    assert all(c["generated"].startswith(" ") for c in good["cases"])


def test_full_forward_greedy_matches_argmax_chain():
    torch.manual_seed(0)
    emb = torch.randn(260, 260)

    def model(seq):   # next-token logits depend on the last two tokens
        return emb[seq] + 0.5 * emb[torch.roll(seq, 1, dims=1)]

    prompt = torch.randint(0, 256, (1, 7))
    new = full_forward_greedy(model, prompt, 5)
    seq = prompt[0].tolist()
    for _ in range(5):
        t = torch.tensor([seq])
        seq.append(int(model(t)[0, -1].argmax()))
    assert new[0].tolist() == seq[7:]


def test_local_positions_and_ranges():
    doc = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    assert local_positions(doc).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]
    curve = {"length": 64, "positions": [4, 12, 20, 36, 52], "loss": [1.0, 2.0, 3.0, 4.0, 5.0]}
    assert loss_in_ranges(curve, 16) == {"0-1T": 1.5, "1-2T": 3.0, "2-4T": 4.5}
    assert parse_length("4k", 100) == 4096 and parse_length("16x", 64) == 1024 and parse_length("77", 1) == 77
    with pytest.raises(ValueError, match="cannot read length"):
        parse_length("lots", 64)


def test_cli_on_tiny_checkpoint_and_periodic_eval(tmp_path):
    from train.config import load_config
    from train.loop import train

    run = tmp_path / "run"
    cfg = load_config(None, [
        "--model.pattern=(*-)x1", "--model.d_model=32", "--model.n_heads=2", "--data.seq_len=64",
        "--data.batch_size=2", "--train.steps=2", f"--train.run_dir={run}", "--checkpoint.every=0",
        "--train.log_every=100", "--eval.every=2", "--eval.passkey_lengths=256,320", "--eval.passkey_depths=2",
        "--eval.passkey_trials=1", "--eval.loss_rows=1", "--train.device=cpu",
    ])
    train(cfg, log=lambda *_: None)
    periodic = run / "eval" / "step-0000002"
    for name in ("passkey.json", "passkey.png", "loss_by_position.json", "loss_by_position.png"):
        assert (periodic / name).is_file(), name
    assert list((run / "tb").iterdir())

    out = tmp_path / "eval"
    # a passkey prompt's fixed parts are ~140 tokens: 64 cannot be built, and is refused (issue 19), not scored
    assert main(["--checkpoint", str(run), "--lengths", "64", "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()
    rc = main(["--checkpoint", str(run), "--lengths", "256,5x", "--depths", "3", "--trials", "1",
               "--loss-length", "4x", "--loss-docs", "1", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    pk = json.loads((out / "passkey.json").read_text())
    assert pk["lengths"] == [256, 320] and len(pk["accuracy"]) == 3 and pk["train_length"] == 64
    lp = json.loads((out / "loss_by_position.json").read_text())
    assert lp["length"] == 256 and len(lp["loss"]) > 10 and all(x > 0 for x in lp["loss"])
    for png in ("passkey.png", "loss_by_position.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "tb").is_dir() and list((out / "tb").iterdir())
    assert main(["--checkpoint", str(tmp_path / "missing")]) == 2


def test_shard_set_is_used_for_loss_and_passkey(tmp_path):
    """data.source=shards: loss-by-position rows come from the shards, prompts use their tokenizer."""
    from data.prepare import write_synthetic_shards
    from train.config import load_config
    from train.evaluate import eval_rows, eval_tokenizer, loss_by_position

    write_synthetic_shards(tmp_path / "shards", documents=40, seed=3, min_chars=300, max_chars=900)
    cfg = load_config(None, ["--data.source=shards", f"--data.path={tmp_path / 'shards'}", "--data.seq_len=64"])
    tok = eval_tokenizer(cfg.data)
    assert tok.name == "byte"
    rows = eval_rows(cfg.data, 256, 2, seed=0)
    assert rows.tokens.shape == (2, 256)
    torch.manual_seed(0)
    import models

    model = models.build(models.ModelConfig(pattern="*-", d_model=32, n_heads=2))
    curve = loss_by_position(model, cfg.data, 256, 2)
    assert curve["tokens"] > 400 and len(curve["loss"]) > 10
