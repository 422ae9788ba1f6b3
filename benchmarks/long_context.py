"""Long-context experiment (issue 19): do tiny models trained at T retrieve at T, and beyond it?

    python benchmarks/long_context.py [--quick] [--parts a,b,c] [--steps N] [--ext-steps M] [--out DIR]

(a) the four long-context-*-tiny recipes (Transformer, Mamba-2, Hawk, hybrid) trained at T on the
    context-sized corpus; passkey and multi-key needle at 1·T over every depth;
(b) beyond T: the Transformer with each RoPE scaling (models/rope.py), training-free and after a
    short continued training at 4·T from the (a) weights; Mamba-2 and Hawk with each collapse
    mitigation (training-free) and each length-generalisation intervention (short post-training);
(c) the state-collapse experiment of benchmarks/state_collapse.py in the regime where the state
    collapses (T = 32, d_state 256 in 2 heads, 3000 steps; every mitigation and training).
Every table row is printed as it is measured and written to DIR/results.json; heatmaps and
JSON per evaluation land in DIR/<part>/<row>/. --quick runs every path with a few steps and
a small grid (what tests/test_long_context_bench.py runs); its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import models  # noqa: E402
from train.checkpoint import Checkpointer, checkpoint_step, list_checkpoints, load_model_weights  # noqa: E402
from train.config import dump_toml, load_config  # noqa: E402
from train.evaluate import evaluate_model  # noqa: E402

STACKS = {"transformer": "long-context-tiny", "mamba2": "long-context-mamba2-tiny",
          "hawk": "long-context-hawk-tiny", "hybrid": "long-context-hybrid-tiny"}


def rope_methods(T: int, factor: int = 4) -> dict[str, list[str]]:
    """Each RoPE context extension at factor s = 4 (Giraffe's truncation: keep frequencies that turn
    within T, map those turning within 8·T to one slow frequency, zero the rest)."""
    b, a = 2 * math.pi / T, 2 * math.pi / (8 * T)
    return {"none": [],
            "PI (linear)": ["--model.rope_scaling=linear", f"--model.rope_factor={factor}"],
            "NTK-aware": ["--model.rope_scaling=ntk", f"--model.rope_factor={factor}"],
            "YaRN": ["--model.rope_scaling=yarn", f"--model.rope_factor={factor}",
                     f"--model.rope_original_max_len={T}"],
            "truncated (Giraffe)": ["--model.rope_scaling=truncated", f"--model.rope_trunc_a={a:.6g}",
                                    f"--model.rope_trunc_b={b:.6g}", f"--model.rope_trunc_rho={a:.6g}"]}


MITIGATIONS = {"none": [], "forget more λ=2": ["--model.collapse_decay_scale=2"],
               "window w=T": ["--model.collapse_window={T}"]}
INTERVENTIONS = {"noise init": ["--lengthgen.state_init=noise"], "state passing": ["--lengthgen.state_init=passing"],
                 "TBPTT": ["--lengthgen.tbptt=true"],
                 "rows of 4·T": ["--data.seq_len={T4}", "--data.batch_size=2"],   # the Transformer's recipe
                 "TBPTT, rows of 4·T": ["--data.seq_len={T4}", "--data.batch_size=2", "--lengthgen.tbptt=true"],
                 "rows of 8·T": ["--data.seq_len={T8}", "--data.batch_size=1"],
                 "TBPTT, rows of 8·T": ["--data.seq_len={T8}", "--data.batch_size=1", "--lengthgen.tbptt=true"],
                 "rows of 16·T": ["--data.seq_len={T16}", "--data.batch_size=1"],
                 "TBPTT, rows of 16·T": ["--data.seq_len={T16}", "--data.batch_size=1", "--lengthgen.tbptt=true"]}


def at_length(flags: list[str], T: int) -> list[str]:
    """A method's flags with the training length filled in ({T}, {T4} = 4·T, {T8} = 8·T, {T16} = 16·T)."""
    return [f.format(T=T, T4=4 * T, T8=8 * T, T16=16 * T) for f in flags]


def quiet_train(cfg, tag: str) -> float:
    from train.loop import train

    t0 = time.perf_counter()
    train(cfg, log=lambda m: print(f"    [{tag}] {m}", flush=True))
    return time.perf_counter() - t0


