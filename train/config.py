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
import os
import shlex
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from models.config import ModelConfig, opt

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A user error in the configuration (reported as one line, exit code 2)."""


def choice(default: str, *options: str, help: str = ""):
    """A string field that takes one of (default, *options)."""
    return opt(default, help, choices=(default, *options))


@dataclass
class SourceConfig:
    """One `[[data.sources]]` table of a mixture (data.source = "mixture"; data/mixture.py)."""
    path: str = opt("", "shard directory, or Megatron prefix / directory of prefixes")
    format: str = choice("shards", "megatron", help="what path holds: data.prepare shards or Megatron .bin/.idx")
    weight: float = opt(1.0, "share of the training tokens (normalised over the sources; >= 0)")
    name: str = opt("", "label in logs and TensorBoard ('' = the path's last part)")
    min_doc_len: int = opt(0, "drop documents shorter than this many tokens (0 = keep all)")
    max_doc_len: int = opt(0, "drop documents longer than this many tokens (0 = no limit)")
    long_doc_len: int = opt(0, "L: documents of >= L tokens are long (0 = no upsampling)")
    long_doc_rate: float = opt(1.0, "a: copies per epoch of a long document (a fraction is drawn per document)")
    short_doc_rate: float = opt(1.0, "b: copies per epoch of a shorter document")


@dataclass
class DataConfig:
    source: str = choice("synthetic", "shards", "megatron", "mixture",
                         help="training text: the built-in synthetic corpus, prepared shards in data.path, Megatron "
                              ".bin/.idx prefixes in data.path, or a mixture of [[data.sources]]")
    path: str = opt("", "shard directory (with manifest.json) when source = 'shards'; a Megatron prefix "
                        "(PREFIX.bin + PREFIX.idx) or a directory of them when source = 'megatron'")
    seq_len: int = opt(256, "tokens per training row (the training context length)")
    batch_size: int = opt(8, "rows per data-parallel rank per micro-batch")
    seed: int = opt(1234, "seed of the data order (shard and document permutation, synthetic corpus)")
    num_workers: int = opt(0, "background loader processes per rank (0 = load in the training process)")
    min_doc_chars: int = opt(400, "synthetic corpus: shortest document, in characters")
    max_doc_chars: int = opt(6000, "synthetic corpus: longest document, in characters")
    skip_corrupt: bool = opt(False, "skip (and count) corrupt shard samples instead of stopping")
    packing: str = choice("concat", "dd", help="concat: documents end to end cut into rows | dd: Dataset Decomposition (shards only)")
    # sequence-length warmup (DeepSpeed seqlen curriculum); the length reaches data.seq_len
    curriculum: str = choice("none", "fixed_linear", "fixed_root", "fixed_discrete",
                             help="sequence-length warmup schedule (none = always data.seq_len)")
    curriculum_min_len: int = opt(64, "curriculum: the row length at step 0")
    curriculum_steps: int = opt(100, "fixed_linear / fixed_root: steps to reach data.seq_len")
    curriculum_root_degree: float = opt(2.0, "fixed_root: the root's degree (2 = square root)")
    curriculum_len_step: int = opt(8, "curriculum lengths are rounded down to a multiple of this")
    curriculum_lens: list[int] = opt(factory=list, help="fixed_discrete: the row lengths, in order")
    curriculum_max_steps: list[int] = opt(factory=list, help="fixed_discrete: last step of each length")
    # Dataset Decomposition (packing = "dd"): power-of-two buckets, tokens per step = batch_size·seq_len
    dd_min_len: int = opt(64, "Dataset Decomposition: shortest bucket length (a power of two)")
    dd_max_len: int = opt(0, "Dataset Decomposition: longest bucket length (0 = data.seq_len)")
    dd_order: str = choice("uniform", "grow_linear", "grow_p2", "grow_p100", "shrink",
                           help="Dataset Decomposition: order in which buckets are sampled (grow = short first)")
    # the synthetic corpus: "classic" (min/max_doc_chars) or "sized" (data/tasks/corpus.py)
    corpus: str = choice("classic", "sized", help="synthetic corpus: classic (min/max_doc_chars) | sized: lengths "
                         "relative to the row length, with RULER-style task documents")
    task_mix: float = opt(0.5, "sized corpus: share of documents that are task documents (data.tasks)")
    tasks: list[str] = opt(factory=lambda: ["passkey", "niah_multikey", "niah_multivalue", "niah_multiquery",
                                            "vt", "cwe", "copy"], help="sized corpus: task documents drawn from")
    task_weights: list[float] = opt(factory=list, help="sized corpus: one weight per data.tasks (empty = equal)")
    task_loss: str = choice("all", "answers", help="sized corpus: task documents scored on every token (all) or "
                            "on their completions only (answers: the prompt's prose left out of the loss)")
    fit_fraction: float = opt(0.75, "sized corpus: share of documents (T/8..T) never cut by a row boundary")
    long_max: float = opt(4.0, "sized corpus: the other documents are T..long_max·T tokens")
    warmup_tasks: list[str] = opt(factory=list, help="sized corpus: the first data.warmup_docs documents are drawn "
                                  "from these (equal weights), e.g. token_induction: copying forms before retrieval")
    warmup_docs: int = opt(0, "sized corpus: how many documents (from the start of the corpus) data.warmup_tasks supply")
    # data.source = "mixture": one [[data.sources]] table per source (set in the TOML file)
    sources: list[SourceConfig] = opt(factory=list, help="mixture sources: [[data.sources]] tables in the TOML file "
                                      "(path, format, weight, length filters, long-document upsampling)")


@dataclass
class OptimConfig:
    lr: float = opt(3e-3, "peak learning rate (after warmup)")
    min_lr_ratio: float = opt(0.1, "final learning rate = optim.lr * min_lr_ratio")
    warmup_steps: int = opt(20, "steps of linear learning-rate warmup")
    schedule: str = choice("cosine", "wsd", "constant", help="learning-rate schedule after warmup")
    decay_fraction: float = opt(0.2, "wsd: fraction of steps spent decaying at the end")
    weight_decay: float = opt(0.1, "AdamW decoupled weight decay (not applied to norms, biases and SSM parameters)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    eps: float = opt(1e-8, "AdamW epsilon")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 disables clipping)")


@dataclass
class TrainConfig:
    steps: int = opt(300, "optimizer steps to train for (the run's last step)")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step")
    seed: int = opt(0, "seed of model initialisation")
    run_dir: str = opt("runs/tiny", "directory for checkpoints, TensorBoard events, config.toml and metrics.jsonl")
    device: str = choice("auto", "cpu", "cuda", help="device to train on (auto = CUDA when visible, else CPU)")
    dtype: str = choice("auto", "float32", "bfloat16", "float64",
                        help="compute precision (auto: bf16 autocast on GPU, fp32 on CPU; bfloat16 on CPU: "
                             "bf16 FSDP2 parameters only)")
    activation_checkpointing: bool = opt(False, "recompute block activations in the backward pass to save memory")
    checkpoint_policy: str = choice("full", "selective",
                                    help="with activation_checkpointing: recompute whole blocks (full), or keep matmul "
                                         "and attention outputs and recompute the rest (selective)")
    compile: bool = opt(False, "torch.compile each block")
    float8: bool = opt(False, "float8 linears in the blocks via torchao (pip install torchao; CUDA, compute "
                              "capability >= 8.9, parallel.tp=1)")
    kernels: str = choice("auto", "reference", "torch", "triton",
                          help="kernel paths (kernels/dispatch.py): auto picks the fastest for the inputs (on CUDA: "
                               "flash-attn varlen, then our Triton attention); the LONGWEAVE_KERNELS variable wins")
    loss_chunk: int = opt(0, "chunked cross-entropy: tokens per chunk, never all [B, T, vocab] logits at once "
                             "(0 = plain loss)")
    deterministic: bool = opt(True, "use deterministic algorithms (bitwise reproducible on CPU)")
    log_every: int = opt(10, "steps between console lines and TensorBoard scalars")
    time_limit: float = opt(0.0, "minutes; save and exit with the requeue code before this limit (0 = none)")
    threads: int = opt(0, "intra-op threads per process; 0 = auto (train/threads.py)")
    on_nonfinite: str = choice("stop", "skip", help="a non-finite loss or grad norm: stop the run, or skip (drop) "
                               "the step (train/nonfinite.py)")
    max_nonfinite: int = opt(3, "on_nonfinite=skip: stop after this many non-finite steps in a row")


@dataclass
class ParallelConfig:
    dp: int = opt(-1, "data-parallel degree (-1: whatever the world size leaves after tp·pp·sp)")
    tp: int = opt(1, "tensor-parallel degree (attention heads, MLP, Mamba-2 heads, Griffin width)")
    pp: int = opt(1, "pipeline-parallel stages")
    sp: int = opt(1, "sequence-parallel degree (each row split into sp contiguous slices)")
    sp_mode: str = choice("auto", "distattn", "ulysses", "2d", help="global attention under sp: auto (ulysses "
                          "where sp divides the heads per tp rank, else distattn), distattn (K/V travel, any head "
                          "count), ulysses (all-to-all over heads; sp must divide the heads), 2d "
                          "(all-to-all inside groups of sp_head_group ranks, distattn across them)")
    sp_head_group: int = opt(2, "sp_mode='2d': ranks that exchange heads (must divide parallel.sp and the heads)")
    engine: str = choice("ddp", "fsdp", "deepspeed", help="data-parallel engine")
    zero_stage: int = opt(1, "DeepSpeed ZeRO stage when engine = 'deepspeed'")
    pp_schedule: str = choice("1f1b", "gpipe", "interleaved_1f1b", help="pipeline schedule when parallel.pp > 1")
    pp_microbatches: int = opt(2, "micro-batches per step through the pipeline")


@dataclass
class CheckpointConfig:
    every: int = opt(100, "steps between saves (0 = only at the end)")
    keep_last: int = opt(2, "complete checkpoints kept, newest first (0 keeps all)")
    resume: str = opt("none", "none | auto (newest complete checkpoint of train.run_dir) | a checkpoint directory")
    allow_model_change: list[str] = opt(factory=list, help="model keys a resume may change (e.g. rope_theta,window); "
                                        "any other difference from the checkpoint's [model] is refused")
    save_final: bool = opt(True, "save a checkpoint when the run reaches train.steps")


@dataclass
class MetricsConfig:
    tensorboard: bool = opt(True, "write TensorBoard events under <run_dir>/tb")
    state_norms: bool = opt(True, "log recurrent (M, R) state norms per layer to TensorBoard")
    wandb: bool = opt(False, "also log to Weights & Biases, same tags as TensorBoard (pip install 'longweave[wandb]')")
    wandb_project: str = opt("longweave", "Weights & Biases project")
    wandb_mode: str = choice("online", "offline", help="offline: write under <run_dir>/wandb, upload later with wandb sync")


@dataclass
class EvalConfig:
    every: int = opt(0, "steps between periodic evaluations (0 = never)")
    passkey_lengths: list[int] = opt(factory=lambda: [256, 512, 1024], help="context lengths of the passkey grid")
    passkey_depths: int = opt(5, "needle depths per passkey length")
    passkey_trials: int = opt(2, "random keys per (length, depth) cell")
    loss_length: int = opt(0, "loss-by-position length in tokens (0 = loss_multiple × data.seq_len)")
    loss_multiple: int = opt(4, "loss by position out to this multiple of data.seq_len (when eval.loss_length = 0)")
    loss_rows: int = opt(2, "rows averaged for loss by position (0 disables it)")
    seed: int = opt(0, "seed of the evaluation prompts")
    tasks: list[str] = opt(factory=lambda: ["passkey"], help="tasks of the periodic grid (data/tasks names)")
    jrt: bool = opt(False, "also score each task with its context given twice (just read twice)")


@dataclass
class LengthGenConfig:
    """Length-generalisation training interventions for M/R layers (train/length_gen.py)."""
    state_init: str = choice("zero", "noise", "fitted_noise", "passing",
                             help="initial recurrent state of M/R layers in training")
    noise_std: float = opt(0.1, "σ of 'noise' (and the start value of 'fitted_noise')")
    fit_momentum: float = opt(0.9, "running-RMS momentum of 'fitted_noise'")
    tbptt: bool = opt(False, "truncated BPTT over consecutive chunks (row-stream loader)")


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
    if dataclasses.is_dataclass(typ):
        return _convert_table(key, raw, typ, from_cli)
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


def _convert_table(key: str, raw, typ, from_cli: bool):
    """A TOML table (one item of a list of tables such as [[data.sources]]) into its dataclass."""
    if from_cli or not isinstance(raw, dict):
        raise ConfigError(f"config key '{key}' takes [[{key}]] tables in the TOML file, not {raw!r}")
    item, hints = typ(), typing.get_type_hints(typ)
    fields = {f.name: f for f in dataclasses.fields(typ)}
    for k, v in raw.items():
        if k not in fields:
            near = difflib.get_close_matches(k, list(fields), n=1, cutoff=0.0)
            raise ConfigError(f"unknown key '{k}' in a [[{key}]] table (nearest valid key: "
                              f"'{near[0] if near else '?'}')")
        value = _convert(f"{key}.{k}", v, hints[k], from_cli)
        options = fields[k].metadata.get("choices")
        if options and value not in options:
            raise ConfigError(f"config key '{key}.{k}' must be one of {', '.join(options)}; got {value!r}")
        setattr(item, k, value)
    return item


# keys that were merged into another: still accepted, with a warning naming the replacement
RENAMED = {"metrics.log_every": "train.log_every"}


def set_key(cfg: Config, key: str, raw, from_cli: bool = False) -> None:
    if key in RENAMED:
        import warnings

        warnings.warn(f"config key '{key}' is deprecated: '{RENAMED[key]}' sets the console and TensorBoard "
                      f"interval; using the value for '{RENAMED[key]}'", FutureWarning, stacklevel=2)
        key = RENAMED[key]
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
    """Defaults, then the TOML file, then `--section.key=value` / `--section.key value` overrides, then
    those in the LONGWEAVE_OVERRIDES environment variable (the README test shrinks every run with it)."""
    cfg = Config()
    if path is not None:
        from train.assets import recipe_names, resolve_config_path

        path = resolve_config_path(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found; pass an existing TOML file or a recipe name "
                              f"({', '.join(recipe_names())}) to --config") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        for sec, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"unknown config key '{sec}' (nearest valid key: '{nearest(sec, cfg)}')")
            for k, v in values.items():
                set_key(cfg, f"{sec}.{k}", v)
    args = [*(overrides or []), *shlex.split(os.environ.get("LONGWEAVE_OVERRIDES", ""))]
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


def _is_tables(value) -> bool:
    return isinstance(value, list) and bool(value) and all(dataclasses.is_dataclass(x) for x in value)


def dump_toml(cfg: Config) -> str:
    lines = []
    for s in dataclasses.fields(cfg):
        section = getattr(cfg, s.name)
        lines.append(f"[{s.name}]")
        tables = []
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if _is_tables(value):             # lists of tables go after the section's own keys
                tables.append((f.name, value))
            elif not (isinstance(value, list) and not value and _table_list(section, f.name)):
                lines.append(f"{f.name} = {_toml_value(value)}")
        for name, items in tables:
            for item in items:
                lines += ["", f"[[{s.name}.{name}]]"]
                lines += [f"{g.name} = {_toml_value(getattr(item, g.name))}" for g in dataclasses.fields(item)]
        lines.append("")
    return "\n".join(lines)


def _table_list(section, name: str) -> bool:
    """Whether field `name` of `section` is a list of tables (an empty one is written as nothing)."""
    typ = typing.get_type_hints(type(section))[name]
    args = typing.get_args(typ)
    return typing.get_origin(typ) is list and bool(args) and dataclasses.is_dataclass(args[0])


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
