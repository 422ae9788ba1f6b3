"""LanguageModel: embedding -> pre-norm residual sublayers (from the pattern) -> norm -> head.

Each pattern symbol is one residual sublayer `x + f(norm(x))`. The stack is a ModuleList of
`Block`s so that parallel code can cut it on layer boundaries (pipeline stages) or wrap each
block (activation checkpointing, FSDP) without knowing what is inside.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from models.config import ModelConfig
from models.context import MixerContext
from models.mixer_spec import mixer_spec
from models.norm import RMSNorm
from models.pattern import parse_pattern


class Block(nn.Module):
    """Pre-norm residual wrapper around one mixer or MLP."""

    def __init__(self, symbol: str, layer_idx: int, mixer: nn.Module, cfg: ModelConfig):
        super().__init__()
        self.symbol, self.layer_idx = symbol, layer_idx
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_unit_offset)
        self.mixer = mixer

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        return x + self.mixer(self.norm(x), ctx)

    def step(self, x: torch.Tensor, cache: Any):
        """One token x [B, d_model] -> (x + f(norm(x)), next cache); MLPs are stateless."""
        if not hasattr(self.mixer, "step"):
            return x + self.mixer(self.norm(x)), cache
        y, cache = self.mixer.step(self.norm(x), cache)
        return x + y, cache


def make_mixer(symbol: str, cfg: ModelConfig, layer_idx: int) -> nn.Module:
    """The sublayer a pattern symbol names, built by its registered MixerSpec."""
    return mixer_spec(symbol).build(cfg, layer_idx)


def scale_embedding(h: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Embeddings times model.embed_scale (Gemma's sqrt(d_model)); untouched at the default 1."""
    return h if cfg.embed_scale == 1.0 else h * cfg.embed_scale


def soft_cap(logits: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """tanh(logits / c) · c with c = model.logit_soft_cap (Gemma); untouched at the default 0."""
    c = cfg.logit_soft_cap
    return logits if not c else torch.tanh(logits / c) * c


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameter names excluded from weight decay: norms, biases (every 1-D parameter) and the
    leaf names each block's MixerSpec declares (e.g. Mamba-2's A_log, D, dt_bias). Works for a
    LanguageModel and for a pipeline stage of one (blocks keyed by their global index)."""
    names = {name for name, p in model.named_parameters() if p.ndim < 2}
    for key, block in model.layers.named_children():
        leaves = mixer_spec(block.symbol).no_decay
        names |= {f"layers.{key}.{name}" for name, _ in block.named_parameters() if name.rsplit(".", 1)[-1] in leaves}
    return names


class LanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.symbols = parse_pattern(cfg.pattern)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            Block(s, i, make_mixer(s, cfg, i), cfg) for i, s in enumerate(self.symbols)
        )
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_unit_offset)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for matrices; residual output projections scaled by 1/sqrt(#sublayers)
        (GPT-2 / Megatron) so the residual stream's variance does not grow with depth; mixers
        with their own scheme (Mamba-2, RG-LRU) define `reset_parameters` and are called last."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(max(1, len(self.symbols)))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, out_std if getattr(m, "is_residual_out", False) else std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, RMSNorm):
                m.reset_parameters()
        for block in self.layers:
            if hasattr(block.mixer, "reset_parameters"):
                block.mixer.reset_parameters()

    def no_weight_decay_names(self) -> set[str]:
        return no_weight_decay_names(self)

    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return scale_embedding(self.embed(tokens), self.cfg)

    def output_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (the local vocab shard under tensor parallel) from the last block's output."""
        return soft_cap(torch.nn.functional.linear(self.norm(h), self.head_weight()), self.cfg)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        *,
        initial_states: dict[int, Any] | None = None,
        return_states: bool = False,
        sp: Any = None,
    ):
        """Logits [B, T, V] for tokens [B, T]; with return_states also {layer: final state}.

        positions default to 0..T-1 and doc_ids to a single document per row.
        """
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        ctx = MixerContext(positions=positions, doc_ids=doc_ids, initial_states=initial_states,
                           return_states=return_states, sp=sp)
        h = self.embed_tokens(tokens)
        for block in self.layers:
            h = block(h, ctx)
        logits = self.output_logits(h)
        self.last_state_norms = ctx.state_norms
        return (logits, ctx.final_states) if return_states else logits

    def init_cache(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> dict[int, Any]:
        """Empty per-layer caches for `step` (generation from scratch)."""
        dtype = dtype or self.embed.weight.dtype
        return {i: b.mixer.init_cache(batch_size, device, dtype)
                for i, b in enumerate(self.layers) if hasattr(b.mixer, "init_cache")}

    def step(self, tokens: torch.Tensor, caches: dict[int, Any]):
        """One token per row, tokens [B] -> (logits [B, V], next caches). The caches come from
        init_cache or from forward(..., return_states=True) (prefill)."""
        h = self.embed_tokens(tokens)
        new_caches = dict(caches)
        for i, block in enumerate(self.layers):
            h, cache = block.step(h, caches.get(i))
            if cache is not None:
                new_caches[i] = cache
        return self.output_logits(h), new_caches

    def generate(self, prompt: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """Prefill with the parallel path, then step; greedy by default (models/generate.py)."""
        from models.generate import generate

        return generate(self, prompt, max_new_tokens, **kwargs)
