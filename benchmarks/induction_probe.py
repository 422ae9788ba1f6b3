"""Does a tiny model learn content-based copying (an induction head)? A bare training loop, no train/ path.

Rows of T tokens are packed with segments "s [filler] s": s a random byte string of length L in
[min_len, max_len], the filler (optional, 0..max_gap random bytes) between the two copies. Loss and
accuracy count only the second copy, from its second token on (its first is unpredictable: the
model cannot know where the copy starts). A model that only learns unigram statistics scores
~1/256; one with an induction head approaches 1. The models named by --models train in lockstep
(one step each, in turn) on identically seeded data with the same optimizer (AdamW, linear
warm-up, then constant lr, clip 1.0): longweave's LanguageModel with global attention (`ours`,
"(*-)xN"), any other pattern (`ours:PATTERN:WINDOW`, e.g. `ours:W-*-:8`: a sliding-window layer of
8 tokens, then a global one), and transformers' LlamaForCausalLM of the same shape (`llama`).

What it showed (2 layers, d_model 128, 4 heads, lr 3e-3, 1 thread):
- `ours` and `llama` track each other step for step (batch 32, T = 128: copy accuracy 0.022 / 0.023
  at step 100, 0.024 / 0.030 at step 200) and neither leaves the plateau by step 200: no bug in our
  model, a slow start of the two-layer induction circuit.
- A sliding-window first layer (2, 4 or 8 tokens) copies at 0.83 / 0.77 / 0.58 by step 100 (batch 32,
  T = 128): the window hands every position its predecessors from step 0 (the "previous-token
  head" a global layer must first discover), so the global layer only has to learn to match them.
  At batch 8, T = 256 the window-8 model copies at 0.88 by step 175 (window 2: 0.08 at step 200).
- What is copied matters: strings over 36 letters and digits (`--alphabet 36`) or 94 printable
  characters stay at chance for 250 steps (batch 8, T = 256, window 8), tied or untied embeddings.
- So does what is scored: trained on every next token (`--loss-on-all`, the first copy's random
  tokens included, as a language model sees them) the window-8 model stays at chance for 300 steps.

    python benchmarks/induction_probe.py --steps 200 --seq-len 128 --lr 3e-3 --models ours:W-*-:2,ours,llama
    python benchmarks/induction_probe.py --steps 150 --seq-len 128 --lr 3e-3 --models ours:W-*-:4,ours:W-*-:8
    python benchmarks/induction_probe.py --steps 250 --batch 8 --lr 3e-3 --alphabet 36 --models ours:W-*-:8
    python benchmarks/induction_probe.py --steps 300 --batch 8 --lr 3e-3 --loss-on-all --models ours:W-*-:8

Passkey mode (`--passkey CONFIG`, `--set section.key=value` overrides): CONFIG's model, its data (the
trainer's loader, e.g. the sized corpus with its warm-up) and its optimizer and lr schedule in a bare
loop; every --every steps the teacher-forced accuracy of the key's digits on held-out passkey prompts
(T/2..T tokens, all depths; seeds far from train.evaluate's) and of the asked-back digits of held-out
key_copy documents. Chance is 0.1 per digit. What it showed for Hawk ("(R-)x4", d_model 128, batch 8,
T = 256, lr 3e-3, one thread on a loaded 2-core machine, ~1–2.5 steps/s): every recipe stayed at or below
chance — passkey documents only 0.100 at step 400; with a length curriculum 160 → 256 over 400 steps
0.094 at step 250; a key_copy warm-up (an earlier, longer-cued version: " The key is K. Remember it."
… " What is the key? The key is K.") of 4000 documents, then passkey:key_copy 1:1, 0.094 at step 250;
that key_copy only 0.108 at step 450 (its own digits 0.097); key_copy with the short cues only 0.025
at step 300 (its own digits 0.106), and at lr 1e-2 0.075 at step 300 (its own 0.107). Mamba-2 ("Mx6",
d_state 32) on short-cue key_copy only: 0.000 at step 250 (its own digits 0.091). A hybrid "M-*-" on
the Transformer's recipe: 0.108 at step 550.

    python benchmarks/induction_probe.py --passkey configs/long-context-hawk-tiny.toml --steps 400 \
        --set data.warmup_docs=0 --set data.warmup_tasks= --set data.tasks=passkey --set data.task_weights=1.0
    python benchmarks/induction_probe.py --passkey configs/long-context-hawk-tiny.toml --steps 500 \
        --set data.warmup_docs=100000 --set data.warmup_tasks=key_copy --set data.tasks=passkey \
        --set data.task_weights=1.0
"""
from __future__ import annotations

import argparse
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's packages, not benchmarks/kernels.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ALPHABETS = {36: torch.tensor([ord(c) for c in string.ascii_lowercase + string.digits]),
             94: torch.arange(33, 127)}             # printable ASCII without the space


