"""Our sequence-parallel attention in every sp_mode against DeepSpeed-Ulysses, side by side on gloo
CPU: same inputs, fwd+bwd time of the slowest rank, forward bytes sent by the busiest rank, and
activation memory (bytes autograd saves) per rank × P against one process.

    python benchmarks/sp_vs_ulysses.py [--worlds 2,4] [--seq-lens 2048,8192] [--docs none,packed]

One attention call, B=1, H=8 heads of 64 (GQA off: Ulysses refuses kv heads < P), fp32, causal.
Ulysses is deepspeed.sequence.layer.DistributedAttention (all-to-all of heads) around our local
kernel (kernels.attention.attention: the CPU flash kernel, per-document pieces for packed
documents), so both sides use the same compute kernel. Ours is parallel.sequence's
SequenceParallelHooks.attention in each sp_mode (auto, the default, which is ulysses wherever P
divides the heads; distattn, ulysses, and 2d with head groups of 2 where P > 2). Each rank runs one untimed warm-up of each (which measures the saved bytes), then
`--reps` rounds in which every mode is timed in a pair with a DeepSpeed call, interleaved
(ours, DS / DS, ours alternating), so load drifts on a shared machine hit both sides of a pair
alike. Per call: wall time and CPU time (process_time: all of a rank's threads, gloo's included;
and the main thread's thread_time), each the slowest/busiest rank's; ratios are the median of
the per-pair ratios, seconds the median over calls. Bytes: ours measured by the
P2P counter (all-to-alls included); Ulysses' forward is 4 all-to-alls of (P−1)/P of a [N/P, H, D] tensor (q, k, v, out).
Units: N·d = sequence tokens × H·D fp32 elements. One thread per rank, set explicitly.
`--floor` also times, paired with DeepSpeed calls the same way, DeepSpeed's local kernel alone on
the rank's H/P heads of the whole sequence (no communication): the CPU time any exact method must
spend when the visible work is spread evenly, i.e. the best ratio to DeepSpeed reachable.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from benchmarks_common import run_ranks  # noqa: E402

H, D = 8, 64


def packed_docs(t: int) -> torch.Tensor:
    """Documents of ~T/8 tokens with random boundaries (fixed seed), one row."""
    gen = torch.Generator().manual_seed(3)
    cuts = torch.rand(1, t, generator=gen) < 8 / t
    cuts[:, 0] = False
    return cuts.cumsum(1)


class SavedBytes:
    """Bytes of the tensors autograd saves for backward (activation memory), storages once."""

    def __init__(self):
        self.seen, self.total = set(), 0

    def pack(self, t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key not in self.seen:
            self.seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t


def saved_bytes(fn) -> int:
    counter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda x: x):
        fn()
    return counter.total


def modes_for(world: int, wanted: str = "auto,distattn,ulysses,2d") -> list[str]:
    """Our modes at this P: 2d (head groups of 2) only where it differs from ulysses (P > 2).
    "ulysses-p2p": ulysses with its all-to-alls as P−1 point-to-point pairs instead of one
    collective (the comparison behind heads.all_to_all_whole)."""
    return [m for m in wanted.split(",") if m != "2d" or world > 2]


def make_hooks(mode: str):
    from parallel.sequence import SequenceParallelHooks

    hooks = SequenceParallelHooks(mode=mode.removesuffix("-p2p"), head_group=2)
    if mode.endswith("-p2p"):
        hooks.layout_for("ulysses").heads.whole = False
    return hooks


def worker(rank: int, world: int, args) -> dict:
    import torch.distributed as dist

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.sequence.layer import DistributedAttention

    from kernels.attention import attention
    t, n = args.seq_len, args.seq_len // world
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, t, H, D, generator=gen) for _ in range(4))
    sl = slice(rank * n, (rank + 1) * n)
    docs = packed_docs(t) if args.layout == "packed" else None
    local_docs = None if docs is None else docs[:, sl].clone()
    deepspeed.init_distributed(dist_backend="gloo")      # adopts the torch process group already set up
    hooks = {mode: make_hooks(mode) for mode in modes_for(world, args.modes)}

    def local(qh, kh, vh, *_, **__):
        return attention(qh, kh, vh, causal=True, q_doc_ids=docs, k_doc_ids=docs)

    ulysses = DistributedAttention(local, dist.group.WORLD, scatter_idx=2, gather_idx=1)

    def leaves():
        return [z[:, sl].clone().requires_grad_(True) for z in (q, k, v)]

    def ours(mode):
        def call():
            hooks[mode].attention(*leaves(), causal=True, window=None, doc_ids=local_docs).backward(do[:, sl])
        return call

    def theirs():
        ulysses(*leaves(), 0).backward(do[:, sl])

    heads = slice(rank * H // world, (rank + 1) * H // world)

    def floor():         # DeepSpeed's local kernel alone: this rank's H/P heads of the whole sequence
        x = [z[:, :, heads].clone().requires_grad_(True) for z in (q, k, v)]
        attention(*x, causal=True, q_doc_ids=docs, k_doc_ids=docs).backward(do[:, :, heads])

    with torch.no_grad():                                 # same inputs, same answer (fp32 round-off)
        want = ulysses(*(z[:, sl] for z in (q, k, v)), 0)
        for mode, h in hooks.items():
            gap = (h.attention(*(z[:, sl] for z in (q, k, v)), doc_ids=local_docs) - want).abs().max()
            assert gap < 1e-4, f"{mode} and Ulysses disagree by {gap:.2e}"
    fns = {mode: ours(mode) for mode in hooks} | {"deepspeed": theirs, "floor": floor}
    timed = [*hooks, "floor"] if args.floor else list(hooks)
    out = {"times": {}, "act": {}, "fwd_bytes": {}}
    for name, fn in fns.items():
        if name == "floor" and not args.floor:
            continue                          # untimed warm-up, measuring saved bytes
        dist.barrier()
        out["act"][name] = saved_bytes(fn)
    for mode, h in hooks.items():
        out["fwd_bytes"][mode] = h.records[-1].fwd_bytes
    if rank == 0:
        x = [z.clone().requires_grad_(True) for z in (q, k, v)]
        out["act_one_process"] = saved_bytes(lambda: attention(*x, causal=True, q_doc_ids=docs, k_doc_ids=docs))
    out["blocks"] = {mode: (h.records[-1].fwd_blocks, h.records[-1].skipped_blocks) for mode, h in hooks.items()}
    out["threads"] = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else -1
    for rep in range(args.reps):                          # ABAB: each of our modes paired with a DeepSpeed call
        for mode in timed:
            pair = [mode, "deepspeed"] if rep % 2 == 0 else ["deepspeed", mode]
            for name in pair:
                dist.barrier()
                w0, c0, t0 = time.perf_counter(), time.process_time(), time.thread_time()
                fns[name]()
                clock = (time.perf_counter() - w0, time.process_time() - c0, time.thread_time() - t0)
                out["times"].setdefault((mode, name), []).append(clock)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default="2,4")
    ap.add_argument("--seq-lens", default="2048")
    ap.add_argument("--docs", default="none,packed")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--floor", action="store_true", help="also time DeepSpeed's local kernel alone per rank")
    ap.add_argument("--modes", default="auto,distattn,ulysses,2d", help="ours, each paired with DeepSpeed (also ulysses-p2p)")
    args = ap.parse_args()
    print(f"# gloo CPU, 1 thread per rank, B=1, H={H}, head_dim={D}, fp32, causal, median of {args.reps} "
          f"(slowest rank per call); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at start: "
          "ratios matter, not seconds")
    from parallel.sequence.heads import resolve_mode
    from parallel.sequence.schedule import rank_work

    print("| P | " + " | ".join(str(w) for w in range(2, 9)) + " |\n|---|" + "---|" * 7)
    print("| busiest rank / mean (causal blocks, schedule) | "
          + " | ".join(f"{max(rank_work(w)) / (sum(rank_work(w)) / w):.2f}" for w in range(2, 9)) + " |\n")
    print("| P | T | documents | sp_mode | ours wall s | DeepSpeed wall s | wall ours / DS "
          "| ours CPU s | DeepSpeed CPU s | CPU ours / DS | main-thread CPU ours / DS "
          "| fwd bytes busiest rank (N·d) ours / Ulysses | act/rank × P / one process: ours, Ulysses "
          "| fwd blocks computed / skipped per rank |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in (int(x) for x in args.seq_lens.split(",")):
        for world in (int(x) for x in args.worlds.split(",")):
            for layout in args.docs.split(","):
                args.seq_len, args.layout = t, layout
                res = run_ranks(world, worker, args)
                nd = t * H * D * 4
                uly_b = 4 * (world - 1) / world * (t // world) * H * D * 4 / nd
                one = res[0]["act_one_process"]
                act_ds = max(r["act"]["deepspeed"] for r in res) * world / one
                for mode in modes_for(world, args.modes):
                    ours_b = max(r["fwd_bytes"][mode] for r in res) / nd
                    act = max(r["act"][mode] for r in res) * world / one
                    ours, ds = (pair_clocks(res, mode, name) for name in (mode, "deepspeed"))
                    ratio = [statistics.median(o[j] / d[j] for o, d in zip(ours, ds)) for j in range(3)]
                    med_o, med_d = ([statistics.median(c[j] for c in x) for j in range(3)] for x in (ours, ds))
                    blocks = " ".join(f"{r['blocks'][mode][0]}/{r['blocks'][mode][1]}" for r in res)
                    print(f"| {world} | {t} | {layout} | {mode} | {med_o[0]:.3f} | {med_d[0]:.3f} | {ratio[0]:.2f}x "
                          f"| {med_o[1]:.3f} | {med_d[1]:.3f} | {ratio[1]:.2f}x | {ratio[2]:.2f}x "
                          f"| {ours_b:.2f} / {uly_b:.2f} | {act:.2f}, {act_ds:.2f} | {blocks} |", flush=True)
                if args.floor:
                    floor, ds = (pair_clocks(res, "floor", name) for name in ("floor", "deepspeed"))
                    print(f"(kernel floor: DeepSpeed's local kernel alone, no communication, CPU "
                          f"{statistics.median(f[1] / d[1] for f, d in zip(floor, ds)):.2f}x of the DeepSpeed call)")
                print(f"(threads per rank process: {res[0]['threads']}; load average {os.getloadavg()[0]:.1f}; "
                      f"auto = {resolve_mode('auto', world, H)} at P={world}, H={H})", flush=True)


def pair_clocks(res: list[dict], mode: str, name: str) -> list[tuple[float, float, float]]:
    """Per call of the (mode, name) pairs: (wall, process CPU, main-thread CPU), each the
    slowest rank's (wall: every rank waits for the slowest; CPU: the busiest rank's process,
    all its threads, gloo's I/O threads included)."""
    calls = zip(*(r["times"][(mode, name)] for r in res))
    return [tuple(max(c[j] for c in call) for j in range(3)) for call in calls]

if __name__ == "__main__":
    main()
