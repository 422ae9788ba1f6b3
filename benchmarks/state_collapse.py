"""State-collapse experiment: tiny recurrent LMs trained at T, evaluated far beyond it (DESIGN.md §7).

    python benchmarks/state_collapse.py [--archs mamba2,hawk] [--seq-len 256] [--d-state 64] \
        [--ssm-headdim 16] [--steps 300] [--lr 3e-3] [--multiples 1,4,16] [--variants none,forget,...]

Each architecture (Mamba-2 `M-M-`, Hawk `R-R-`) is trained from scratch on the synthetic corpus at
length T with fixed seeds; Stuffed Mamba (Chen et al. 2024) predicts collapse where the state is
over-parameterised for T (large d_state, few heads, short T, long training). Variants (--variants):
  none      the plain model               forget   decay a → a^λ (--forget)      write  u → γ·u (--write)
  norm      per-head state norm clipped to the largest norm the model reaches at T
  window    state-difference sliding window of T tokens   (these four: training-free, models/collapse.py)
  passing / noise / tbptt   a second model trained with that [lengthgen] intervention
Measured per variant: mean loss in position ranges [0,T), [T,2T), [2T,4T) ... up to the last
multiple of T; "loss ratio" = mean loss of the last range / the lowest range's; the mean
recurrent-state norm after L tokens for L = T, 2T, 4T ... on long documents and on the newline
prompt (a row of "\n" tokens, which needs no data), as ratios to L = T; passkey accuracy (greedy,
exact match) at --passkey-multiples of T that can hold a prompt. Prints the table, writes
results.json, and per architecture a loss-by-position plot, a state-norm plot and passkey heatmaps.
--merge joins earlier results.json files into one table (one regime column set per run).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from models.collapse import CollapseSettings, set_collapse  # noqa: E402
from train.checkpoint import list_checkpoints, load_model_weights  # noqa: E402
from train.config import load_config  # noqa: E402
from train.evaluate import eval_rows, local_positions, loss_by_position, loss_in_ranges  # noqa: E402
from train.passkey import depth_grid, run_passkey  # noqa: E402
from train.plots import loss_by_position_plot, passkey_heatmap  # noqa: E402

TRAINED = {"passing": ["--lengthgen.state_init=passing"], "noise": ["--lengthgen.state_init=noise"],
           "tbptt": ["--lengthgen.tbptt=true"]}
FREE = ("none", "forget", "write", "norm", "window")
PASSKEY_MIN = 160          # a passkey prompt's fixed parts need ~140 byte tokens
NEWLINE = 10               # byte "\n"


def arch_overrides(arch: str, a) -> list[str]:
    if arch == "mamba2":
        return ["--model.pattern=M-M-", f"--model.d_model={a.d_model}", f"--model.d_state={a.d_state}",
                f"--model.ssm_headdim={a.ssm_headdim}", "--model.ssm_expand=2",
                f"--model.ssm_chunk_size={min(64, a.seq_len)}"]
    if arch == "hawk":
        return ["--model.pattern=R-R-", f"--model.d_model={a.d_model}", "--model.n_heads=4",
                f"--model.lru_width={a.lru_width or a.d_model}"]
    raise SystemExit(f"unknown arch {arch!r}: use mamba2 or hawk")


def train_model(arch: str, variant: str, args, run_root: Path) -> tuple[models.LanguageModel, object, float]:
    """Train (or, with --reuse, load a finished run of) one model; returns (model, config, seconds)."""
    from train.loop import train

    run_dir = run_root / f"{arch}-{variant}"
    overrides = [*arch_overrides(arch, args), f"--data.seq_len={args.seq_len}", f"--data.batch_size={args.batch}",
                 f"--train.steps={args.steps}", f"--train.run_dir={run_dir}", f"--train.device={args.device}",
                 "--train.dtype=float32", "--train.seed=0", "--data.seed=1234", f"--optim.lr={args.lr}",
                 f"--optim.warmup_steps={args.warmup}", "--checkpoint.every=0", "--checkpoint.keep_last=1",
                 "--metrics.tensorboard=false", f"--train.log_every={max(1, args.steps // 5)}",
                 "--model.vocab_size=260", *TRAINED.get(variant, [])]
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


def doubling(T: int, last: int) -> list[int]:
    """T, 2T, 4T, ... up to last·T (last included)."""
    out, m = [], 1
    while m < last:
        out.append(m * T)
        m *= 2
    return [*out, last * T]


@torch.no_grad()
def state_norm_curve(model, cfg, lengths: list[int], n_rows: int, seed: int, device: str,
                     newline: bool = False) -> list[float]:
    """Mean (over layers and n_rows rows) final recurrent-state norm after the first L tokens, per L:
    of long eval documents (the loss curve's rows), or (newline=True) of a row of newline tokens."""
    if newline:
        tokens = torch.full((1, max(lengths)), NEWLINE, device=device)
        doc = torch.zeros_like(tokens)
    else:
        rows = eval_rows(cfg.data, max(lengths), n_rows, seed).to(device)
        tokens, doc = rows.tokens, rows.doc_ids
    out = []
    for L in lengths:
        model(tokens[:, :L], local_positions(doc[:, :L]), doc[:, :L])
        norms = [float(n) for n in model.last_state_norms.values()]
        out.append(sum(norms) / max(1, len(norms)))
    return out


@torch.no_grad()
def fit_norm_bound(model, cfg, seed: int, device: str) -> float:
    """Largest per-head state norm the model reaches at its training length (on eval rows)."""
    rows = eval_rows(cfg.data, cfg.data.seq_len, 4, seed).to(device)
    _, finals = model(rows.tokens, local_positions(rows.doc_ids), rows.doc_ids, return_states=True)
    best = 0.0
    for i, (_, st) in finals.items():
        mixer = model.layers[i].mixer
        heads = mixer.nheads if hasattr(mixer, "nheads") else mixer.rglru.gate_a.blocks
        best = max(best, float(st.reshape(st.shape[0], heads, -1).norm(dim=-1).max()))
    return best


def loss_ratio(ranges: dict) -> float:
    """Mean loss of the last doubling range / the lowest range mean (1 = the loss keeps falling or stays
    flat with more context; above 1 = it rises again far past T). [T/2, T) is no reference: at short T
    it still holds the start of documents."""
    return float(list(ranges.values())[-1] / min(ranges.values()))


def settings_for(variant: str, args, bound: float, T: int) -> CollapseSettings:
    return {"forget": CollapseSettings(decay_scale=args.forget), "write": CollapseSettings(write_scale=args.write),
            "norm": CollapseSettings(state_norm=bound, norm_chunk=min(64, T)),
            "window": CollapseSettings(window=T)}.get(variant, CollapseSettings())


def variant_label(variant: str, args, bound: float, T: int) -> str:
    return {"forget": f"forget λ={args.forget:g}", "write": f"write γ={args.write:g}", "norm": f"state-norm ≤{bound:.2f}",
            "window": f"window w={T}", "passing": "state passing (train)", "noise": "noise init (train)",
            "tbptt": "TBPTT (train)"}.get(variant, variant)


def evaluate_variant(model, cfg, settings: CollapseSettings, args, tok) -> dict:
    set_collapse(model, settings)
    T = cfg.data.seq_len
    last = args.multiples[-1]
    t0 = time.perf_counter()
    curve = loss_by_position(model, cfg.data, last * T, args.eval_rows, seed=args.seed, device=args.device)
    ranges = loss_in_ranges(curve, T)
    lengths = doubling(T, last)
    norms = state_norm_curve(model, cfg, lengths, args.eval_rows, args.seed, args.device)
    newline = state_norm_curve(model, cfg, lengths, 1, args.seed, args.device, newline=True)
    pk_lengths = [m * T for m in args.passkey_multiples if m * T >= PASSKEY_MIN]
    pk = (run_passkey(model, tok, pk_lengths, depth_grid(args.depths), args.trials, seed=args.seed,
                      device=args.device) if pk_lengths else {"mean_accuracy_by_length": {}, "accuracy": [],
                                                              "depths": [], "cases": []})
    set_collapse(model, CollapseSettings())
    digits = {}     # partial credit: fraction of the key's digits reproduced in place (shows near misses)
    for c in pk["cases"]:
        got = c["generated"].strip()[:len(c["key"])]
        digits.setdefault(str(c["length"]), []).append(sum(a == b for a, b in zip(got, c["key"])) / len(c["key"]))
    return {"ranges": ranges, "loss_ratio": loss_ratio(ranges),
            "curve": {"positions": curve["positions"], "loss": curve["loss"]},
            "norm_lengths": lengths, "state_norms": norms, "newline_norms": newline,
            "state_norm_growth": norms[-1] / max(1e-12, norms[0]),
            "newline_norm_growth": newline[-1] / max(1e-12, newline[0]),
            "passkey": pk["mean_accuracy_by_length"], "passkey_lengths": pk_lengths, "passkey_grid": pk["accuracy"],
            "passkey_depths": pk["depths"], "passkey_digit_acc": {k: sum(v) / len(v) for k, v in digits.items()},
            "passkey_samples": [{k: c[k] for k in ("length", "depth", "key", "generated")} for c in pk["cases"][::7]],
            "eval_seconds": time.perf_counter() - t0}


def int_list(text: str) -> list[int]:
    return [int(m) for m in text.split(",") if m.strip()]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default="mamba2,hawk")
    p.add_argument("--seq-len", type=int, default=256, help="training length T")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--d-state", type=int, default=64, help="Mamba-2 state size per head")
    p.add_argument("--ssm-headdim", type=int, default=16, help="Mamba-2 head dim (heads = 2·d_model / this)")
    p.add_argument("--lru-width", type=int, default=0, help="Hawk RG-LRU width (0 = d_model)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--variants", default="none,forget,norm,window,passing",
                   help=f"comma list of {','.join([*FREE, *TRAINED])}")
    p.add_argument("--multiples", default="1,4,16", help="passkey lengths (×T); the last is the loss/norm length")
    p.add_argument("--passkey-multiples", default=None, help="passkey lengths (×T) if not --multiples; '' = none")
    p.add_argument("--eval-rows", type=int, default=8)
    p.add_argument("--depths", type=int, default=5)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--forget", type=float, default=2.0, help="decay scale λ of the forget variant")
    p.add_argument("--write", type=float, default=0.5, help="write scale γ of the write variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default="benchmarks/results/state_collapse")
    p.add_argument("--runs", default="runs/state_collapse", help="training run directories (not committed)")
    p.add_argument("--reuse", action="store_true", help="reuse finished training runs in --runs")
    p.add_argument("--quick", action="store_true",
                   help="every variant and path with 3 steps at T=32 and a small grid (for the test)")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="only merge results.json files of earlier runs into one table + plots")
    p.add_argument("--keep", default="", help="with --merge: only rows whose variant label starts with one of "
                   "these (comma list, e.g. 'none' for a table of regimes)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seq_len, args.batch, args.warmup, args.multiples, args.passkey_multiples = 3, 32, 2, 1, "1,8", "8"
        args.eval_rows, args.depths, args.trials, args.variants = 1, 1, 1, ",".join([*FREE, *TRAINED])
    args.multiples = int_list(args.multiples)
    args.passkey_multiples = args.multiples if args.passkey_multiples is None else int_list(args.passkey_multiples)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in (*FREE, *TRAINED)]
    if bad:
        p.error(f"unknown variant(s) {','.join(bad)}: use {','.join([*FREE, *TRAINED])}")
    return args


