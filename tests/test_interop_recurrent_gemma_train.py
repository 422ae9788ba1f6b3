"""Continued pretraining of a RecurrentGemma model end to end (the helpers of
test_interop_train): a transformers RecurrentGemmaForCausalLM (recurrent + local-attention
blocks, GQA, every bias, soft-capped logits) is imported with `train.convert from-hf`, trained a
few steps on one process, under tp=2 and under sp=2 (gloo), and exported with `to-hf`. The
three runs' losses agree to 1e-6; every export loads in transformers, whose logits (float32
internals lifted to float64) and greedy generation equal our trained model's."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from test_interop_recurrent_gemma import build_hf, lift  # noqa: E402
from test_interop_train import copy_run, ours_from, run_training  # noqa: E402

from train import convert  # noqa: E402
from train.hf_files import read_hf_state  # noqa: E402

HF = dict(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
          num_key_value_heads=2, attention_window_size=8, lru_width=32, logits_soft_cap=2.0)
STEPS = ["--train.steps=6"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cpt-rg")
    hf, _ = build_hf(**HF)
    hf.save_pretrained(tmp / "hf")
    assert convert.main(["from-hf", str(tmp / "hf"), "--output", str(tmp / "run"), "--dtype", "float64"]) == 0
    return tmp


def test_import_train_tp2_sp2_export(imported, pool2):
    from transformers import AutoModelForCausalLM

    runs = {name: copy_run(imported, name) for name in ("single", "tp2", "sp2")}
    single = run_training(0, 1, str(runs["single"]), STEPS)
    tp2 = pool2.run(run_training, str(runs["tp2"]), ["--parallel.tp=2", *STEPS])[0]
    sp2 = pool2.run(run_training, str(runs["sp2"]), ["--parallel.sp=2", *STEPS])[0]
    assert len(single) == 6 and single[-1] < single[0]
    for losses in (tp2, sp2):
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(single), rtol=1e-6, atol=0)

    original = read_hf_state(imported / "hf")
    tokens = torch.randint(3, 260, (2, 24), generator=torch.Generator().manual_seed(9))
    prompt = tokens[:, :6]
    for name, run in runs.items():
        out = imported / f"export-{name}"
        assert convert.main(["to-hf", str(run), "--output", str(out), "--dtype", "float64"]) == 0
        exported = read_hf_state(out)
        moved = max(float((exported[k] - original[k]).abs().max()) for k in original)
        assert 0 < moved < 0.01, (name, moved)        # trained from the imported weights, not from scratch
        ours, cfg = ours_from(run)
        hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, torch_dtype=torch.float64).eval()
        lift(hf, cfg)
        with torch.no_grad():
            assert (hf(tokens).logits - ours(tokens)).abs().max() < 1e-12, name
            theirs = hf.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
        assert torch.equal(ours.generate(prompt, 10), theirs), name