def load_trained(run_dir: Path, extra: list[str] | None = None):
    """(model, cfg, step) from the newest checkpoint of run_dir, with config overrides applied on top; the
    step titles the heatmaps of its evaluation."""
    ckpt = list_checkpoints(run_dir / "checkpoints")[-1]
    cfg = load_config(ckpt / "config.toml", list(extra or []))
    model = models.build(cfg.model)
    load_model_weights(ckpt, model)
    return model.eval(), cfg, checkpoint_step(ckpt)


def score(trained: tuple, out: Path, tasks: list[str], lengths: list[int], args) -> dict:
    """Accuracy per task and length of a load_trained() result."""
    model, cfg, step = trained
    s = evaluate_model(model, cfg, out, lengths=lengths, depths=args.depths, trials=args.trials, loss_length=0,
                       loss_rows=0, seed=args.seed, tasks=tasks, step=step, progress=None)
    return {t: {int(k): v for k, v in s[t].items()} for t in tasks}


def part_a(args, res: dict) -> None:
    """Train the four recipes at T; passkey and multi-key at 1·T, every depth."""
    for stack in args.stacks:
        run = Path(args.runs) / stack
        steps = [f"--train.steps={args.steps}"] if args.steps > 0 else []       # else the recipe's own
        cfg = load_config(ROOT / "configs" / f"{STACKS[stack]}.toml", [
            *steps, f"--train.run_dir={run}", "--checkpoint.every=0",
            "--checkpoint.keep_last=1", "--metrics.tensorboard=false", "--train.device=cpu",
            "--checkpoint.resume=none", *args.train_overrides])
        cfg.train.log_every = max(1, cfg.train.steps // 4)
        secs = quiet_train(cfg, stack)
        trained = load_trained(run)
        T = trained[1].data.seq_len
        t0 = time.perf_counter()
        acc = score(trained, Path(args.out) / "a" / stack, ["passkey", "niah_multikey"], [T], args)
        row = {"stack": stack, "steps": cfg.train.steps, "train_s": round(secs, 1),
               "eval_s": round(time.perf_counter() - t0, 1),
               "passkey_1T": acc["passkey"][T], "multikey_1T": acc["niah_multikey"][T]}
        res["a"].append(row)
        print(f"  a | {stack:11s} | steps {row['steps']} | train {secs:.0f} s | passkey 1T {row['passkey_1T']:.2f} | "
              f"multi-key 1T {row['multikey_1T']:.2f}", flush=True)
        save(args, res)


def continue_training(base_run: Path, run: Path, overrides: list[str], args, tag: str) -> float:
    """A short run from the base weights (fresh optimizer and schedule) with `overrides` (e.g. 4·T). The
    base recipe's copy warm-up is not repeated: the first documents of a continued run are the task mix."""
    model, cfg, _ = load_trained(base_run)
    shutil.rmtree(run, ignore_errors=True)          # a rerun of the script starts this run afresh
    cfg = load_config(list_checkpoints(base_run / "checkpoints")[-1] / "config.toml", [
        f"--train.steps={args.ext_steps}", f"--train.run_dir={run}", "--checkpoint.every=0",
        "--checkpoint.keep_last=1", f"--train.log_every={max(1, args.ext_steps // 2)}", "--optim.warmup_steps=5",
        f"--optim.lr={args.ext_lr}", "--data.warmup_docs=0", *overrides, *(["--data.batch_size=1"] if args.quick else [])])
    init = Checkpointer(run, keep_last=0, rank=0).save_initial(model, dump_toml(cfg), source=str(base_run))
    cfg.checkpoint.resume = str(init)
    return quiet_train(cfg, tag)


def part_b(args, res: dict) -> None:
    runs = Path(args.runs)
    if "transformer" in args.stacks:
        base = runs / "transformer"
        _, cfg, _ = load_trained(base)
        T = cfg.data.seq_len
        lengths = [m * T for m in args.multiples]
        for name, flags in [(n, f) for n, f in rope_methods(T).items() if n in args.rope_methods]:
            out = Path(args.out) / "b" / f"rope-{method_arg(name)}"
            free = score(load_trained(base, flags), Path(f"{out}-free"), ["passkey"], lengths, args)
            ext = runs / f"transformer-rope-{method_arg(name)}"
            secs = continue_training(base, ext, [f"--data.seq_len={4 * T}", "--data.batch_size=2", *flags],
                                     args, f"rope {name}")
            tuned = score(load_trained(ext), Path(f"{out}-4T"), ["passkey"], lengths, args)
            row = {"stack": "transformer", "method": name, "free": free["passkey"], "tuned": tuned["passkey"],
                   "tune_s": round(secs, 1), "T": T}
            res["b"].append(row)
            print(f"  b | transformer | {name:20s} | free {fmt(free['passkey'], lengths)} | "
                  f"4T-tuned {fmt(tuned['passkey'], lengths)}", flush=True)
            save(args, res)
    for stack in [s for s in ("mamba2", "hawk") if s in args.stacks]:
        base = runs / stack
        _, cfg, _ = load_trained(base)
        T = cfg.data.seq_len
        lengths = [m * T for m in args.multiples]
        for name, flags in [(n, f) for n, f in MITIGATIONS.items() if method_arg(n) in args.recurrent_methods]:
            out = Path(args.out) / "b" / f"{stack}-{method_arg(name)}"
            acc = score(load_trained(base, at_length(flags, T)), out, ["passkey"], lengths, args)
            res["b"].append({"stack": stack, "method": f"mitigation: {name}", "free": acc["passkey"], "T": T})
            print(f"  b | {stack:11s} | {name:20s} | {fmt(acc['passkey'], lengths)}", flush=True)
            save(args, res)
        for name, flags in [(n, f) for n, f in INTERVENTIONS.items() if method_arg(n) in args.recurrent_methods]:
            ext = runs / f"{stack}-{method_arg(name)}"
            secs = continue_training(base, ext, at_length(flags, T), args, f"{stack} {name}")
            acc = score(load_trained(ext), Path(args.out) / "b" / ext.name, ["passkey"], lengths, args)
            res["b"].append({"stack": stack, "method": f"post-training: {name}", "tuned": acc["passkey"],
                             "tune_s": round(secs, 1), "T": T})
            print(f"  b | {stack:11s} | {name:20s} | {fmt(acc['passkey'], lengths)} (after {args.ext_steps} steps)",
                  flush=True)
            save(args, res)


# where the state collapses at this scale (README "Experiment: does the state collapse at this scale?"):
# short T, a large Mamba-2 state in 2 heads; every mitigation and length-generalisation training
COLLAPSE_REGIME = ["--seq-len", "32", "--d-state", "256", "--ssm-headdim", "64", "--multiples", "1,64",
                   "--passkey-multiples=", "--variants", "none,forget,write,norm,window,passing,noise,tbptt"]


def part_c(args, res: dict) -> None:
    """The state-collapse experiment as benchmarks/state_collapse.py runs it (its own table and plots),
    in the regime where the collapse shows."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import state_collapse

    out = Path(args.out) / "c"
    argv = ["--steps", str(args.collapse_steps), "--out", str(out), "--runs", str(Path(args.runs) / "collapse"),
            "--threads", str(args.threads)]
    argv += (["--archs", "mamba2", "--multiples", "1,2", "--eval-rows", "1", "--depths", "1", "--trials", "1"]
             if args.quick else ["--archs", "mamba2,hawk", *COLLAPSE_REGIME])
    state_collapse.main(argv)
    res["c"] = json.loads((out / "results.json").read_text())["rows"]
    for r in res["c"]:
        r.pop("curve", None), r.pop("passkey_samples", None)
    save(args, res)


def method_key(name: str) -> str:
    """The short name --rope-methods takes: "PI (linear)" -> "pi", "NTK-aware" -> "ntk", "YaRN" -> "yarn"."""
    return name.split()[0].split("-")[0].lower()


def method_arg(name: str) -> str:
    """The name --recurrent-methods takes, and the name of a row's run and results directories:
    "TBPTT, rows of 4·T" -> "tbptt-rows-of-4-t"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def fmt(acc: dict, lengths: list[int]) -> str:
    return " ".join(f"{acc[L]:.2f}" for L in lengths)


def save(args, res: dict) -> None:
    res["wall_seconds"] = round(time.perf_counter() - args.t0, 1)
    (Path(args.out) / "results.json").write_text(json.dumps(res, indent=1))


def report(res: dict) -> None:
    """The markdown tables the README quotes."""
    if res["a"]:
        print("\n| stack | steps | train s | passkey 1T | multi-key 1T |\n|---|---|---|---|---|")
        for r in res["a"]:
            print(f"| {r['stack']} | {r['steps']} | {r['train_s']:.0f} | {r['passkey_1T']:.2f} | {r['multikey_1T']:.2f} |")
    if res["b"]:
        mult = res["args"]["multiples"]
        print("\n| stack | method | " + " | ".join(f"{m}T free / tuned" for m in mult) + " |")
        print("|---|---|" + "---|" * len(mult))
        for r in res["b"]:
            T = r["T"]
            cells = [f"{r['free'][m * T]:.2f}" if "free" in r else "–" for m in mult]
            cells = [c + (f" / {r['tuned'][m * T]:.2f}" if "tuned" in r else "") for c, m in zip(cells, mult)]
            print(f"| {r['stack']} | {r['method']} | " + " | ".join(cells) + " |")
    print(f"\nwall time {res['wall_seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="every path, a few steps, a small grid (for the test)")
    p.add_argument("--parts", default="a,b,c")
    p.add_argument("--stacks", default="transformer,mamba2,hawk,hybrid")
    p.add_argument("--steps", type=int, default=0, help="training steps per stack (default: the recipe's)")
    p.add_argument("--rope-methods", default="none,pi,ntk,yarn,truncated",
                   help="(b): the Transformer's RoPE scalings, comma-separated (default: all five)")
    recurrent = [method_arg(n) for n in [*MITIGATIONS, *INTERVENTIONS]]
    p.add_argument("--recurrent-methods", default=",".join(recurrent),
                   help=f"(b): the Mamba-2 / Hawk mitigations and post-trainings, comma-separated: {', '.join(recurrent)}")
    p.add_argument("--ext-steps", type=int, default=200, help="continued / post-training steps in (b)")
    p.add_argument("--ext-lr", type=float, default=1e-3)
    p.add_argument("--collapse-steps", type=int, default=3000)
    p.add_argument("--multiples", default="1,2,4,8,16", help="evaluation lengths in (b), × T")
    p.add_argument("--depths", type=int, default=5)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/long_context")
    p.add_argument("--runs", default="runs/long_context")
    args = p.parse_args(argv)
    args.t0 = time.perf_counter()
    args.stacks = [s for s in args.stacks.split(",") if s]
    keys = {method_key(n): n for n in rope_methods(256)}
    picked = [m.strip() for m in args.rope_methods.split(",") if m.strip()]
    args.recurrent_methods = [m.strip() for m in args.recurrent_methods.split(",") if m.strip()]
    unknown = [m for m in picked if method_key(m) not in keys] + [s for s in args.stacks if s not in STACKS]
    unknown += [m for m in args.recurrent_methods if m not in recurrent]
    if unknown:
        p.error(f"unknown stack or method {', '.join(unknown)}: stacks are {', '.join(STACKS)}; RoPE methods are "
                f"{', '.join(keys)}; recurrent methods are {', '.join(recurrent)}")
    args.rope_methods = [keys[method_key(m)] for m in picked]
    args.train_overrides = []
    if args.quick:
        args.steps, args.ext_steps, args.collapse_steps = args.steps or 2, 1, 2
        args.multiples, args.depths, args.trials = "1,2", 2, 1
        args.train_overrides = ["--data.batch_size=2"]
    args.multiples = [int(m) for m in str(args.multiples).split(",")]
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    res: dict = {"args": {k: v for k, v in vars(args).items() if k != "t0"}, "a": [], "b": [], "c": []}
    parts = set(args.parts.split(","))
    if "a" in parts:
        part_a(args, res)
    if "b" in parts:
        part_b(args, res)
    if "c" in parts:
        part_c(args, res)
    save(args, res)
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