def make_batch(gen: torch.Generator, batch: int, seq_len: int, min_len: int, max_len: int,
               max_gap: int, alphabet: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, T+1] and a mask [B, T] of the targets that are predictable only by copying.
    alphabet 256: random bytes; 94: printable ASCII; 36: lowercase letters and digits."""
    tokens = torch.randint(0, alphabet, (batch, seq_len + 1), generator=gen)
    if alphabet in ALPHABETS:
        tokens = ALPHABETS[alphabet][tokens]
    mask = torch.zeros(batch, seq_len + 1, dtype=torch.bool)
    for b in range(batch):
        pos = 0
        while True:
            n = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
            gap = int(torch.randint(0, max_gap + 1, (1,), generator=gen)) if max_gap else 0
            if pos + 2 * n + gap > seq_len + 1:
                break
            s = tokens[b, pos:pos + n]
            start = pos + n + gap
            tokens[b, start:start + n] = s
            mask[b, start + 1:start + n] = True
            pos = start + n
    return tokens, mask[:, 1:]


def build(name: str, args) -> torch.nn.Module:
    """`ours` (the pattern "(*-)xN"), `ours:PATTERN:WINDOW` (e.g. ours:W-*-:2, a sliding-window layer
    first), or `llama`."""
    if name.startswith("ours"):
        from models.config import ModelConfig
        from models.lm import LanguageModel
        _, pattern, window = (name.split(":") + ["", ""])[:3]
        cfg = ModelConfig(pattern=pattern or f"(*-)x{args.n_layers}", window=int(window or 256), vocab_size=260,
                          d_model=args.d_model, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                          tie_embeddings=not args.untied)
        return LanguageModel(cfg)
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        hidden = -(-int(8 * args.d_model / 3) // 64) * 64
        cfg = LlamaConfig(vocab_size=260, hidden_size=args.d_model, intermediate_size=hidden,
                          num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                          num_key_value_heads=args.n_kv_heads or args.n_heads, max_position_embeddings=4096,
                          tie_word_embeddings=not args.untied, rms_norm_eps=1e-5, attention_dropout=0.0)
        cfg._attn_implementation = "sdpa"
        return LlamaForCausalLM(cfg)
    raise SystemExit(f"unknown model {name!r}: use ours or llama")


def logits_of(model, name: str, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits if name == "llama" else model(x)


class Trainee:
    """One model, its optimizer and its own (identically seeded) data stream."""

    def __init__(self, name: str, args):
        self.name, self.args = name, args
        torch.manual_seed(args.seed)
        self.model = build(name, args)
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        keep = [p for p in self.model.parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                                      {"params": keep, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
        self.gen = torch.Generator().manual_seed(args.seed + 1)
        self.seconds = 0.0

    def step(self, step: int) -> float:
        a, t0 = self.args, time.perf_counter()
        for g in self.opt.param_groups:
            g["lr"] = a.lr * min(1.0, step / max(1, a.warmup))
        x, mask = make_batch(self.gen, a.batch, a.seq_len, a.min_len, a.max_len, a.max_gap, a.alphabet)
        logits = logits_of(self.model, self.name, x[:, :-1])
        scored = torch.ones_like(mask) if a.loss_on_all else mask
        loss = F.cross_entropy(logits[scored], x[:, 1:][scored])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.seconds += time.perf_counter() - t0
        return loss.item()

    @torch.no_grad()
    def copy_accuracy(self, held_out) -> float:
        x, mask = held_out
        pred = logits_of(self.model, self.name, x[:, :-1]).argmax(-1)
        return (pred[mask] == x[:, 1:][mask]).float().mean().item()


def train(args) -> dict[str, list[tuple[int, float, float]]]:
    """The models in lockstep (one step each, in turn), so their curves compare at equal steps."""
    trainees = [Trainee(n, args) for n in args.models.split(",")]
    held_out = make_batch(torch.Generator().manual_seed(10_000 + args.seed), 64, args.seq_len,
                          args.min_len, args.max_len, args.max_gap, args.alphabet)
    curves: dict[str, list] = {t.name: [] for t in trainees}
    for step in range(1, args.steps + 1):
        for t in trainees:
            loss = t.step(step)
            if step % args.every == 0 or step == args.steps:
                acc = t.copy_accuracy(held_out)
                curves[t.name].append((step, loss, acc))
                print(f"{t.name:12s} step {step:5d}  loss {loss:.3f}  copy-acc {acc:.3f}  "
                      f"{step / t.seconds:.2f} steps/s", flush=True)
    return curves


def passkey_held_out(tok, seq_len: int, n: int, seed: int = 777_000):
    """n passkey prompts + their completions (teacher forcing), T/2..T tokens at depths spread over
    [0, 1], from seeds far from train.evaluate's (which uses seed·1000 + trial): tokens [n, T], and a
    mask of the targets that are the key's digits."""
    from data.tasks.registry import get_task

    task = get_task("passkey")
    x = torch.full((n, seq_len + 1), int(tok.eos), dtype=torch.long)
    mask = torch.zeros(n, seq_len + 1, dtype=torch.bool)
    fixed = task.sample(tok, seq_len, 0.5, seed).fixed_tokens
    for i in range(n):
        length = fixed + 8 + (seq_len - 16 - fixed) * i // max(1, n - 1)
        s = task.sample(tok, length, (i * 7 % n) / max(1, n - 1), seed + i)
        digits = list(tok.encode(s.answers[0]))
        ids = s.prompt_ids + list(tok.encode(s.completion))
        x[i, :len(ids)] = torch.tensor(ids)
        mask[i, len(s.prompt_ids) + 1:len(s.prompt_ids) + 1 + len(digits)] = True      # " " then the digits
    return x, mask[:, 1:]


