"""Continued pretraining end to end: a transformers model (Qwen2-style: GQA, q/k/v biases, a
sliding-window layer) is imported with `train.convert from-hf`, trained 20 steps by the
trainer from its step-0 checkpoint on one process, under tp=2 and under sp=2 (gloo), and
exported with `to-hf`. The three runs' losses agree to 1e-6, the export of every layout
loads in transformers, and transformers' logits and greedy generation equal our model's."""
from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("transformers")
from hf_tiny import build_hf, lift_fp32_casts  # noqa: E402

import models  # noqa: E402
from train import convert  # noqa: E402
from train.checkpoint import list_checkpoints, load_model_weights  # noqa: E402
from train.config import load_config  # noqa: E402
from train.loop import train  # noqa: E402

HF = dict(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, use_sliding_window=True, sliding_window=8, max_window_layers=1,
          tie_word_embeddings=False)
ARGS = ["--data.seq_len=32", "--data.batch_size=4", "--data.min_doc_chars=10", "--data.max_doc_chars=60",
        "--train.steps=20", "--train.log_every=1000", "--checkpoint.every=0", "--checkpoint.save_final=true",
        "--metrics.tensorboard=false", "--optim.lr=1e-4", "--optim.warmup_steps=2", "--eval.every=0"]


def silent(*_):
    pass


def run_training(rank, world, run_dir, extra):
    cfg = load_config(f"{run_dir}/config.toml", [*ARGS, f"--train.run_dir={run_dir}", *extra])
    return train(cfg, log=silent).losses


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cpt")
    hf, _ = build_hf("qwen2", **HF)
    hf.save_pretrained(tmp / "hf")
    assert convert.main(["from-hf", str(tmp / "hf"), "--output", str(tmp / "run"), "--dtype", "float64"]) == 0
    return tmp


def copy_run(imported, name):
    dst = imported / name
    shutil.copytree(imported / "run", dst)
    return dst


def ours_from(run_dir):
    ckpt = list_checkpoints(run_dir / "checkpoints")[-1]
    cfg = load_config(ckpt / "config.toml")
    model = models.build(cfg.model).double().eval()
    load_model_weights(ckpt, model)
    return model, cfg.model


def import_train_export(imported, pool2, steps: list[str], n_steps: int, lift) -> None:
    """Train the imported run on one process, under tp=2 and under sp=2; the losses agree to 1e-6.
    Each run exports to a transformers model (float32 internals lifted by `lift`) whose logits and
    greedy generation equal our trained model's, with weights moved from the imported ones."""
    from transformers import AutoModelForCausalLM

    from train.hf_files import read_hf_state

    runs = {name: copy_run(imported, name) for name in ("single", "tp2", "sp2")}
    single = run_training(0, 1, str(runs["single"]), steps)
    tp2 = pool2.run(run_training, str(runs["tp2"]), ["--parallel.tp=2", *steps])[0]
    sp2 = pool2.run(run_training, str(runs["sp2"]), ["--parallel.sp=2", *steps])[0]
    assert len(single) == n_steps and single[-1] < single[0]
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


def test_import_train_tp2_sp2_export(imported, pool2):
    import_train_export(imported, pool2, [], 20, lift_fp32_casts)
