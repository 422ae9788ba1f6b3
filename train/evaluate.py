"""Long-context evaluation: a task grid (passkey and RULER-style tasks) and loss by token position.

    python -m train.evaluate --checkpoint runs/tiny/checkpoints/step-0000300 \
        [--tasks passkey,niah_multikey,vt,cwe] [--jrt] [--lengths 1k,2k,4k] [--depths 10] [--trials 5] \
        [--loss-length 16x] [--loss-docs 4] [--out DIR] [--model.collapse_window=256 ...]

The checkpoint's own config.toml rebuilds the model; trailing `--section.key=value` overrides
apply on top, which is how a training-free collapse mitigation or RoPE scaling is switched on at
evaluation. Per task (data/tasks/*, one module each): TASK.json / TASK.png (length × depth
heatmap, red→green, train length marked) and with --jrt also TASK_jrt.*; loss_by_position.json /
loss_by_position.png; TensorBoard scalars and images; progress per task and length on stderr and
a summary table on stdout. Prompts are exactly the asked length in tokens: a length shorter
than a task's fixed parts, an unknown task or a tokenizer that cannot spell an answer is a
one-line error (exit 2). The same function runs periodically inside training (eval.every).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.batch import IGNORE_INDEX
from data.tasks import TaskError
from data.tokenizer import ByteTokenizer
from train.passkey import depth_grid
from train.plots import loss_by_position_plot, passkey_heatmap
from train.task_eval import check_tasks, print_progress, run_task, summary_table


def parse_length(text: str, train_len: int) -> int:
    """'4096' -> 4096, '4k' -> 4096, '16x' -> 16·train_len."""
    t = text.strip().lower()
    try:
        if t.endswith("x"):
            return int(float(t[:-1]) * train_len)
        if t.endswith("k"):
            return int(float(t[:-1]) * 1024)
        return int(t)
    except ValueError:
        raise ValueError(f"cannot read length {text!r}; write e.g. 4096, 4k or 16x (times the train length)") from None


def eval_tokenizer(data_cfg):
    """The tokenizer the data was made with: bytes for the synthetic corpus, the manifest's otherwise."""
    if data_cfg.source == "synthetic":
        return ByteTokenizer()
    try:
        from data.manifest import read_manifest
        from data.tokenizer import get_tokenizer

        return get_tokenizer(read_manifest(data_cfg.path).tokenizer)
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"cannot find the tokenizer of shard set {data_cfg.path!r} ({e})") from None


