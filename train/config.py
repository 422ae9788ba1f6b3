"""Typed run configuration: dataclass sections loaded from TOML, overridden on the command line.

    python -m train --config configs/tiny.toml --optim.lr=1e-3 --train.steps 500

Every key is checked: an unknown key or a bad value raises ConfigError with one line naming
the key and the nearest valid key; the CLI prints it and exits 2. `dump_toml` writes the
resolved config (saved in the run directory and beside every checkpoint).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from models.config import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A user error in the configuration (reported as one line, exit code 2)."""


def choice(default: str, *options: str):
    return field(default=default, metadata={"choices": (default, *options)})


@dataclass
class DataConfig:
    source: str = choice("synthetic", "shards")
    path: str = ""                    # shard directory (with manifest.json) when source = "shards"
    seq_len: int = 256
    batch_size: int = 8               # rows per data-parallel rank per micro-batch
    seed: int = 1234
    num_workers: int = 0
    min_doc_chars: int = 400          # synthetic corpus document sizes
    max_doc_chars: int = 6000
    skip_corrupt: bool = False        # skip (and count) corrupt shard samples instead of stopping
    packing: str = choice("concat", "dd")   # concat-and-chunk rows | Dataset Decomposition (shards only)
    # sequence-length warmup (DeepSpeed seqlen curriculum); the length reaches data.seq_len
    curriculum: str = choice("none", "fixed_linear", "fixed_root", "fixed_discrete")
    curriculum_min_len: int = 64
    curriculum_steps: int = 100       # steps to reach data.seq_len (fixed_linear / fixed_root)
    curriculum_root_degree: float = 2.0
    curriculum_len_step: int = 8      # lengths are rounded down to a multiple of this
    curriculum_lens: list[int] = field(default_factory=list)        # fixed_discrete lengths
    curriculum_max_steps: list[int] = field(default_factory=list)   # fixed_discrete: last step of each length
    # Dataset Decomposition (packing = "dd"): power-of-two buckets, tokens per step = batch_size·seq_len
    dd_min_len: int = 64
    dd_max_len: int = 0               # 0 = data.seq_len
    dd_order: str = choice("uniform", "grow_linear", "grow_p2", "grow_p100", "shrink")


@dataclass
class OptimConfig:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1         # final lr = lr * min_lr_ratio
    warmup_steps: int = 20
    schedule: str = choice("cosine", "wsd", "constant")
    decay_fraction: float = 0.2       # wsd: fraction of steps spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0            # 0 disables clipping


@dataclass
class TrainConfig:
    steps: int = 300
    grad_accum: int = 1
    seed: int = 0
    run_dir: str = "runs/tiny"
    device: str = choice("auto", "cpu", "cuda")
    dtype: str = choice("auto", "float32", "bfloat16", "float64")   # auto: bf16 autocast on GPU, fp32 on CPU
    activation_checkpointing: bool = False
    compile: bool = False
    deterministic: bool = True
    log_every: int = 10
    time_limit: float = 0.0           # minutes; save and exit with the requeue code before this (0 = none)
    on_nonfinite: str = choice("stop", "skip")   # non-finite loss/grad norm: stop, or drop the step
    max_nonfinite: int = 3            # skip: stop after this many non-finite steps in a row


@dataclass
class ParallelConfig:
    dp: int = -1                      # -1: whatever the world size leaves after tp·pp·sp
    tp: int = 1
    pp: int = 1
    sp: int = 1
    engine: str = choice("ddp", "fsdp", "deepspeed")
    zero_stage: int = 1               # DeepSpeed ZeRO stage when engine = "deepspeed"
    pp_schedule: str = choice("1f1b", "gpipe", "interleaved_1f1b")
    pp_microbatches: int = 2


@dataclass
class CheckpointConfig:
    every: int = 100                  # steps between saves (0 = only at the end)
    keep_last: int = 2                # 0 keeps all
    resume: str = "none"              # none | auto | a checkpoint directory
    allow_model_change: list[str] = field(default_factory=list)   # model keys a resume may change
    save_final: bool = True


@dataclass
class MetricsConfig:
    tensorboard: bool = True
    log_every: int = 10
    state_norms: bool = True