def key_copy_held_out(tok, seq_len: int, n: int, seed: int = 777_000):
    """n key_copy warm-up documents of T tokens and a mask of their asked-back digits (the scored digits:
    the filler has none)."""
    from data.tasks.registry import get_training_kind

    x = torch.full((n, seq_len + 1), int(tok.eos), dtype=torch.long)
    mask = torch.zeros(n, seq_len + 1, dtype=torch.bool)
    for i in range(n):
        ids, scored = get_training_kind("key_copy").document_scored(tok, seq_len, seed + i)
        x[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = torch.tensor([s and 48 <= t <= 57 for t, s in zip(ids, scored)])
    return x, mask[:, 1:]


def digit_accuracy(model, x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Teacher-forced accuracy of the masked digits, and the share of rows whose masked digits are all right."""
    with torch.no_grad():
        hit = model(x[:, :-1]).argmax(-1) == x[:, 1:]
    rows = torch.stack([hit[i][mask[i]].all() for i in range(len(x))]).float().mean().item()
    return hit[mask].float().mean().item(), rows


def train_passkey(args) -> list[tuple[int, float, float, float]]:
    """The trainer's own data (the config's sized corpus, --set overrides applied), model and optimizer
    (AdamW, its lr schedule, clipping) in a bare loop; every --every steps the teacher-forced accuracy
    of the key's digits and of whole keys on held-out passkey prompts (chance: 0.1 and 1e-5)."""
    from data.loader import build_loader
    from models.lm import LanguageModel
    from train.config import load_config
    from train.optim import build_optimizer, lr_at

    cfg = load_config(args.passkey, [f"--{kv}" for kv in args.set])
    steps = args.steps
    torch.manual_seed(args.seed)
    model = LanguageModel(cfg.model)
    opt = build_optimizer(model, cfg.optim, torch.device("cpu"))
    loader = build_loader(cfg.data)
    x, mask = passkey_held_out(loader.tokenizer, cfg.data.seq_len, args.held_out)
    kx, kmask = key_copy_held_out(loader.tokenizer, cfg.data.seq_len, args.held_out)
    rows, t_train, t0 = [], 0.0, time.perf_counter()
    for step in range(steps):
        t1 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, cfg.optim)
        b = loader.next_batch()
        logits = model(b.tokens, b.positions, b.doc_ids)
        labels = b.labels.flatten()          # as the trainer: a step without labels (answers-only rows) is 0
        loss = F.cross_entropy(logits.flatten(0, 1), labels, ignore_index=-100, reduction="sum")
        loss = loss / max(1, int((labels != -100).sum()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        t_train += time.perf_counter() - t1
        if (step + 1) % args.every == 0 or step + 1 == steps:
            digit, key = digit_accuracy(model, x, mask)
            copy, _ = digit_accuracy(model, kx, kmask)
            rows.append((step + 1, loss.item(), digit, key, copy))
            print(f"step {step + 1:5d}  loss {loss.item():.3f}  digit-acc {digit:.3f}  key-acc {key:.3f}  "
                  f"key_copy-acc {copy:.3f}  {(step + 1) / t_train:.2f} steps/s  {time.perf_counter() - t0:.0f}s",
                  flush=True)
    return rows


def main(argv=None) -> dict[str, list[tuple[int, float, float]]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="ours,llama")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--min-len", type=int, default=8)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--max-gap", type=int, default=0, help="random filler between the copies: 0..N tokens")
    p.add_argument("--alphabet", type=int, default=256, choices=[36, 94, 256],
                   help="256: random bytes; 94: printable ASCII; 36: letters and digits")
    p.add_argument("--loss-on-all", action="store_true",
                   help="train on every next token (as a language model does), not only the copies")
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-kv-heads", type=int, default=0)
    p.add_argument("--untied", action="store_true")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--passkey", metavar="CONFIG", help="passkey mode: train CONFIG's model on CONFIG's data "
                   "(the trainer's loader and optimizer) and score held-out passkey digits")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="passkey mode: a config override, e.g. --set data.warmup_docs=0 (repeatable)")
    p.add_argument("--held-out", type=int, default=32, help="passkey mode: held-out prompts")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.passkey:
        return {"passkey": train_passkey(args)}
    return train(args)


if __name__ == "__main__":
    main()
