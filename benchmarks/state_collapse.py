"""State-collapse experiment: tiny recurrent LMs trained at T, evaluated to 16·T (DESIGN.md §7).

    python benchmarks/state_collapse.py [--steps 300] [--seq-len 256] [--out benchmarks/results/state_collapse]

For a Mamba-2 stack with an oversized state (d_state 64 at d_model 64) and a Hawk stack
(RG-LRU), each trained from scratch on the synthetic corpus at length T with fixed seeds:
  - none                 the plain model
  - forget λ=…           decay scaling a → a^λ at evaluation (training-free)
  - state-norm           per-head state norm clipped to the largest norm seen at T (fitted on the
                         same model at the training length, training-free)
  - window w=T           state-difference sliding window of T tokens (training-free)
  - state passing        a second model trained with lengthgen.state_init=passing
Measured per variant: mean loss in position ranges [0,T), [T,2T), ... up to 16·T; passkey
accuracy (greedy, exact match) at 1·T, 4·T, 16·T; the recurrent state norm at 16·T relative to
its value at T (state growth); the fraction of key digits reproduced in place at 16·T (partial
credit, to see near misses when exact match is 0). Prints the table, writes results.json, a loss-by-position
plot per architecture and a passkey heatmap (length × depth) per trained model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from models.collapse import CollapseSettings, set_collapse  # noqa: E402
from train.checkpoint import list_checkpoints, load_model_weights  # noqa: E402
from train.config import load_config  # noqa: E402
from train.evaluate import eval_rows, local_positions, loss_by_position, loss_in_ranges  # noqa: E402
from train.passkey import depth_grid, run_passkey  # noqa: E402
from train.plots import loss_by_position_plot, passkey_heatmap  # noqa: E402

ARCHS = {
    "mamba2": ["--model.pattern=M-M-", "--model.d_model=64", "--model.d_state=64", "--model.ssm_headdim=16",
               "--model.ssm_expand=2", "--model.ssm_chunk_size=64"],
    "hawk": ["--model.pattern=R-R-", "--model.d_model=64", "--model.n_heads=4", "--model.lru_width=64"],
}


def train_model(arch: str, variant: str, args, run_root: Path) -> tuple[models.LanguageModel, object, float]:
    """Train (or reuse a finished run of) one model; returns (model, config, seconds)."""
    from train.loop import train

    run_dir = run_root / f"{arch}-{variant}"
    overrides = [*ARCHS[arch], f"--data.seq_len={args.seq_len}", f"--data.batch_size={args.batch}",
                 f"--train.steps={args.steps}", f"--train.run_dir={run_dir}", f"--train.device={args.device}",
                 "--train.dtype=float32",
                 "--train.seed=0", "--data.seed=1234", f"--optim.lr={args.lr}", "--optim.warmup_steps=20",
                 "--checkpoint.every=0", "--checkpoint.keep_last=1", "--metrics.tensorboard=false",
                 f"--train.log_every={max(1, args.steps // 5)}", "--model.vocab_size=260"]
    if variant == "passing":
        overrides.append("--lengthgen.state_init=passing")
    cfg = load_config(None, overrides)
    t0 = time.perf_counter()
    done = list_checkpoints(run_dir / "checkpoints")
    if not (done and done[-1].name == f"step-{args.steps:07d}" and args.reuse):
        train(cfg, log=lambda m: print(f"  [{arch}/{variant}] {m}", flush=True))
        done = list_checkpoints(run_dir / "checkpoints")
    seconds = time.perf_counter() - t0
    model = models.build(cfg.model)
    load_model_weights(done[-1], model)
    return model.to(args.device).eval(), cfg, seconds


@torch.no_grad()
def state_norms_at(model, cfg, lengths: list[int], seed: int, device: str) -> dict[int, float]:
    """Mean (over layers) final recurrent-state norm after reading the first L tokens of eval rows."""
    rows = eval_rows(cfg.data, max(lengths), 2, seed).to(device)
    out = {}
    for L in lengths:
        doc = rows.doc_ids[:, :L]
        model(rows.tokens[:, :L], local_positions(doc), doc)
        norms = list(model.last_state_norms.values())
        out[L] = float(sum(float(n) for n in norms) / max(1, len(norms)))
    return out


@torch.no_grad()
def fit_norm_bound(model, cfg, seed: int, device: str) -> float:
    """Largest per-head state norm the model reaches at its training length (on eval rows)."""
    T = cfg.data.seq_len
    rows = eval_rows(cfg.data, T, 4, seed).to(device)
    _, finals = model(rows.tokens, local_positions(rows.doc_ids), rows.doc_ids, return_states=True)
    best = 0.0
    for i, (_, st) in finals.items():
        mixer = model.layers[i].mixer
        heads = mixer.nheads if hasattr(mixer, "nheads") else mixer.rglru.gate_a.blocks
        best = max(best, float(st.reshape(st.shape[0], heads, -1).norm(dim=-1).max()))
    return best


def evaluate_variant(model, cfg, settings: CollapseSettings, args, tok) -> dict:
    set_collapse(model, settings)
    T = cfg.data.seq_len
    t0 = time.perf_counter()
    curve = loss_by_position(model, cfg.data, args.multiples[-1] * T, args.eval_rows, seed=args.seed,
                             device=args.device)
    pk = run_passkey(model, tok, [m * T for m in args.multiples], depth_grid(args.depths), args.trials,
                     seed=args.seed, device=args.device)
    norms = state_norms_at(model, cfg, [T, args.multiples[-1] * T], args.seed, args.device)
    set_collapse(model, CollapseSettings())
    digits = {}     # partial credit: fraction of the key's digits reproduced in place (shows near misses)
    for c in pk["cases"]:
        got = c["generated"].strip()[:len(c["key"])]
        digits.setdefault(str(c["length"]), []).append(sum(a == b for a, b in zip(got, c["key"])) / len(c["key"]))
    return {"ranges": loss_in_ranges(curve, T), "curve": {"positions": curve["positions"], "loss": curve["loss"]},
            "passkey": pk["mean_accuracy_by_length"], "passkey_grid": pk["accuracy"], "passkey_depths": pk["depths"],
            "state_norm_growth": norms[args.multiples[-1] * T] / max(1e-12, norms[T]),
            "passkey_digit_acc": {k: sum(v) / len(v) for k, v in digits.items()},
            "passkey_samples": [{k: c[k] for k in ("length", "depth", "key", "generated")} for c in pk["cases"][::7]],
            "eval_seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--archs", default="mamba2,hawk")
    p.add_argument("--multiples", default="1,4,16")
    p.add_argument("--eval-rows", type=int, default=8)
    p.add_argument("--depths", type=int, default=5)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--forget", type=float, default=2.0, help="decay scale λ of the forget-more variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default="benchmarks/results/state_collapse")
    p.add_argument("--runs", default="runs/state_collapse", help="training run directories (not committed)")
    p.add_argument("--reuse", action="store_true", help="reuse finished training runs in --runs")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="only merge results.json files of earlier runs (e.g. one per arch) into one table + plots")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        merged = {"args": parts[0]["args"], "rows": [r for part in parts for r in part["rows"]],
                  "wall_seconds": {part["args"]["archs"]: part["wall_seconds"] for part in parts},
                  "device_name": parts[0].get("device_name", "")}
        (out / "results.json").write_text(json.dumps(merged, indent=1))
        report(merged, out)
        return 0
    args.multiples = [int(m) for m in args.multiples.split(",")]
    torch.set_num_threads(args.threads)
    from data.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    t_all = time.perf_counter()
    results: dict = {"args": {k: v for k, v in vars(args).items()}, "rows": [],
                     "device_name": torch.cuda.get_device_name() if args.device == "cuda"
                     else f"CPU, {args.threads} torch threads"}
    for arch in args.archs.split(","):
        base, cfg, secs = train_model(arch, "base", args, Path(args.runs))
        passing, _, secs_p = train_model(arch, "passing", args, Path(args.runs))
        bound = fit_norm_bound(base, cfg, args.seed, args.device)
        T = cfg.data.seq_len
        results["args"]["seq_len"] = T          # the trained length (LONGWEAVE_OVERRIDES may change --seq-len)
        variants = [
            ("none", base, CollapseSettings()),
            (f"forget λ={args.forget:g}", base, CollapseSettings(decay_scale=args.forget)),
            (f"state-norm ≤{bound:.2f}", base, CollapseSettings(state_norm=bound, norm_chunk=64)),
            (f"window w={T}", base, CollapseSettings(window=T)),
            ("state passing (train)", passing, CollapseSettings()),
        ]
        for name, model, settings in variants:
            r = evaluate_variant(model, cfg, settings, args, tok)
            r.update(arch=arch, variant=name, train_seconds=secs if model is base else secs_p)
            results["rows"].append(r)
            results["wall_seconds"] = time.perf_counter() - t_all     # written after every row: a run cut
            (out / "results.json").write_text(json.dumps(results, indent=1))   # short keeps what it measured
            print(f"  {arch:7s} {name:24s} " + " ".join(f"{k} {v:.3f}" for k, v in r["ranges"].items())
                  + f" | passkey {r['passkey']} | norm growth {r['state_norm_growth']:.2f}", flush=True)
    results["wall_seconds"] = time.perf_counter() - t_all
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, out)
    return 0


def report(results: dict, out: Path) -> None:
    """Print the table and draw the plots from a results dict (fresh, or merged from several runs)."""
    a = results["args"]
    T, steps = a["seq_len"], a["steps"]
    multiples = [int(m) for m in str(a["multiples"]).strip("[]").split(",")]
    rows = results["rows"]
    ranges = list(rows[0]["ranges"])
    head = ["arch", "variant", *[f"loss {r}" for r in ranges], *[f"passkey {m}T" for m in multiples],
            f"digits {multiples[-1]}T", f"state norm {multiples[-1]}T/T"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        pk = [f"{r['passkey'][str(m * T)]:.2f}" for m in multiples]
        cells = [r["arch"], r["variant"], *[f"{r['ranges'].get(k, float('nan')):.3f}" for k in ranges], *pk,
                 f"{r.get('passkey_digit_acc', {}).get(str(multiples[-1] * T), float('nan')):.2f}",
                 f"{r['state_norm_growth']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    for arch in archs:
        mine = [r for r in rows if r["arch"] == arch]
        loss_by_position_plot({r["variant"]: (r["curve"]["positions"], r["curve"]["loss"]) for r in mine}, T,
                              out / f"loss_by_position_{arch}.png",
                              title=f"{arch}: loss by position (trained at T={T}, {steps} steps)")
        for r in mine:
            if r["variant"] in ("none", "state passing (train)"):
                tag = "base" if r["variant"] == "none" else "passing"
                passkey_heatmap(r["passkey_grid"], [m * T for m in multiples], r["passkey_depths"], T,
                                out / f"passkey_{arch}_{tag}.png", title=f"{arch} ({tag})")
    print(f"\nwall time {results['wall_seconds']} s (training + evaluation) on {results.get('device_name', '?')}")


if __name__ == "__main__":
    sys.exit(main())