@dataclass
class EvalConfig:
    every: int = 0                    # steps between periodic evaluations (0 = never)
    passkey_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024])
    passkey_depths: int = 5
    passkey_trials: int = 2
    loss_length: int = 0              # loss-by-position length in tokens (0 = loss_multiple × data.seq_len)
    loss_multiple: int = 4
    loss_rows: int = 2                # rows averaged for loss by position (0 disables it)
    seed: int = 0


@dataclass
class LengthGenConfig:
    """Length-generalisation training interventions for M/R layers (train/length_gen.py)."""
    state_init: str = choice("zero", "noise", "fitted_noise", "passing")
    noise_std: float = 0.1            # σ of "noise" (and the start value of "fitted_noise")
    fit_momentum: float = 0.9         # running-RMS momentum of "fitted_noise"
    tbptt: bool = False               # truncated BPTT over consecutive chunks (row-stream loader)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lengthgen: LengthGenConfig = field(default_factory=LengthGenConfig)


def all_keys(cfg: Config) -> list[str]:
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))]


def nearest(key: str, cfg: Config) -> str:
    m = difflib.get_close_matches(key, all_keys(cfg), n=1, cutoff=0.0)
    return m[0] if m else "?"


def _convert(key: str, raw, typ, from_cli: bool):
    """Convert raw (a TOML value, or a string from the CLI) to typ, or raise ConfigError."""
    origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if from_cli and isinstance(raw, str):
            raw = [p for p in raw.strip("[]").split(",") if p.strip()]
        if not isinstance(raw, list):
            raise ConfigError(f"config key '{key}' expects a list, got {raw!r}")
        return [_convert(key, r.strip() if isinstance(r, str) else r, item, from_cli) for r in raw]
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if from_cli and isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' expects true or false, got {raw!r}")
    if typ in (int, float):
        if isinstance(raw, bool):
            raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {raw!r}")
        if isinstance(raw, int) or (typ is float and isinstance(raw, float)):
            return typ(raw)
        if from_cli and isinstance(raw, str):
            try:
                return int(raw) if typ is int else float(raw)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {raw!r}")
    if typ is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(f"config key '{key}' expects a string, got {raw!r}")
    raise ConfigError(f"config key '{key}' has an unsupported type {typ}")


def set_key(cfg: Config, key: str, raw, from_cli: bool = False) -> None:
    parts = key.split(".")
    if len(parts) != 2 or not hasattr(cfg, parts[0]):
        raise ConfigError(f"unknown config key '{key}' (nearest valid key: '{nearest(key, cfg)}')")
    section = getattr(cfg, parts[0])
    fields = {f.name: f for f in dataclasses.fields(section)}
    if parts[1] not in fields:
        raise ConfigError(f"unknown config key '{key}' (nearest valid key: '{nearest(key, cfg)}')")
    f = fields[parts[1]]
    typ = typing.get_type_hints(type(section))[f.name]
    value = _convert(key, raw, typ, from_cli)
    options = f.metadata.get("choices")
    if options and value not in options:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(options)}; got {value!r}")
    setattr(section, f.name, value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file, then `--section.key=value` / `--section.key value` overrides."""
    cfg = Config()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found; pass an existing TOML file to --config") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        for sec, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"unknown config key '{sec}' (nearest valid key: '{nearest(sec, cfg)}')")
            for k, v in values.items():
                set_key(cfg, f"{sec}.{k}", v)
    args = list(overrides or [])
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ConfigError(f"unexpected argument {a!r}; overrides look like --section.key=value")
        if "=" in a:
            k, v = a[2:].split("=", 1)
        elif i + 1 < len(args):
            k, v = a[2:], args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override {a} has no value; write {a}=VALUE")
        set_key(cfg, k, v, from_cli=True)
        i += 1
    try:
        cfg.model.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from train.config_checks import check_ranges

    check_ranges(cfg)
    return cfg


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(cfg: Config) -> str:
    lines = []
    for s in dataclasses.fields(cfg):
        section = getattr(cfg, s.name)
        lines.append(f"[{s.name}]")
        lines += [f"{f.name} = {_toml_value(getattr(section, f.name))}" for f in dataclasses.fields(section)]
        lines.append("")
    return "\n".join(lines)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
