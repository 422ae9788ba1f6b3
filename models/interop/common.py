"""Helpers shared by the family mappings: errors, tensor checks, pattern strings, RoPE configs."""
from __future__ import annotations

import torch

from models.pattern import parse_pattern


class InteropError(ValueError):
    """A checkpoint or config we cannot map exactly (one line: what and how to fix)."""


def refuse(feature: str, detail: str = "") -> None:
    raise InteropError(f"unsupported feature: {feature}{' (' + detail + ')' if detail else ''}; "
                       "longweave refuses it rather than approximating the model")


def need(hf: dict, key: str):
    if hf.get(key) is None:
        raise InteropError(f"config.json has no {key!r}; it is required for model_type {hf.get('model_type')!r}")
    return hf[key]


def validated(cfg):
    """`cfg` (a ModelConfig mapped from config.json) if it is a valid model; otherwise InteropError."""
    try:
        cfg.validate()
    except ValueError as e:
        raise InteropError(f"config.json maps to an invalid model: {e}") from None
    return cfg


def take(state: dict, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """state[name], checked against the shape the config implies."""
    if name not in state:
        raise InteropError(f"tensor {name!r} is missing from the checkpoint")
    t = state[name]
    if tuple(t.shape) != tuple(shape):
        raise InteropError(f"tensor {name!r} has shape {tuple(t.shape)} but config.json implies {tuple(shape)}")
    return t


def check_all_used(state: dict, used: set[str], ignore=()) -> None:
    left = sorted(k for k in state if k not in used and not any(k.endswith(s) for s in ignore))
    if left:
        more = f" and {len(left) - 1} more" if len(left) > 1 else ""
        raise InteropError(f"checkpoint tensor {left[0]!r}{more} has no place in the mapped model "
                           "(a feature longweave does not map)")


def refuse_gemma_features(cfg, family: str) -> None:
    """Families without Gemma's norm offset, embedding scale or logit soft-cap refuse them."""
    for on, feature in ((cfg.norm_unit_offset, "norm_unit_offset=true"), (cfg.embed_scale != 1.0, "embed_scale != 1"),
                        (cfg.logit_soft_cap > 0, "logit_soft_cap > 0")):
        if on:
            refuse(feature, f"{family} models do not have it")


def pattern_string(layers: list[str]) -> str:
    """'(*-)xN' when every layer is the same, else the layers written out."""
    if len(set(layers)) == 1:
        return f"({layers[0]})x{len(layers)}" if len(layers) > 1 else layers[0]
    return "".join(layers)


def symbols(cfg) -> list[str]:
    return parse_pattern(cfg.pattern)


HF_ROPE = {"default": "none", "linear": "linear", "dynamic": "dynamic", "yarn": "yarn", "llama3": "llama3"}


def rope_from_hf(hf: dict, head_dim: int) -> dict:
    """ModelConfig rope_* fields from a config.json (transformers 4 `rope_theta` + `rope_scaling`
    or transformers 5 `rope_parameters`)."""
    params = dict(hf.get("rope_parameters") or {})
    params.update(hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in HF_ROPE:
        refuse(f"rope_type {kind!r}", f"supported: {', '.join(HF_ROPE)}")
    out = {"rope_theta": float(theta), "rope_scaling": HF_ROPE[kind]}
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        out["rope_fraction"] = float(params["partial_rotary_factor"])
    if kind == "default":
        return out
    out["rope_factor"] = float(need(params, "factor"))
    if kind == "dynamic":
        out["rope_original_max_len"] = int(need(hf, "max_position_embeddings"))
    if kind in ("yarn", "llama3"):
        out["rope_original_max_len"] = int(need(params, "original_max_position_embeddings"))
    if kind == "yarn":
        if params.get("mscale") or params.get("mscale_all_dim"):
            refuse("yarn mscale / mscale_all_dim")
        out.update(rope_beta_fast=float(params.get("beta_fast") or 32), rope_beta_slow=float(params.get("beta_slow") or 1),
                   rope_yarn_attn_factor=float(params.get("attention_factor") or 0.0),
                   rope_yarn_truncate=bool(params.get("truncate", True)))
    if kind == "llama3":
        out.update(rope_low_freq_factor=float(need(params, "low_freq_factor")),
                   rope_high_freq_factor=float(need(params, "high_freq_factor")))
    return out


def rope_to_hf(cfg) -> dict:
    """config.json keys `rope_theta` and `rope_scaling` (None when unscaled) for our RoPE; a static
    NTK scaling is written as the base it amounts to (an exact rope_theta change)."""
    kind = cfg.rope_scaling
    if kind == "none":
        return {"rope_theta": cfg.rope_theta, "rope_scaling": None}
    if kind == "ntk":
        from models.rope import rotary_dim

        d = rotary_dim(cfg.attn_head_dim, cfg.rope_fraction)
        return {"rope_theta": cfg.rope_theta * cfg.rope_factor ** (d / (d - 2)), "rope_scaling": None}
    if kind == "truncated":
        refuse("rope_scaling='truncated'", "transformers has no truncated-basis RoPE")
    scaling = {"rope_type": kind, "factor": cfg.rope_factor}
    if kind in ("yarn", "llama3"):
        scaling["original_max_position_embeddings"] = cfg.rope_original_max_len
    if kind == "yarn":
        scaling.update(beta_fast=cfg.rope_beta_fast, beta_slow=cfg.rope_beta_slow, truncate=cfg.rope_yarn_truncate)
        if cfg.rope_yarn_attn_factor:
            scaling["attention_factor"] = cfg.rope_yarn_attn_factor
    if kind == "llama3":
        scaling.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor)
    return {"rope_theta": cfg.rope_theta, "rope_scaling": scaling}