def regime(args, cfg) -> dict:
    """What the row was trained as (the regime table's columns)."""
    m = cfg.model
    return {"T": cfg.data.seq_len, "d_state": m.d_state if "M" in m.pattern else m.lru_width or m.d_model,
            "heads": (m.ssm_expand * m.d_model) // m.ssm_headdim if "M" in m.pattern else m.n_heads,
            "steps": args.steps, "lr": args.lr}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        report(merge([json.loads(Path(f).read_text()) for f in args.merge], out, args.keep), out)
        return 0
    torch.set_num_threads(args.threads)
    from data.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    t_all = time.perf_counter()
    results: dict = {"args": {k: v for k, v in vars(args).items()}, "rows": [],
                     "device_name": torch.cuda.get_device_name() if args.device == "cuda"
                     else f"CPU, {args.threads} torch threads"}
    for arch in args.archs.split(","):
        base, cfg, secs = train_model(arch, "base", args, Path(args.runs))
        T = cfg.data.seq_len
        results["args"]["seq_len"] = T          # the trained length (LONGWEAVE_OVERRIDES may change --seq-len)
        bound = fit_norm_bound(base, cfg, args.seed, args.device)
        for variant in args.variants:
            model, secs_v = (base, secs) if variant in FREE else train_model(arch, variant, args, Path(args.runs))[::2]
            r = evaluate_variant(model, cfg, settings_for(variant, args, bound, T), args, tok)
            r.update(arch=arch, variant=variant_label(variant, args, bound, T), train_seconds=secs_v,
                     regime=regime(args, cfg))
            results["rows"].append(r)
            results["wall_seconds"] = time.perf_counter() - t_all     # written after every row: a run cut
            (out / "results.json").write_text(json.dumps(results, indent=1))   # short keeps what it measured
            print(f"  {arch:7s} {r['variant']:24s} " + " ".join(f"{k} {v:.3f}" for k, v in r["ranges"].items())
                  + f" | loss ratio {r['loss_ratio']:.2f} | passkey {r['passkey']} | norm growth "
                  f"{r['state_norm_growth']:.2f} (newlines {r['newline_norm_growth']:.2f})", flush=True)
    results["wall_seconds"] = time.perf_counter() - t_all
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, out)
    return 0


