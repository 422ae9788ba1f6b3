"""Continued pretraining of a RecurrentGemma model end to end (the helpers of
test_interop_train): a transformers RecurrentGemmaForCausalLM (recurrent + local-attention
blocks, GQA, every bias, soft-capped logits) is imported with `train.convert from-hf`, trained a
few steps on one process, under tp=2 and under sp=2 (gloo), and exported with `to-hf`. The
three runs' losses agree to 1e-6; every export loads in transformers, whose logits (float32
internals lifted to float64) and greedy generation equal our trained model's."""
from __future__ import annotations

import pytest

pytest.importorskip("transformers")
from test_interop_recurrent_gemma import build_hf, lift  # noqa: E402
from test_interop_train import import_train_export  # noqa: E402

from train import convert  # noqa: E402

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
    import_train_export(imported, pool2, STEPS, 6, lift)
