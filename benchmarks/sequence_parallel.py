"""Sequence parallelism on gloo CPU, per sp_mode: communication, rounds, activation memory.

    python benchmarks/sequence_parallel.py [--seq-len 512] [--d-model 64] [--heads 4] [--kv-heads 4]
                                           [--modes distattn,ulysses,2d]

For P = 2, 4, 8 forked gloo ranks train one forward+backward step of a tiny Transformer
"(*-)x2" on one row of T tokens (single document: the worst case, nothing skipped) and print:
- bytes sent per attention layer per rank (forward + backward, max over ranks), in units of
  N·d (N = tokens of the sequence, d = d_model, fp32 elements), next to LightSeq's 3Nd and
  Megatron TP+SP's 10Nd / 14Nd (analytic, as quoted by LightSeq);
- compute rounds per rank: balanced schedule (max over ranks, measured) vs the plain causal
  ring (P rounds on the last rank), and the bound ceil(P/2)+1;
- activation memory per rank: bytes of the tensors autograd saves for backward (parameters
  excluded, storages counted once), times P, relative to sp = 1 at the same T.
Each sp_mode (parallel.sp_mode; 2d with head groups of 2) runs where it can split the heads and
differs from another (2d needs P > 2); rounds are DistAttn's (1 for ulysses: one local block).
The doc-id all-gather (8 bytes per token, once per step, shared by all layers) is reported apart.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SavedBytes:
    """Counts the bytes autograd saves for backward (activation memory), parameters excluded."""

    def __init__(self, params):
        self.param_ptrs = {p.data_ptr() for p in params}
        self.seen: set = set()
        self.total = 0

    def pack(self, t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            size = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            return t
        if key not in self.param_ptrs and key not in self.seen:
            self.seen.add(key)
            self.total += size
        return t


def one_step(rank: int, world: int, args) -> dict:
    import models
    from models.config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(pattern="(*-)x2", vocab_size=260, d_model=args.d_model, n_heads=args.heads,
                      n_kv_heads=args.kv_heads)
    model = models.build(cfg)
    t = args.seq_len
    tokens = torch.randint(0, 260, (1, t), generator=torch.Generator().manual_seed(1))
    n = t // world
    sl = slice(rank * n, (rank + 1) * n)
    hooks = None
    if world > 1:
        from parallel.sequence import SequenceParallelHooks
        hooks = SequenceParallelHooks(mode=args.mode, head_group=2)
    counter = SavedBytes(model.parameters())
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda x: x):
        logits = model(tokens[:, sl], sp=hooks)
    logits.float().square().mean().backward()
    elapsed = time.perf_counter() - t0
    out = {"act_bytes": counter.total, "seconds": elapsed}
    if hooks is not None:
        attn = [r for r in hooks.records if r.kind == "attention"]
        out["layer_bytes"] = [r.fwd_bytes + r.bwd_bytes for r in attn]
        out["fwd_bytes"] = [r.fwd_bytes for r in attn]
        out["rounds"] = max(r.fwd_rounds for r in attn)
        out["doc_gather_bytes"] = hooks.g.bytes_sent - sum(out["layer_bytes"])
    return out


def _worker(rank, world, port, args, queue):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        queue.put((rank, one_step(rank, world, args)))
    finally:
        dist.destroy_process_group()


def run_world(world: int, args) -> list[dict]:
    if world == 1:
        return [one_step(0, 1, args)]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    return [results[r] for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--worlds", default="2,4,8")
    ap.add_argument("--modes", default="distattn,ulysses,2d")
    args = ap.parse_args()
    args.mode = "distattn"
    base = run_world(1, args)[0]
    nd_bytes = args.seq_len * args.d_model * 4                       # N·d fp32 elements, in bytes
    print(f"# sequence parallelism on gloo CPU: T={args.seq_len} (one row), d_model={args.d_model}, heads={args.heads}, "
          f"kv_heads={args.kv_heads}, fp32; sp=1 activation memory {base['act_bytes'] / 2**20:.2f} MiB")
    print("| P | sp_mode | bytes/layer/rank (max) | in N·d | fwd only | LightSeq | Megatron TP+SP | rounds balanced "
          "| rounds ring | ceil(P/2)+1 | act MiB/rank | act×P / sp1 | step s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    from parallel.sequence.heads import mode_problem

    for world, mode in ((int(w), m) for w in args.worlds.split(",") for m in args.modes.split(",")):
        if mode_problem(mode, world, 2, args.heads) or (mode == "2d" and world <= 2):
            continue
        args.mode = mode
        res = run_world(world, args)
        layer_max = max(max(r["layer_bytes"]) for r in res)
        fwd_max = max(max(r["fwd_bytes"]) for r in res)
        rounds = max(r["rounds"] for r in res)
        act = max(r["act_bytes"] for r in res)
        step = max(r["seconds"] for r in res)
        print(f"| {world} | {mode} | {layer_max:,} | {layer_max / nd_bytes:.2f} Nd | {fwd_max / nd_bytes:.2f} Nd | 3 Nd "
              f"| 10 Nd / 14 Nd | {rounds} | {world} | {math.ceil(world / 2) + 1} | {act / 2**20:.2f} "
              f"| {act * world / base['act_bytes']:.3f} | {step:.2f} |")
    print(f"(doc-id all-gather per step, all layers together: {res[-1].get('doc_gather_bytes', 0):,} bytes at P={world})")


if __name__ == "__main__":
    main()
