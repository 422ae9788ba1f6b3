"""The memory plan of a run: per-rank bytes of every term, before anything is allocated.

`make_plan(cfg, world, gpu)` builds the model on the meta device (shapes only) for its
parameter count and FLOPs, then adds up, per rank:
- weights, gradients and AdamW state (two fp32 moments) under each data-parallel engine:
  ddp keeps all three whole; fsdp (FSDP2) shards all three over dp·sp and gathers two layers at
  a time; DeepSpeed ZeRO-1/2/3 shard the optimizer, then gradients, then weights. Under bf16
  autocast every engine but fsdp also keeps a bf16 copy of the weights it multiplied with;
- activations (train/plan_activations.py) for micro_batch · seq_len / sp tokens, for the layers
  of the first pipeline stage times the micro-batches in flight there, as held at the end of the
  forward pass; with activation checkpointing, each layer's input, plus (term "recompute") what
  one layer recomputed in full needs beyond the loss's tensors, which are freed by then;
  selective checkpointing is planned at its bound, the activations without checkpointing;
- the loss: the logits [tokens, vocab/tp] and the cross-entropy's fp32 log-probabilities and
  gradients at the start of the backward pass (three fp32 copies, plus the bf16 logits under
  autocast); with train.loss_chunk > 0 only one chunk of them is alive.
"fits" compares the total with the device's memory less a reserve for the CUDA context and the
allocator's fragmentation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

GIB = 2**30
# device memory in bytes (vendor GB) and the reserve for the CUDA context, NCCL and fragmentation
GPUS = {"h100": 80e9, "h200": 141e9, "a100": 80e9, "a100-40": 40e9, "l40s": 48e9}
RESERVE = 0.08
ENGINES = ("ddp", "fsdp", "zero1", "zero2", "zero3")


@dataclass
class Plan:
    params: int                     # whole model
    params_per_rank: float          # after tp and pp
    flops_per_token: float          # training FLOPs per token at data.seq_len
    tokens_per_rank: int            # micro_batch · seq_len / sp
    engine: str                     # the configured engine, as a key of `states`
    states: dict[str, tuple[float, float, float]]   # engine -> (weights, grads, optimizer) bytes
    activations: float              # held at the end of the forward pass, as configured
    activations_full: float
    activations_checkpointed: float
    logits: float
    capacity: float | None          # device bytes; None: unknown (CPU)
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def biggest(self) -> str:
        return max(self.terms, key=self.terms.get)

    @property
    def fits(self) -> bool:
        return self.capacity is None or self.total <= self.capacity * (1 - RESERVE)


def meta_model(model_cfg):
    """The model with shapes only (meta device): parameter counts and FLOPs, no memory."""
    import models

    with torch.device("meta"):
        return models.build(model_cfg)


def engine_key(pcfg) -> str:
    return f"zero{pcfg.zero_stage}" if pcfg.engine == "deepspeed" else pcfg.engine


def param_split(model, tp: int, pp: int) -> tuple[float, float]:
    """(parameters on the busiest rank, largest layer's parameters on a rank): matrices and the
    embedding split over tp, vectors (norms, biases, per-head scalars) replicated; layers split
    over pp stages, the embedding on the first stage and an untied head on the last."""
    def per_rank(module) -> float:
        return sum(p.numel() / (tp if p.ndim >= 2 else 1) for p in module.parameters())

    layers = [per_rank(b) for b in model.layers]
    per_stage = -(-len(layers) // pp)
    stages = [sum(layers[i:i + per_stage]) for i in range(0, len(layers), per_stage)]
    stages[0] += per_rank(model.embed)
    stages[-1] += per_rank(model.norm) + (per_rank(model.lm_head) if model.lm_head is not None else 0)
    return max(stages), max(layers)


def engine_states(p: float, layer: float, shard: int, bf16: bool) -> dict[str, tuple[float, float, float]]:
    """(weights, grads, optimizer) bytes per rank for each engine, fp32 master weights and AdamW."""
    copy = 2 * p if bf16 else 0                      # autocast's bf16 weight copies, kept for backward
    gathered = 2 * layer * (2 if bf16 else 4)        # FSDP2: this layer and the prefetched next one
    return {
        "ddp": (4 * p + copy, 4 * p, 8 * p),
        "fsdp": (4 * p / shard + gathered, 4 * p / shard, 8 * p / shard),
        "zero1": (4 * p + copy, 4 * p, 8 * p / shard),
        "zero2": (4 * p + copy, 4 * p / shard, 8 * p / shard),
        "zero3": (4 * p / shard + gathered, 4 * p / shard, 8 * p / shard),
    }


def activation_bytes(cfg, symbols, tokens: int, s: int, tp: int, pp: int, path: str) -> tuple[float, float, float]:
    """Bytes on the first pipeline stage held at the end of the forward pass without and with
    activation checkpointing, and the largest layer (recomputed in full, under checkpointing,
    once the loss's tensors are freed)."""
    from train.plan_activations import layer_bytes

    per_stage = -(-len(symbols) // pp)
    stage = symbols[:per_stage]
    layers = [layer_bytes(sym, cfg.model, s, tp, path) * tokens for sym in stage]
    p = cfg.parallel
    in_flight = 1 if pp == 1 else (p.pp_microbatches if p.pp_schedule == "gpipe" else min(pp, p.pp_microbatches))
    ends = 3 * cfg.model.d_model * s * tokens      # the embedding's output, the final norm's two tensors
    inputs = len(stage) * cfg.model.d_model * s * tokens
    return in_flight * (sum(layers) + ends), in_flight * (inputs + ends), max(layers)


def logits_bytes(tokens: int, vocab: int, s: int, chunk: int) -> float:
    """Loss memory at the start of backward: fp32 log-probabilities, their gradient and the
    logits' gradient (three fp32 [tokens, vocab] tensors), plus the logits in `s` bytes under
    autocast; a chunked loss holds them for `chunk` tokens at a time."""
    rows = min(tokens, chunk) if chunk > 0 else tokens
    return rows * vocab * (12 + (s if s < 4 else 0))


def make_plan(cfg, world: int, gpu: str | None, capacity: float | None = None) -> Plan:
    """The plan for `cfg` at `world` processes on `gpu` (a GPUS key, or "cuda" with its `capacity`
    in bytes), or on CPU (gpu None: the torch kernel paths, no capacity)."""
    from models.flops import flops_per_token
    from models.pattern import parse_pattern
    from parallel.dims import ParallelDims, validate_layout

    dims = ParallelDims.from_config(cfg.parallel, world)
    validate_layout(dims, cfg.model, cfg.parallel, cfg.data.batch_size)
    model = meta_model(cfg.model)
    on_gpu = gpu is not None
    s = {"float64": 8, "float32": 4}.get(cfg.train.dtype, 2 if on_gpu else 4)
    p_rank, layer = param_split(model, dims.tp, dims.pp)
    states = engine_states(p_rank, layer, dims.dp * dims.sp, bf16=s == 2)
    tokens = cfg.data.batch_size // (cfg.parallel.pp_microbatches if dims.pp > 1 else 1) * cfg.data.seq_len // dims.sp
    full, ckpt, layer_peak = activation_bytes(cfg, parse_pattern(cfg.model.pattern), tokens, s, dims.tp, dims.pp,
                                  "fused" if on_gpu else "torch")
    full_ckpt = cfg.train.activation_checkpointing and cfg.train.checkpoint_policy == "full"
    acts = ckpt if full_ckpt else full        # selective checkpointing: bounded by no checkpointing
    logits = logits_bytes(tokens, cfg.model.vocab_size // dims.tp, s, getattr(cfg.train, "loss_chunk", 0))
    key = engine_key(cfg.parallel)
    w, g, o = states[key]
    # the loss's tensors and a recomputed layer are never alive together: the larger one counts
    recompute = max(0.0, layer_peak - logits) if full_ckpt else 0.0
    terms = {"weights": w, "gradients": g, "optimizer": o, "activations": acts, "logits": logits,
             "recompute": recompute}
    return Plan(params=sum(p.numel() for p in model.parameters()), params_per_rank=p_rank,
                flops_per_token=flops_per_token(model, cfg.data.seq_len), tokens_per_rank=tokens, engine=key,
                states=states, activations=acts, activations_full=full, activations_checkpointed=ckpt,
                logits=logits, capacity=capacity or GPUS.get(gpu), terms=terms)
