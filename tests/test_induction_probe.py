"""benchmarks/induction_probe.py: its rows hold copies where its mask says, and every model it names trains."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import induction_probe  # noqa: E402


def test_masked_targets_are_copies_of_the_first_string():
    gen = torch.Generator().manual_seed(0)
    x, mask = induction_probe.make_batch(gen, 4, 128, 8, 24, max_gap=5)
    assert mask.shape == (4, 128) and 0.2 < mask.float().mean() < 0.5
    for b, i in mask.nonzero().tolist():
        t = i + 1                                   # the target token's index in x
        # some distance (string length + gap) at which both the target and the token before it recur
        assert any(x[b, t - d] == x[b, t] and x[b, t - 1 - d] == x[b, t - 1] for d in range(8, 24 + 5 + 1)
                   if t - 1 - d >= 0), (b, t)
    assert not mask[:, :8].any()                    # the first string itself is never scored


def test_each_model_kind_trains_a_few_steps():
    curves = induction_probe.main(["--models", "ours,ours:W-*-:2,llama", "--steps", "2", "--every", "1",
                                   "--batch", "2", "--seq-len", "32", "--max-len", "12", "--d-model", "32",
                                   "--n-heads", "2"])
    assert set(curves) == {"ours", "ours:W-*-:2", "llama"}
    for rows in curves.values():
        assert [r[0] for r in rows] == [1, 2] and all(4.0 < r[1] < 7.0 and 0.0 <= r[2] <= 1.0 for r in rows)


def test_passkey_held_out_masks_exactly_the_key_digits_after_the_question():
    from data.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    x, mask = induction_probe.passkey_held_out(tok, 256, 6)
    assert x.shape == (6, 257) and mask.shape == (6, 256) and int(mask.sum()) == 30
    for row, m in zip(x, mask):
        text = tok.decode([int(t) for t in row if t < 256])
        digits = tok.decode(row[1:][m].tolist())
        assert text.count(f"The pass key is {digits}.") == 2            # the needle and the answer
        assert text.index("What is the pass key?") < text.rindex(digits)


def test_passkey_mode_trains_the_configs_model_on_its_data():
    rows = induction_probe.main(["--passkey", "configs/long-context-hawk-tiny.toml", "--steps", "2", "--every", "1",
                                 "--held-out", "4", "--set", "model.d_model=32", "--set", "model.lru_width=32",
                                 "--set", "data.batch_size=1", "--set", "data.warmup_tasks=key_copy",
                                 "--set", "data.fit_fraction=1.0"])["passkey"]       # every row has answers
    assert [r[0] for r in rows] == [1, 2]
    assert all(0 < r[1] < 7 and 0 <= r[3] <= r[2] <= 1 and 0 <= r[4] <= 1 for r in rows)
