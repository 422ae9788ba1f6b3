"""Hugging Face interop: one module per model family, each with pure functions between a
transformers `config.json` dict + state dict and our ModelConfig + state dict, both ways.

    family = family_for(hf_config)                  # by model_type; InteropError if unknown
    cfg = family.config_from_hf(hf_config)          # InteropError naming an unsupported feature
    ours = family.state_from_hf(hf_state, cfg)      # InteropError on a missing or mis-shaped tensor
    theirs = family.state_to_hf(ours, cfg); hf_config = family.config_to_hf(cfg, base)

Nothing here reads or writes files (train/convert.py does) and nothing is approximated: a
feature we lack is refused by name.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from models.interop.common import InteropError

FAMILY_MODULES = ("llama", "mamba2", "recurrent_gemma")


def families() -> dict[str, ModuleType]:
    """model_type -> family module."""
    out: dict[str, ModuleType] = {}
    for name in FAMILY_MODULES:
        mod = importlib.import_module(f"models.interop.{name}")
        for model_type in mod.MODEL_TYPES:
            out[model_type] = mod
    return out


def family_for(hf_config: dict) -> ModuleType:
    model_type = hf_config.get("model_type")
    if model_type is None and "ssm_cfg" in hf_config:
        model_type = "mamba_ssm"          # mamba-ssm's config.json has no model_type
    known = families()
    if model_type not in known:
        raise InteropError(f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(known))}")
    return known[model_type]




def family_for_model(cfg) -> ModuleType:
    """The family whose layer symbols cover cfg's pattern (Llama family for * W -, ...); a family
    whose `claims(cfg)` holds comes first (RecurrentGemma for a W- stack with Gemma features)."""
    from models.interop.common import refuse, symbols

    used = set(symbols(cfg))
    candidates = [mod for mod in dict.fromkeys(families().values()) if used <= set(mod.SYMBOLS)]
    for mod in sorted(candidates, key=lambda m: not (hasattr(m, "claims") and m.claims(cfg))):
        return mod
    refuse(f"pattern {cfg.pattern!r}", "no Hugging Face family maps this mix of layers")


__all__ = ["InteropError", "families", "family_for", "family_for_model"]