def merge(parts: list[dict], out: Path, keep: str = "") -> dict:
    """One results dict from several runs' (each row tagged with its regime; rows of runs older than
    the regime fields get it from their run's arguments and the old default sizes)."""
    prefixes = tuple(k for k in keep.split(",") if k)
    rows = []
    for part in parts:
        a = part["args"]
        for r in part["rows"]:
            if "regime" not in r:     # runs before the regime flags: d_model 64, d_state 64, headdim 16 / 4 heads
                r["regime"] = {"T": a["seq_len"], "d_state": 64, "heads": 8 if r["arch"] == "mamba2" else 4,
                               "steps": a["steps"], "lr": a["lr"]}
            r.setdefault("loss_ratio", loss_ratio(r["ranges"]))
            r.setdefault("passkey_lengths", [int(L) for L in r["passkey"]])
            if not prefixes or r["variant"].startswith(prefixes):
                rows.append(r)
    merged = {"args": parts[0]["args"], "rows": rows, "device_name": parts[0].get("device_name", ""),
              "wall_seconds": [w for part in parts for w in (part["wall_seconds"] if isinstance(part["wall_seconds"], list)
                                                              else [part["wall_seconds"]])]}
    (out / "results.json").write_text(json.dumps(merged, indent=1))
    return merged


