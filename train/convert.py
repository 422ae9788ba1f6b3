"""Hugging Face checkpoints in and out of longweave runs.

    python -m train.convert from-hf HF_DIR --output RUN_DIR [--dtype float32|float64] [--recipe X.toml]
    python -m train.convert to-hf CHECKPOINT --output OUT_DIR [--dtype float32|bfloat16|float64]

from-hf reads a local model directory (config.json; model.safetensors or sharded
model-*.safetensors with their index; or pytorch_model*.bin) and writes RUN_DIR/config.toml
plus a step-0 weights-only checkpoint, so `python -m train --config RUN_DIR/config.toml`
continues pretraining under any parallel layout with a fresh optimizer. A --recipe TOML sets
the run's data, optimizer, parallel layout and RoPE changes on top of the imported config. The
source config.json and tokenizer files are kept in RUN_DIR/hf/ (train on shards made with
`--tokenizer hf:RUN_DIR/hf`).
to-hf takes a checkpoint directory (or a run directory: its newest complete checkpoint),
written by any layout, and writes safetensors shards, their index, config.json and the
tokenizer files, which transformers' AutoModelForCausalLM.from_pretrained loads offline.
Bad input (a missing file, an unknown model_type, an unsupported feature, a tensor whose
shape does not match config.json) is one line on stderr, exit code 2, and nothing written.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from models.interop import InteropError, family_for, family_for_model
from train.hf_files import read_hf_state, write_hf_state

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")


class ConvertError(ValueError):
    """Bad input to the converter (one line, exit code 2)."""


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConvertError(f"{path} not found; pass a Hugging Face model directory with a config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path} is not valid JSON: {e}") from None


def empty_output(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConvertError(f"--output {path} exists and is not empty; choose a new directory (nothing is overwritten)")


def apply_toml(run, path: Path) -> None:
    """Set every key of a TOML file on run (a Config), as load_config does, but without the
    command line or LONGWEAVE_OVERRIDES: a conversion depends on its files only."""
    from train.config import ConfigError, set_key, tomllib

    try:
        data = tomllib.loads(path.read_text())
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"'{section}' is not a [section]")
            for key, value in values.items():
                set_key(run, f"{section}.{key}", value)
        run.model.validate()
    except FileNotFoundError:
        raise ConvertError(f"{path} not found") from None
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConvertError(f"{path}: {e}") from None


def build_with(cfg, ours: dict, dtype: str, recipe: Path | None):
    """Our model with the imported weights; a recipe that changes a tensor's shape is refused."""
    import models

    model = models.build(cfg).to(DTYPES[dtype])
    try:
        model.load_state_dict({k: v.to(DTYPES[dtype]) for k, v in ours.items()}, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise ConvertError(f"the recipe {recipe} changes the imported architecture ({first}); its [model] "
                           "section may only change RoPE, window and training-time settings") from None
    return model


def from_hf(src: Path, out: Path, dtype: str, recipe: Path | None = None) -> Path:
    from train.checkpoint import Checkpointer
    from train.config import Config, TrainConfig, dump_toml

    hf_config = read_json(src / "config.json")
    empty_output(out)
    family = family_for(hf_config)
    cfg = family.config_from_hf(hf_config)
    ours = family.state_from_hf(read_hf_state(src), cfg)
    run = Config(model=cfg, train=TrainConfig(dtype="float64" if dtype == "float64" else "auto"))
    if recipe is not None:
        apply_toml(run, recipe)
    run.train.run_dir, run.checkpoint.resume = str(out), "auto"
    model = build_with(run.model, ours, dtype, recipe)
    config_toml = dump_toml(run)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(config_toml)
    keep = out / "hf"
    keep.mkdir()
    for name in ("config.json", *TOKENIZER_FILES):
        if (src / name).is_file():
            shutil.copy2(src / name, keep / name)
    return Checkpointer(out, keep_last=0, rank=0).save_initial(model, config_toml, source=f"hf:{src}")


def resolve_checkpoint(path: Path) -> Path:
    from train.checkpoint import is_complete, list_checkpoints

    if is_complete(path):
        return path
    found = list_checkpoints(path / "checkpoints")
    if not found:
        raise ConvertError(f"{path} is neither a complete checkpoint nor a run directory with one")
    return found[-1]


def to_hf(path: Path, out: Path, dtype: str, shard_bytes: int) -> Path:
    import models
    from train.checkpoint import load_model_weights
    from train.config import Config

    ckpt = resolve_checkpoint(path)
    run = Config()
    apply_toml(run, ckpt / "config.toml")
    cfg = run.model
    empty_output(out)
    family = family_for_model(cfg)
    source = ckpt.parent.parent / "hf"
    base = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else None
    hf_config = family.config_to_hf(cfg, base)
    model = models.build(cfg).to(torch.float64 if run.train.dtype == "float64" else torch.float32)
    load_model_weights(ckpt, model)
    hf_state = family.state_to_hf({k: v.detach() for k, v in model.state_dict().items()}, cfg)
    hf_config["torch_dtype"] = dtype
    hf_config.pop("dtype", None)
    write_hf_state({k: v.to(DTYPES[dtype]) for k, v in hf_state.items()}, out, shard_bytes)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    return out


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(prog="python -m train.convert", description="Hugging Face <-> longweave checkpoints.")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("from-hf", help="import a local Hugging Face model directory as a longweave run")
    a.add_argument("source", help="directory with config.json and *.safetensors or pytorch_model*.bin")
    a.add_argument("--output", required=True, help="new run directory (config.toml + step-0 checkpoint)")
    a.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="weights' dtype in the run")
    a.add_argument("--recipe", default=None, help="TOML recipe for the continued pretraining: its sections "
                   "(and its [model] RoPE keys) are set on top of the imported model's config")
    b = sub.add_parser("to-hf", help="export a checkpoint as a Hugging Face model directory")
    b.add_argument("checkpoint", help="checkpoint directory, or a run directory (its newest checkpoint)")
    b.add_argument("--output", required=True, help="new directory for config.json + safetensors")
    b.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="dtype of the written tensors")
    b.add_argument("--shard-size-mb", type=float, default=4096.0, help="largest safetensors file (MiB)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "from-hf":
            recipe = None if args.recipe is None else Path(args.recipe)
            written = from_hf(Path(args.source), Path(args.output), args.dtype, recipe)
        else:
            written = to_hf(Path(args.checkpoint), Path(args.output), args.dtype, int(args.shard_size_mb * 2**20))
    except (ConvertError, InteropError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
