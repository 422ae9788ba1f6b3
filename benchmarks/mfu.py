"""One-GPU training throughput of each recipe family: tokens/s, MFU and peak memory with the fast
path's switches on and off, and the longest context that trains one step, beside train.plan's
prediction.

    python benchmarks/mfu.py [--families transformer,mamba2,hybrid,griffin,hawk] [--lengths 2048,...,65536]
                             [--ablate-len 8192] [--steps 3] [--longest transformer,mamba2,hybrid]
    python benchmarks/mfu.py --quick        # CPU, tiny models, seconds: the script end to end (a test runs it)

Each row is one single-process run built exactly as the trainer builds it (train.build.build_run,
then train.step.train_step) from the family's recipe in configs/, on synthetic tokens, one row
(data.batch_size=1) of T tokens, grad_accum 1. "fast" is every switch on (torch.compile per block,
chunked cross-entropy, selective activation checkpointing, bf16); at --ablate-len each switch is
also turned off alone. Warm-up steps (compilation included) are not timed. MFU is model FLOPs
(models/flops.py, the trainer's figure) per second over the device's dense bf16 peak
(train/metrics.py); there is none on CPU. Peak memory: the CUDA allocator's peak; on CPU the
StorageTracker's peak of tensors created during the timed steps (train/plan_measure.py).

Longest context: for each family in --longest, with checkpointing, chunked cross-entropy and bf16,
the row length is doubled from --longest-start until one training step fails (out of memory; on
CPU: a peak above --budget-mib), then bisected to a multiple of --longest-step; the planner's
prediction is the longest length whose plan fits the same memory. The trainer's own
planner refusal is bypassed here, so the measurement does not depend on the prediction.
"""
from __future__ import annotations

import argparse
import gc
import io
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's packages, not benchmarks/kernels.py

import torch  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAMILIES = {"transformer": "transformer-1b-8k", "mamba2": "mamba2-1.3b-64k", "hybrid": "hybrid-1b-8k",
            "griffin": "griffin-1b-8k", "hawk": "hawk-1b-8k"}
SWITCHES = {   # name -> (on, off)
    "compile": (["--train.compile=true"], ["--train.compile=false"]),
    "loss_chunk": (["--train.loss_chunk=4096"], ["--train.loss_chunk=0"]),
    "checkpoint": (["--train.activation_checkpointing=true", "--train.checkpoint_policy=selective"],
                   ["--train.activation_checkpointing=false"]),
    "bf16": (["--train.dtype=bfloat16"], ["--train.dtype=float32"]),
}
# --quick: tiny shapes of the same families; compile (minutes of inductor on a CPU) and bf16 (no
# CPU autocast) are left out there
QUICK_PATTERNS = {"transformer": "(*-)x2", "mamba2": "MM", "hybrid": "M-*-", "griffin": "R-W-", "hawk": "(R-)x2"}
QUICK_MODEL = ["--model.d_model=32", "--model.n_heads=4", "--model.n_kv_heads=2", "--model.mlp_hidden=64",
               "--model.d_state=8", "--model.ssm_headdim=8", "--model.ssm_chunk_size=16", "--model.lru_heads=4",
               "--model.window=16", "--model.vocab_size=260", "--train.loss_chunk=32"]
QUICK_SWITCHES = ("loss_chunk", "checkpoint")


class TooBig(Exception):
    """One step did not fit (CUDA out of memory, or over the CPU budget)."""


def family_config(family: str, seq_len: int, extra: list[str], quick: bool, run_dir: str):
    """The family's recipe on one device, one synthetic row of seq_len tokens, plus `extra` overrides."""
    from train.config import load_config

    over = ["--data.source=synthetic", f"--data.seq_len={seq_len}", "--data.batch_size=1", "--train.grad_accum=1",
            "--parallel.engine=ddp", "--metrics.tensorboard=false", "--checkpoint.every=0",
            "--checkpoint.save_final=false", "--checkpoint.resume=none", f"--train.run_dir={run_dir}",
            f"--train.device={'cpu' if quick else 'cuda'}", "--train.log_every=1000000", "--train.steps=1000",
            "--train.deterministic=false"]
    if quick:
        over += [f"--model.pattern={QUICK_PATTERNS[family]}", *QUICK_MODEL]
    return load_config(str(CONFIGS / f"{FAMILIES[family]}.toml"), over + extra)