def eval_rows(data_cfg, length: int, n_rows: int, seed: int):
    """n_rows rows of `length` tokens: long synthetic documents by default, the shard set otherwise."""
    from dataclasses import replace

    from data.loader import build_loader

    if data_cfg.source == "synthetic":
        cfg = replace(data_cfg, seq_len=length, batch_size=n_rows, seed=data_cfg.seed + 7919 + seed,
                      min_doc_chars=length, max_doc_chars=length + length // 4, corpus="classic")
    else:
        cfg = replace(data_cfg, seq_len=length, batch_size=n_rows)
    return build_loader(cfg, 0, 1).next_batch()


def local_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Tokens already seen of the current document inside the row (0 at a row/document start).

    A document that began in an earlier row is, for the model, starting at the row start,
    so this (not the position inside the document) is the x-axis of the collapse curve.
    """
    b, t = doc_ids.shape
    idx = torch.arange(t, device=doc_ids.device).expand(b, t)
    start = torch.zeros_like(doc_ids, dtype=torch.bool)
    start[:, 0] = True
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - first


@torch.no_grad()
def loss_by_position(model, data_cfg, length: int, n_rows: int, seed: int = 0,
                     device: torch.device | str = "cpu", bins_per_octave: int = 8) -> dict:
    """Mean next-token loss per position bin over n_rows rows of `length` tokens, one row at a time."""
    model.eval()
    batch = eval_rows(data_cfg, length, n_rows, seed)
    total = np.zeros(length)
    squares = np.zeros(length)
    count = np.zeros(length)
    for r in range(n_rows):
        row = batch.rows(r, r + 1).to(device)
        pos = local_positions(row.doc_ids)
        logits = model(row.tokens, pos, row.doc_ids)
        ce = F.cross_entropy(logits.float().flatten(0, 1), row.labels.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="none")
        keep = (row.labels.flatten() != IGNORE_INDEX).cpu().numpy()
        p = pos.flatten().cpu().numpy()[keep]
        ce_kept = ce.double().cpu().numpy()[keep]
        np.add.at(total, p, ce_kept)
        np.add.at(squares, p, ce_kept ** 2)
        np.add.at(count, p, 1)
    # geometric bins (bins_per_octave per doubling): the x-axis is logarithmic and noise shrinks with position
    edges = np.unique(np.round(np.geomspace(1, length, int(np.log2(length) * bins_per_octave) + 1)).astype(int))
    edges = np.concatenate([[0], edges[edges < length], [length]])
    centres, means, errors = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        c = count[lo:hi].sum()
        if c > 0:
            mean = total[lo:hi].sum() / c
            var = max(0.0, squares[lo:hi].sum() / c - mean ** 2)
            centres.append(float((lo + hi - 1) / 2))
            means.append(float(mean))
            errors.append(float(np.sqrt(var / max(1.0, c - 1))))     # standard error of the bin's mean
    return {"length": length, "rows": n_rows, "positions": centres, "loss": means, "loss_se": errors,
            "tokens": int(count.sum()),
            "per_position_loss": (total / np.maximum(count, 1)).round(4).tolist()}


def loss_in_ranges(curve: dict, train_len: int) -> dict[str, float]:
    """Mean loss over [0,T), [T,2T), [2T,4T), ... (doubling ranges): the table's columns."""
    pos, loss = np.asarray(curve["positions"]), np.asarray(curve["loss"])
    out = {}
    lo, hi = 0, train_len
    while lo < curve["length"]:
        sel = (pos >= lo) & (pos < hi)
        if sel.any():
            out[f"{lo // train_len}-{hi // train_len}T"] = float(loss[sel].mean())
        lo, hi = hi, hi * 2
    return out


def evaluate_model(model, cfg, out_dir: str | Path, *, lengths: list[int], depths: int, trials: int,
                   loss_length: int, loss_rows: int, device: torch.device | str = "cpu", seed: int = 0,
                   tb=None, step: int = 0, passkey: bool = True, use_generate: bool = True,
                   write: bool = True, tasks: list[str] | None = None, jrt: bool = False, progress=None) -> dict:
    """Run the task grid and loss by position, write JSON + PNGs to out_dir (when `write`), log to `tb`.

    `tasks` defaults to ["passkey"] (none when `passkey` is False); `jrt` adds each task's
    "just read twice" variant as TASK_jrt. Returns {"train_length", "step", TASK: {length: score},
    "loss_ranges", "tasks": [TASK, ...]}. Raises TaskError before any decoding when a prompt cannot be built as asked.
    """
    out = Path(out_dir)
    train_len = cfg.data.seq_len
    summary: dict = {"train_length": train_len, "step": step}
    was_training = model.training
    names = list(tasks) if tasks is not None else (["passkey"] if passkey else [])
    if names and lengths:
        tok = eval_tokenizer(cfg.data)
        task_objs = check_tasks(names, tok, lengths, cfg.model.vocab_size, seed)
        for task in task_objs:
            for twice in ([False, True] if jrt else [False]):
                name = task.name + ("_jrt" if twice else "")
                t0 = time.perf_counter()
                res = run_task(model, tok, task, lengths, depth_grid(depths), trials, seed, device, use_generate,
                               twice, progress)
                res.update(train_length=train_len, seconds=round(time.perf_counter() - t0, 2))
                summary[name] = res["mean_accuracy_by_length"]
                summary.setdefault("tasks", []).append(name)
                if write:
                    out.mkdir(parents=True, exist_ok=True)
                    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
                title = f"{task.name}{' (JRT prompt)' if twice else ''}, step {step}"
                img = passkey_heatmap(res["accuracy"], lengths, res["depths"], train_len,
                                      out / f"{name}.png" if write else None, title=title)
                if tb is not None:
                    tb.image(f"eval/{name}_heatmap", img, step)
                    tb.scalars(step, {f"eval/{name}_acc_{L}": a for L, a in res["mean_accuracy_by_length"].items()})
    if loss_length > 0 and loss_rows > 0:
        curve = loss_by_position(model, cfg.data, loss_length, loss_rows, seed, device)
        curve.update(train_length=train_len, ranges=loss_in_ranges(curve, train_len))
        summary["loss_ranges"] = curve["ranges"]
        if write:
            out.mkdir(parents=True, exist_ok=True)
            (out / "loss_by_position.json").write_text(json.dumps(curve, indent=1))
        img = loss_by_position_plot({f"step {step}": (curve["positions"], curve["loss"], curve["loss_se"])},
                                    train_len, out / "loss_by_position.png" if write else None)
        if tb is not None:
            tb.image("eval/loss_by_position", img, step)
            tb.scalars(step, {f"eval/loss_{k}": v for k, v in curve["ranges"].items()})
    model.train(was_training)
    return summary


def periodic_eval(model, cfg, step: int, tb, is_main: bool, device) -> dict | None:
    """Evaluation every cfg.eval.every steps inside training (`model`: the engine's module, unwrapped).

    Every rank runs it on the same inputs (sharded engines such as FSDP need all ranks in the
    forward); only rank 0 writes files and TensorBoard entries.
    """
    every = cfg.eval.every
    if every <= 0 or step % every:
        return None
    if cfg.parallel.tp > 1 or cfg.parallel.pp > 1:
        if is_main and step == every:
            print("warning: eval.every is skipped under parallel.tp/pp > 1 (sharded weights); run "
                  "python -m train.evaluate on the checkpoint instead", file=sys.stderr)
        return None
    e = cfg.eval
    loss_len = e.loss_length or e.loss_multiple * cfg.data.seq_len
    kw = dict(lengths=list(e.passkey_lengths), depths=e.passkey_depths, trials=e.passkey_trials,
              loss_length=loss_len, loss_rows=e.loss_rows, device=device, seed=e.seed,
              tb=tb if is_main else None, step=step, write=is_main, tasks=list(e.tasks), jrt=e.jrt)
    out = Path(cfg.train.run_dir) / "eval" / f"step-{step:07d}"
    try:
        return evaluate_model(model, cfg, out, **kw)
    except TaskError as err:        # e.g. eval.passkey_lengths below a task's fixed parts: keep training
        if is_main:
            print(f"warning: periodic task evaluation skipped: {err}", file=sys.stderr)
        return evaluate_model(model, cfg, out, **{**kw, "tasks": []})


def find_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or the newest complete one under a run directory."""
    from train.checkpoint import is_complete, list_checkpoints

    if is_complete(path):
        return path
    for cand in (path / "checkpoints", path):
        found = list_checkpoints(cand)
        if found:
            return found[-1]
    raise FileNotFoundError(f"no complete checkpoint at {path}; pass a step-NNNNNNN directory or a run directory")


def parse_args(argv: list[str] | None):
    """(the evaluation flags, the config overrides: every other `--section.key=value`)."""
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (step-NNNNNNN) or run directory")
    p.add_argument("--tasks", default="passkey", help="comma-separated tasks (data/tasks): passkey, niah_multikey, "
                   "niah_multivalue, niah_multiquery, vt, cwe, copy")
    p.add_argument("--jrt", action="store_true", help="also score each task with its context given twice "
                   "(\"just read twice\"), reported as TASK_jrt beside the plain prompt")
    p.add_argument("--lengths", default="", help="prompt lengths in tokens, e.g. 1k,2k,4k or 1x,4x,16x "
                   "(default 1x,2x,4x the train length)")
    p.add_argument("--depths", type=int, default=10, help="number of needle depths from 0%% to 100%%")
    p.add_argument("--trials", type=int, default=5, help="random keys per (length, depth) cell")
    p.add_argument("--loss-length", default="8x", help="loss-by-position length (tokens, 4k, or 8x)")
    p.add_argument("--loss-docs", type=int, default=4, help="rows averaged for loss by position")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="output directory (default <checkpoint>/eval)")
    p.add_argument("--no-generate", action="store_true", help="decode with full forward passes, not generate")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-tensorboard", action="store_true", help="do not write <out>/tb")
    return p.parse_known_args(sys.argv[1:] if argv is None else argv)


def resolve(args, overrides: list[str]):
    """(checkpoint, config, prompt lengths, loss length, tasks), every prompt checked buildable before
    any model is loaded; a user error raises (ConfigError, FileNotFoundError, ValueError, TaskError)."""
    from train.config import load_config

    ckpt = find_checkpoint(Path(args.checkpoint))
    cfg_path = ckpt / "config.toml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing; evaluate needs the config saved beside the checkpoint")
    cfg = load_config(cfg_path, overrides)
    train_len = cfg.data.seq_len
    lengths = [parse_length(s, train_len) for s in (args.lengths or "1x,2x,4x").split(",") if s.strip()]
    loss_length = parse_length(args.loss_length, train_len)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if lengths and tasks:
        check_tasks(tasks, eval_tokenizer(cfg.data), lengths, cfg.model.vocab_size, args.seed)
    return ckpt, cfg, lengths, loss_length, tasks


def main(argv: list[str] | None = None) -> int:
    from train.config import ConfigError

    args, overrides = parse_args(argv)
    try:
        ckpt, cfg, lengths, loss_length, tasks = resolve(args, overrides)
    except (ConfigError, FileNotFoundError, ValueError, TaskError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import models
    from train.checkpoint import checkpoint_step, load_model_weights

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    model = models.build(cfg.model)
    load_model_weights(ckpt, model)
    model.to(device)
    out = Path(args.out) if args.out else ckpt / "eval"
    step = checkpoint_step(ckpt)
    t0 = time.perf_counter()
    from train.metrics import TensorBoardLogger

    tb = TensorBoardLogger(out, enabled=not args.no_tensorboard)     # <out>/tb
    summary = evaluate_model(model, cfg, out, lengths=lengths, depths=args.depths, trials=args.trials,
                             loss_length=loss_length, loss_rows=args.loss_docs, device=device, seed=args.seed,
                             step=step, use_generate=not args.no_generate, tb=tb, tasks=tasks, jrt=args.jrt,
                             progress=print_progress)
    tb.close()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if summary.get("tasks"):
        print(summary_table({n: summary[n] for n in summary["tasks"]}, lengths, cfg.data.seq_len))
    print(json.dumps(summary, indent=1))
    files = [f"{n}.json, {n}.png" for n in summary.get("tasks", [])]
    files += ["loss_by_position.json, .png"] if "loss_ranges" in summary else []
    files += [] if args.no_tensorboard else ["tb/"]
    print(f"wrote {out}/: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
