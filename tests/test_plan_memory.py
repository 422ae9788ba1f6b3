"""The planner's activation and logits estimate against the peak of tensor memory measured on CPU
(train/plan_measure.py's StorageTracker) during two accumulated micro-batches of tiny models, in
several layouts: each family, with and without activation checkpointing, two batch shapes,
the chunked loss.

Stated tolerance: the measured peak (activations, loss tensors, parameter gradients) is within
5 % of the plan's activations + logits (+ a recomputed layer) + gradients. The formulas for `*`
and `-` are derived from what the ops save; those for `M` and `R` on the CPU path were fitted to single blocks of
other widths (train/plan_activations.py), so stacks, checkpointing and shapes here are new."""
from __future__ import annotations

import pytest
import torch

import models
from parallel.checkpointing import apply_activation_checkpointing
from parallel.loss import apply_chunked_loss, token_loss_sum
from train.config import load_config
from train.plan_measure import StorageTracker
from train.plan_memory import make_plan

TOLERANCE = 0.05
TINY = ["--model.d_model=64", "--model.n_heads=4", "--model.n_kv_heads=2", "--model.vocab_size=512",
        "--model.d_state=16", "--model.ssm_headdim=16", "--model.ssm_chunk_size=32", "--model.lru_heads=4"]
LAYOUTS = [  # (pattern, batch, seq_len, checkpointing, loss_chunk)
    ("(*-)x3", 2, 256, False, 0),
    ("(*-)x3", 2, 256, True, 0),
    ("(*-)x2", 4, 128, False, 0),
    ("(*-)x2", 2, 256, False, 64),
    ("Mx3", 2, 256, False, 0),
    ("(R-)x2", 2, 256, False, 0),
    ("(M-*-)x2", 2, 256, True, 0),
]


def measured_peak(cfg) -> int:
    """Peak bytes of tensors created during two accumulated micro-batches (forward + backward
    each; parameters excluded): the second runs with the gradients alive, as in training."""
    torch.manual_seed(0)
    model = models.build(cfg.model)
    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model)
    b, t = cfg.data.batch_size, cfg.data.seq_len
    tokens = torch.randint(0, cfg.model.vocab_size, (b, t))
    labels = torch.randint(0, cfg.model.vocab_size, (b, t))
    if cfg.train.loss_chunk:
        apply_chunked_loss(model, cfg.train.loss_chunk)
        model.loss_labels = labels
    with StorageTracker() as tracker:
        for _ in range(2):      # the logits are a temporary, as in the engine: freed once the loss has them
            loss = model(tokens) if cfg.train.loss_chunk else token_loss_sum(model(tokens), labels)
            loss.backward()
    return tracker.peak


@pytest.mark.parametrize("pattern,batch,seq_len,ckpt,chunk", LAYOUTS)
def test_activation_estimate_matches_measured_peak(pattern, batch, seq_len, ckpt, chunk):
    cfg = load_config(None, [*TINY, f"--model.pattern={pattern}", f"--data.batch_size={batch}",
                             f"--data.seq_len={seq_len}", f"--train.activation_checkpointing={ckpt}",
                             f"--train.loss_chunk={chunk}"])
    plan = make_plan(cfg, 1, None)
    predicted = plan.activations + plan.logits + plan.terms["recompute"] + plan.terms["gradients"]
    got = measured_peak(cfg)
    assert abs(predicted / got - 1) < TOLERANCE, (predicted, got)


def test_checkpointing_estimate_is_smaller_and_measured_so():
    base = [*TINY, "--model.pattern=(*-)x3", "--data.batch_size=2", "--data.seq_len=128"]
    off, on = (load_config(None, [*base, f"--train.activation_checkpointing={c}"]) for c in (False, True))
    assert make_plan(on, 1, None).activations < 0.5 * make_plan(off, 1, None).activations
    assert measured_peak(on) < measured_peak(off)