def release(device: torch.device) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed_steps(run, warmup: int, steps: int) -> tuple[float, int | None]:
    """(seconds of the timed steps, their peak memory in bytes or None when not measurable)."""
    from train.plan_measure import StorageTracker
    from train.step import train_step

    device = run.device
    for i in range(warmup):
        train_step(run, i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    # the tracker is a dispatch mode, which compiled graphs do not run under
    tracker = StorageTracker() if device.type == "cpu" and not run.cfg.train.compile else None
    t0 = time.perf_counter()
    with tracker or nullcontext():
        for i in range(steps):
            train_step(run, warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0, torch.cuda.max_memory_allocated(device)
    return time.perf_counter() - t0, tracker.peak if tracker else None


def measure(cfg, steps: int, warmup: int, budget: float | None = None) -> dict:
    """Build the run as the trainer does; tokens/s, MFU and peak memory of `steps` timed steps."""
    import train.build
    from train.metrics import peak_flops

    train.build.check_memory = lambda *_: ""          # measure past the planner's verdict (module doc)
    release(torch.device(cfg.train.device))           # whatever a failed row before this one left behind
    device, oom = torch.device("cpu"), None
    try:
        with redirect_stdout(io.StringIO()):           # the trainer's start-up lines
            run = train.build.build_run(cfg)
        device = run.device
        flops = run.flops_by_len[cfg.data.seq_len]
        seconds, peak = timed_steps(run, warmup, steps)
    except Exception as e:                         # noqa: BLE001 - OOM can come wrapped (compile errors)
        if "out of memory" not in str(e).lower():
            raise
        oom = str(e).splitlines()[0][:80]          # not raised here: the traceback would keep the tensors alive
    finally:
        run = None
    release(device)
    if oom is not None:
        raise TooBig(oom)
    if budget is not None and peak is not None and peak > budget:
        raise TooBig(f"peak {peak / 2**20:.1f} MiB over the budget")
    tokens_per_s = steps * cfg.data.seq_len / seconds
    peak_dev = peak_flops(device)
    return {"tokens_per_s": tokens_per_s, "mfu": None if peak_dev is None else flops * tokens_per_s / peak_dev,
            "peak": peak}


def variants(quick: bool) -> list[tuple[str, list[str]]]:
    """("fast", every switch on), then ("<switch> off", the rest on) for each switch."""
    names = QUICK_SWITCHES if quick else tuple(SWITCHES)
    on = [o for n in names for o in SWITCHES[n][0]]
    out = [("fast", on)]
    for n in names:
        out.append((f"{n} off", [o for m in names for o in SWITCHES[m][1 if m == n else 0]]))
    return out


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def rows(args) -> list[tuple[str, int, str, list[str]]]:
    """(family, T, variant, overrides), most wanted first, so that a --time-budget cut loses the
    least: every family's "fast" row at --ablate-len, then "fast" at the other lengths (shortest
    first), then the switch ablations."""
    out = [(f, n, name, extra) for f in args.families for n in args.lengths for name, extra in variants(args.quick)
           if name == "fast" or n == args.ablate_len]
    return sorted(out, key=lambda r: (r[2] != "fast", r[1] != args.ablate_len, r[1]))


def throughput_table(args, run_dir: str) -> None:
    print("| family | T | variant | tokens/s | MFU | peak memory MiB |")
    print("|---|---|---|---|---|---|")
    for family, seq_len, name, extra in rows(args):
        if time.monotonic() > args.deadline:
            print(f"| {family} | {seq_len} | {name} | skipped: --time-budget spent | | |", flush=True)
            continue
        try:
            r = measure(family_config(family, seq_len, extra, args.quick, run_dir), args.steps, args.warmup)
        except TooBig as e:
            print(f"| {family} | {seq_len} | {name} | does not fit: {e} | | |", flush=True)
            continue
        except Exception as e:                 # noqa: BLE001 - one failing row must not lose the table
            print(f"| {family} | {seq_len} | {name} | error: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:100] if str(e) else ''} | | |", flush=True)
            continue
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        print(f"| {family} | {seq_len} | {name} | {r['tokens_per_s']:.0f} | {mfu} | {mib(r['peak'])} |", flush=True)


def longest(fits, start: int, step: int, limit: int) -> int:
    """The largest multiple of `step` (up to `limit`) for which fits(T) holds, assuming fits is
    monotone: doubling from `start`, then bisection; 0 when even `start` does not fit."""
    lo, hi = 0, start
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + step)
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def longest_table(args, run_dir: str) -> None:
    from train.plan_memory import RESERVE, make_plan

    long_on = [o for n in ("loss_chunk", "checkpoint") for o in SWITCHES[n][0]]
    if not args.quick:
        long_on += SWITCHES["bf16"][0]
    if args.quick:
        capacity, gpu = args.budget_mib * 2**20, None
    else:
        capacity, gpu = torch.cuda.get_device_properties(0).total_memory, "cuda"
    print(f"\n| family | longest T measured | planned | memory |   (checkpointing, loss_chunk"
          f"{'' if args.quick else ', bf16'}; step {args.longest_step})")
    print("|---|---|---|---|")
    for family in args.longest:
        if time.monotonic() > args.deadline:
            print(f"| {family} | skipped: --time-budget spent | | |", flush=True)
            continue

        def trains(seq_len: int, family=family) -> bool:
            try:
                t0 = time.monotonic()
                measure(family_config(family, seq_len, long_on, args.quick, run_dir), 1, 0,
                        budget=capacity if args.quick else None)
                ok = True
            except TooBig:
                ok = False
            # each try is printed as it ends: a run stopped by its time limit still says what it found
            print(f"#   {family} T={seq_len}: {'trains' if ok else 'does not fit'} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
            return ok

        def planned_fits(seq_len: int, family=family) -> bool:
            plan = make_plan(family_config(family, seq_len, long_on, args.quick, run_dir), 1, gpu, capacity)
            total = plan.total - plan.terms["weights"] if args.quick else plan.total   # CPU peak has no weights
            return total <= capacity * (1 if args.quick else 1 - RESERVE)

        measured = longest(trains, args.longest_start, args.longest_step, args.longest_limit)
        planned = longest(planned_fits, args.longest_start, args.longest_step, args.longest_limit)
        where = f"{args.budget_mib} MiB budget (CPU)" if args.quick else torch.cuda.get_device_name(0)
        print(f"| {family} | {measured} | {planned} | {where} |", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU, tiny models, seconds")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--lengths", default="2048,8192,16384,32768,65536")
    p.add_argument("--ablate-len", type=int, default=8192, help="the length at which each switch is turned off")
    p.add_argument("--steps", type=int, default=3, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    p.add_argument("--longest", default="transformer,mamba2,hybrid", help="families to bisect ('' = none)")
    p.add_argument("--longest-start", type=int, default=65536)
    p.add_argument("--longest-step", type=int, default=65536)
    p.add_argument("--longest-limit", type=int, default=2**19,
                   help="(a 1B Transformer step at 512K tokens is minutes of attention)")
    p.add_argument("--time-budget", type=float, default=0, help="seconds; rows not started by then are skipped "
                   "(0 = no limit), so a run on a lent GPU prints what it measured before its time is up")
    p.add_argument("--budget-mib", type=float, default=4.0, help="--quick: the CPU memory budget of the bisection")
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.ablate_len, args.steps, args.warmup = "64", 64, 1, 1
        args.longest_start, args.longest_step, args.longest_limit = 128, 128, 4096
    args.deadline = time.monotonic() + args.time_budget if args.time_budget else float("inf")
    args.families = [f for f in args.families.split(",") if f]
    args.longest = [f for f in args.longest.split(",") if f]
    args.lengths = [int(n) for n in args.lengths.split(",")]
    unknown = [f for f in args.families + args.longest if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    if not args.quick and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU, or pass --quick for the CPU check")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1 if args.quick else max(1, min(8, os.cpu_count() or 1)))
    device = "cpu" if args.quick else torch.cuda.get_device_name(0)
    print(f"# {device}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; batch 1 row x T tokens, {args.steps} timed steps after {args.warmup}")
    with tempfile.TemporaryDirectory() as run_dir:
        throughput_table(args, run_dir)
        if args.longest:
            longest_table(args, run_dir)


if __name__ == "__main__":
    main()
