"""Our Transformer against transformers' LlamaForCausalLM (SDPA) on this CPU: same weights, same
inputs, same training loop; tokens/s and the ratio, with and without packed documents.

    python benchmarks/vs_llama.py [--sizes tiny,small] [--seq-len 2048] [--batch 2] [--steps 6] [--threads 1]

Document layouts: `none` (no document ids), `one` (ids passed, every row one document; theirs
gets the matching position ids) and `packed` (random documents of ~300 tokens; ours gets
doc_ids and per-document positions, theirs the per-document position_ids and the block-diagonal
causal mask as a 4-D boolean attention_mask: transformers' SDPA path does not separate the
documents from position_ids alone, which the start-up equality check catches). Steps alternate between the two models and the median step time is
taken, so machine load hits both alike; the first step of each is a warm-up.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SIZES = {
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=2),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4),
}
VOCAB = 260


def build_pair(size: str, seq_len: int):
    """(ours, theirs) with identical weights, float32, training mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import models
    from models.interop.llama import config_from_hf, state_from_hf

    hf = dict(model_type="llama", vocab_size=VOCAB, max_position_embeddings=seq_len, rms_norm_eps=1e-5,
              rope_theta=10000.0, tie_word_embeddings=False, **SIZES[size])
    hf["num_key_value_heads"] = hf["num_attention_heads"]
    torch.manual_seed(0)
    config = LlamaConfig(**{k: v for k, v in hf.items() if k != "model_type"})
    config._attn_implementation = "sdpa"
    theirs = LlamaForCausalLM(config)
    cfg = config_from_hf(hf)
    ours = models.build(cfg)
    ours.load_state_dict(state_from_hf(theirs.state_dict(), cfg))
    return ours.train(), theirs.train()


def batch(layout: str, b: int, t: int, gen: torch.Generator):
    """(tokens, labels, positions, doc_ids or None) for a document layout."""
    tokens = torch.randint(0, VOCAB, (b, t + 1), generator=gen)
    if layout == "packed":
        cuts = torch.rand(b, t, generator=gen) < 1 / 300
        cuts[:, 0] = False
        docs = cuts.cumsum(1)
        start = torch.where(cuts, torch.arange(t), 0).cummax(1).values
        positions = torch.arange(t) - start
    else:
        docs = torch.zeros(b, t, dtype=torch.int64) if layout == "one" else None
        positions = torch.arange(t).expand(b, t)
    return tokens[:, :-1], tokens[:, 1:], positions, docs


def hf_mask(docs):
    """[B, 1, T, T] bool, True = may attend (causal, same document), or None for one document."""
    if docs is None or bool((docs == docs[:, :1]).all()):
        return None
    t = docs.shape[1]
    return ((docs[:, :, None] == docs[:, None, :]) & torch.ones(t, t, dtype=torch.bool).tril())[:, None]


def step_fn(model, opt, ours: bool, inputs):
    tokens, labels, positions, docs = inputs

    def step() -> float:
        t0 = time.perf_counter()
        if ours:
            logits = model(tokens, positions=positions, doc_ids=docs)
        else:
            logits = model(input_ids=tokens, position_ids=positions, attention_mask=hf_mask(docs)).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0
    return step


def compare(size: str, layout: str, args) -> tuple[float, float]:
    """(our tokens/s, their tokens/s), median over args.steps alternating steps."""
    ours, theirs = build_pair(size, args.seq_len)
    inputs = batch(layout, args.batch, args.seq_len, torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ours(inputs[0], positions=inputs[2], doc_ids=inputs[3])
        b = theirs(input_ids=inputs[0], position_ids=inputs[2], attention_mask=hf_mask(inputs[3])).logits
        assert (a - b).abs().max() < 1e-3, f"the two models disagree ({(a - b).abs().max():.2e})"
    steps = [step_fn(m, torch.optim.AdamW(m.parameters(), lr=1e-4), m is ours, inputs) for m in (ours, theirs)]
    times: list[list[float]] = [[], []]
    for i in range(args.steps + 1):
        for j in (i % 2, 1 - i % 2):
            dt = steps[j]()
            if i:
                times[j].append(dt)
    tokens = args.batch * args.seq_len
    return tokens / statistics.median(times[0]), tokens / statistics.median(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--layouts", default="none,one,packed")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(f"# {platform.machine()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.threads} thread(s), T={args.seq_len}, batch {args.batch}, fp32, median of {args.steps} steps")
    print("| size | documents | ours tokens/s | Llama (SDPA) tokens/s | ours / Llama |")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for layout in args.layouts.split(","):
            mine, theirs = compare(size, layout, args)
            print(f"| {size} | {layout} | {mine:,.0f} | {theirs:,.0f} | {mine / theirs:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