def report(results: dict, out: Path) -> None:
    """Print the table and draw the plots from a results dict (fresh, or merged from several runs)."""
    rows = results["rows"]
    ranges = list(dict.fromkeys(k for r in rows for k in r["ranges"]))
    pk_lengths = list(dict.fromkeys(int(L) for r in rows for L in r["passkey"]))
    head = ["arch", "T", "d_state", "heads", "steps", "lr", "variant", *[f"loss {k}" for k in ranges], "loss ratio",
            *[f"passkey {L}" for L in pk_lengths], "state norm", "newline norm"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        g = r["regime"]
        cells = [r["arch"], *[f"{g[k]}" for k in ("T", "d_state", "heads", "steps")], f"{g['lr']:g}", r["variant"],
                 *[f"{r['ranges'][k]:.3f}" if k in r["ranges"] else "" for k in ranges],
                 f"{r['loss_ratio']:.2f}",
                 *[f"{r['passkey'][str(L)]:.2f}" if str(L) in r["passkey"] else "" for L in pk_lengths],
                 f"{r['state_norm_growth']:.2f}", f"{r['newline_norm_growth']:.2f}" if "newline_norm_growth" in r else "—"]
        print("| " + " | ".join(cells) + " |")
    print("(loss ratio = loss of the last range / the lowest range loss; state and newline norm = norm after the "
          "longest length / norm after T)")
    for arch in dict.fromkeys(r["arch"] for r in rows):
        mine = [r for r in rows if r["arch"] == arch]
        g = mine[0]["regime"]
        T_a, several = g["T"], len({json.dumps(r["regime"]) for r in mine}) > 1
        name = arch + ("" if several else f" T={T_a} d_state={g['d_state']} heads={g['heads']} steps={g['steps']}")
        label = (lambda r: f"T={r['regime']['T']} d_state={r['regime']['d_state']} heads={r['regime']['heads']} "
                 f"steps={r['regime']['steps']} lr={r['regime']['lr']:g}: {r['variant']}") if several else \
            (lambda r: r["variant"])
        loss_by_position_plot({label(r): (r["curve"]["positions"], r["curve"]["loss"]) for r in mine}, T_a,
                              out / f"loss_by_position_{arch}.png", title=f"{name}: loss by position")
        if all("state_norms" in r for r in mine):
            state_norm_plot(mine, label, T_a, out / f"state_norm_{arch}.png", title=f"{name}: recurrent state norm")
        for r in mine:
            if r["variant"] in ("none", "state passing (train)") and r.get("passkey_grid") and not several:
                tag = "base" if r["variant"] == "none" else "passing"
                passkey_heatmap(r["passkey_grid"], r["passkey_lengths"], r["passkey_depths"], T_a,
                                out / f"passkey_{arch}_{tag}.png", title=f"{arch} ({tag})")
    for png in out.glob("*.png"):
        shrink_png(png)
    print(f"\nwall time {results['wall_seconds']} s (training + evaluation) on {results.get('device_name', '?')}")


def shrink_png(path: Path) -> None:
    """Rewrite a plot as a 64-colour palette PNG (a third of the size or less; line plots lose nothing visible)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=64)
    small.save(path, optimize=True)


def state_norm_plot(rows: list[dict], label, T: int, path: Path, title: str) -> None:
    """State norm after L tokens ÷ its value at T, per variant: documents solid, newline prompt dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    for r in rows:
        x = np.asarray(r["norm_lengths"])
        (line,) = ax.plot(x, np.asarray(r["state_norms"]) / r["state_norms"][0], marker="o", ms=3, label=label(r))
        ax.plot(x, np.asarray(r["newline_norms"]) / max(1e-12, r["newline_norms"][0]), linestyle="--",
                color=line.get_color(), linewidth=1)
    ax.axvline(T, color="black", linestyle=":", linewidth=1.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("tokens read (log scale); dashed: newline prompt")
    ax.set_ylabel("state norm / norm at T")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
