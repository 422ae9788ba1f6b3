"""`python -m train.plan --config X [--gpu h100|h200|a100] [--world N] [--section.key=value ...]`.

Says before anything is allocated whether a run fits: parameters, training FLOPs per token, and
per-rank memory (weights, gradients, optimizer state under each engine, activations with and
without checkpointing, logits), the total against the GPU's memory and the biggest term
(train/plan_memory.py). `--gpu cpu` plans the CPU kernel paths without a capacity. The trainer
prints `summary_line` at start and refuses, before the first step, a CUDA run that cannot fit.
Exit codes: 0 fits, 2 bad input or does not fit (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys

from train.plan_memory import ENGINES, GIB, GPUS, RESERVE, Plan, make_plan


def gib(n: float) -> str:
    """Bytes in GiB, or in MiB below one GiB (tiny CPU models)."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def summary_line(plan: Plan, where: str) -> str:
    """One line: the per-rank total, its terms, and whether it fits (the trainer prints it too)."""
    terms = ", ".join(f"{k} {gib(v)}" for k, v in plan.terms.items() if v)
    cap = "" if plan.capacity is None else f" of {plan.capacity * (1 - RESERVE) / GIB:.0f} GiB usable"
    verdict = "fits" if plan.fits else f"DOES NOT FIT (biggest: {plan.biggest})"
    return f"memory plan ({where}, {plan.engine}): {gib(plan.total)} per rank{cap} [{terms}] {verdict}"


def misfit_message(plan: Plan, where: str) -> str:
    """The one-line error for a plan that does not fit, naming its biggest term and a fix."""
    fixes = {"activations": "set train.activation_checkpointing=true, lower data.batch_size or raise parallel.sp",
             "logits": "set train.loss_chunk (chunked cross-entropy) or raise parallel.tp",
             "optimizer": "use parallel.engine=fsdp or raise the data-parallel degree",
             "weights": "use parallel.engine=fsdp or raise parallel.tp / parallel.pp",
             "gradients": "use parallel.engine=fsdp or raise parallel.tp / parallel.pp"}
    big = plan.biggest
    return (f"the run needs {gib(plan.total)} per rank but {where} has {gib(plan.capacity * (1 - RESERVE))} "
            f"usable; the biggest term is {big} ({gib(plan.terms[big])}): {fixes[big]}")


def sp_mode_note(cfg) -> str:
    """', sp_mode auto -> ulysses': the attention layout the trainer's hooks will use (sp > 1 only)."""
    from parallel.sequence.heads import resolve_mode

    pcfg = cfg.parallel
    if pcfg.sp <= 1:
        return ""
    mode = resolve_mode(pcfg.sp_mode, pcfg.sp, cfg.model.n_heads // pcfg.tp)
    return f", sp_mode {pcfg.sp_mode}" + (f" -> {mode}" if mode != pcfg.sp_mode else "")


def report(plan: Plan, cfg, where: str) -> str:
    tp, sp = cfg.parallel.tp, cfg.parallel.sp
    lines = [f"model      {cfg.model.pattern}  d_model {cfg.model.d_model}  vocab {cfg.model.vocab_size}",
             f"params     {plan.params / 1e9:.3f} B total, {plan.params_per_rank / 1e9:.3f} B per rank (tp {tp}, "
             f"pp {cfg.parallel.pp})",
             f"FLOPs      {plan.flops_per_token / 1e9:.2f} GFLOP per token (training, T = {cfg.data.seq_len})",
             f"tokens     {plan.tokens_per_rank} per rank per micro-batch (batch {cfg.data.batch_size} x "
             f"{cfg.data.seq_len} / sp {sp})" + sp_mode_note(cfg),
             "state per rank (weights / gradients / optimizer):"]
    for name in ENGINES:
        w, g, o = plan.states[name]
        mark = "  <- configured" if name == plan.engine else ""
        lines.append(f"  {name:6s} {gib(w):>11s} {gib(g):>11s} {gib(o):>11s}   = {gib(w + g + o)}{mark}")
    ck = cfg.train.checkpoint_policy if cfg.train.activation_checkpointing else "off"
    lines += [f"activations {gib(plan.activations_full)} without checkpointing, "
              f"{gib(plan.activations_checkpointed)} with (configured: {ck})",
              f"logits     {gib(plan.logits)}" + (f" (loss_chunk {cfg.train.loss_chunk})"
                                                  if getattr(cfg.train, "loss_chunk", 0) else " (plain loss)"),
              summary_line(plan, where)]
    return "\n".join(lines)


def check_memory(cfg, world: int, device) -> str:
    """The trainer's call before it builds anything: the summary line; on CUDA a RunError (one line,
    exit 2) when the plan exceeds the device's memory."""
    import torch

    from train.errors import RunError

    if device.type != "cuda":
        return summary_line(make_plan(cfg, world, None), "cpu")
    capacity = torch.cuda.get_device_properties(device).total_memory
    plan = make_plan(cfg, world, "cuda", capacity)
    where = f"{torch.cuda.get_device_name(device)} x {world}"
    if not plan.fits:
        raise RunError(misfit_message(plan, where))
    return summary_line(plan, where)


def default_world(pcfg) -> int:
    return max(1, pcfg.dp) * pcfg.tp * pcfg.pp * pcfg.sp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.plan", description="Per-rank memory plan of a run.")
    p.add_argument("--config", default="configs/tiny.toml", help="TOML recipe")
    p.add_argument("--gpu", default="h100", help=f"{' | '.join(GPUS)} | cpu (default h100)")
    p.add_argument("--world", type=int, default=0, help="processes (default: dp x tp x pp x sp, dp=-1 as 1)")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    from data.errors import DataError
    from parallel.dims import LayoutError
    from train.config import ConfigError, load_config

    try:
        if args.gpu != "cpu" and args.gpu not in GPUS:
            raise ConfigError(f"--gpu {args.gpu!r} is not known; use one of {', '.join(GPUS)} or cpu")
        cfg = load_config(args.config, rest)
        world = args.world or default_world(cfg.parallel)
        plan = make_plan(cfg, world, None if args.gpu == "cpu" else args.gpu)
    except (ConfigError, LayoutError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = "cpu" if args.gpu == "cpu" else f"{args.gpu} x {world}"
    print(report(plan, cfg, where))
    if not plan.fits:
        print(f"error: {misfit_message(plan, args.gpu)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
