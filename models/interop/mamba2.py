"""Mamba-2: transformers' Mamba2ForCausalLM and mamba-ssm's MambaLMHeadModel (config.json with
`ssm_cfg` + pytorch_model.bin), both ways to transformers' layout.

Their fused tensors are split into our per-component parameters (models/mamba2.py):
    mixer.in_proj.weight rows  [z | x | B | C | dt]  (d_inner, d_inner, g·n, g·n, heads)
    mixer.conv1d.weight [channels, 1, k] and bias rows  [x | B | C]
    layers.i.norm -> layers.i.norm; embeddings (transformers) / embedding (mamba-ssm) -> embed;
    norm_f -> norm; lm_head -> lm_head (absent when tied)
transformers' time_step_limit (mamba-ssm's dt_limit) is our dt_limit_min/max.
"""
from __future__ import annotations

import math

import torch

from models.config import ModelConfig
from models.interop.common import (
    InteropError,
    check_all_used,
    need,
    refuse,
    refuse_gemma_features,
    symbols,
    take,
    validated,
)

MODEL_TYPES = ("mamba2", "mamba_ssm")
SYMBOLS = "M"
PARTS = ("z", "x", "B", "C", "dt")


def from_mamba_ssm(hf: dict) -> dict:
    """mamba-ssm's config.json in transformers' Mamba2Config terms."""
    ssm = dict(hf.get("ssm_cfg") or {})
    if ssm.get("layer", "Mamba1") != "Mamba2":
        refuse(f"mamba-ssm layer {ssm.get('layer', 'Mamba1')!r}", "only Mamba2 layers are mapped")
    if hf.get("attn_layer_idx"):
        refuse("mamba-ssm attn_layer_idx (attention layers)")
    if hf.get("d_intermediate", 0):
        refuse("mamba-ssm d_intermediate > 0 (MLP layers)")
    if not hf.get("rms_norm", True):
        refuse("mamba-ssm rms_norm=false (LayerNorm)")
    for key, bad in (("norm_before_gate", True), ("D_has_hdim", True), ("rmsnorm", False), ("bias", True),
                     ("conv_bias", False)):
        if ssm.get(key, not bad) == bad:
            refuse(f"mamba-ssm ssm_cfg.{key}={bad}")
    d = int(need(hf, "d_model"))
    expand, headdim = ssm.get("expand", 2), ssm.get("headdim", 64)
    if ssm.get("d_ssm") not in (None, expand * d):
        refuse("mamba-ssm ssm_cfg.d_ssm != expand * d_model")
    vocab, multiple = int(need(hf, "vocab_size")), int(hf.get("pad_vocab_size_multiple", 8))
    lo, hi = ssm.get("dt_limit", (0.0, math.inf))
    return {"model_type": "mamba2", "hidden_size": d, "num_hidden_layers": int(need(hf, "n_layer")),
            "vocab_size": (vocab + multiple - 1) // multiple * multiple, "state_size": ssm.get("d_state", 128),
            "head_dim": headdim, "num_heads": expand * d // headdim, "expand": expand, "n_groups": ssm.get("ngroups", 1),
            "conv_kernel": ssm.get("d_conv", 4), "chunk_size": ssm.get("chunk_size", 256),
            "time_step_min": ssm.get("dt_min", 0.001), "time_step_max": ssm.get("dt_max", 0.1),
            "time_step_limit": [lo, hi], "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": hf.get("tie_embeddings", True), "use_bias": False, "use_conv_bias": True,
            "hidden_act": "silu"}


def json_float(v) -> float:
    """A float from config.json; transformers 5 writes infinity as {"__float__": "Infinity"}."""
    return float(v["__float__"]) if isinstance(v, dict) and "__float__" in v else float(v)


def config_from_hf(hf: dict) -> ModelConfig:
    if hf.get("model_type") == "mamba_ssm" or "ssm_cfg" in hf:
        hf = from_mamba_ssm(hf)
    if hf.get("use_bias", False):
        refuse("Mamba-2 use_bias=true (in_proj/out_proj biases)")
    if not hf.get("use_conv_bias", True):
        refuse("Mamba-2 use_conv_bias=false")
    if hf.get("hidden_act", "silu") != "silu":
        refuse(f"Mamba-2 hidden_act {hf['hidden_act']!r}")
    d, expand = int(need(hf, "hidden_size")), hf.get("expand", 2)
    if expand != int(expand):
        refuse(f"Mamba-2 expand={expand} (not an integer)")
    headdim = int(hf.get("head_dim", 64))
    if int(hf.get("num_heads", expand * d // headdim)) * headdim != expand * d:
        raise InteropError("config.json num_heads * head_dim must equal expand * hidden_size")
    lo, hi = (json_float(v) for v in (hf.get("time_step_limit") or (0.0, math.inf)))
    cfg = ModelConfig(
        pattern=f"(M)x{int(need(hf, 'num_hidden_layers'))}", vocab_size=int(need(hf, "vocab_size")), d_model=d,
        d_state=int(hf.get("state_size", 128)), ssm_headdim=headdim, ssm_ngroups=int(hf.get("n_groups", 1)),
        ssm_expand=int(expand), ssm_chunk_size=int(hf.get("chunk_size", 256)), conv_width=int(hf.get("conv_kernel", 4)),
        dt_min=float(hf.get("time_step_min", 0.001)), dt_max=float(hf.get("time_step_max", 0.1)),
        dt_limit_min=float(lo), dt_limit_max=float(hi), norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    return validated(cfg)


def sizes(cfg: ModelConfig) -> dict[str, int]:
    d_inner = cfg.ssm_expand * cfg.d_model
    gn = cfg.ssm_ngroups * cfg.d_state
    return {"z": d_inner, "x": d_inner, "B": gn, "C": gn, "dt": d_inner // cfg.ssm_headdim}


def prefix_of(state: dict) -> str:
    """'embeddings' (transformers) or 'embedding' (mamba-ssm)."""
    return "embedding" if "backbone.embedding.weight" in state else "embeddings"


def state_from_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    d, n = cfg.d_model, sizes(cfg)
    rows, conv_rows = sum(n.values()), n["x"] + n["B"] + n["C"]
    emb = prefix_of(state)
    out = {"embed.weight": take(state, f"backbone.{emb}.weight", (cfg.vocab_size, d)),
           "norm.weight": take(state, "backbone.norm_f.weight", (d,))}
    used = {f"backbone.{emb}.weight", "backbone.norm_f.weight", "lm_head.weight"}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take(state, "lm_head.weight", (cfg.vocab_size, d))
    elif "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], out["embed.weight"]):
        refuse("an lm_head different from the embedding with tied embeddings")
    for i in range(len(symbols(cfg))):
        p, q = f"backbone.layers.{i}.", f"layers.{i}."
        names = {k: p + "mixer." + k for k in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
                                                "norm.weight", "out_proj.weight")}
        used |= set(names.values()) | {p + "norm.weight"}
        out[q + "norm.weight"] = take(state, p + "norm.weight", (d,))
        in_proj = take(state, names["in_proj.weight"], (rows, d))
        for part, t in zip(PARTS, torch.split(in_proj, [n[k] for k in PARTS])):
            out[f"{q}mixer.in_proj_{part}.weight"] = t
        conv_w = take(state, names["conv1d.weight"], (conv_rows, 1, cfg.conv_width))[:, 0]
        conv_b = take(state, names["conv1d.bias"], (conv_rows,))
        for part, w, b in zip("xBC", torch.split(conv_w, [n[k] for k in "xBC"]), torch.split(conv_b, [n[k] for k in "xBC"])):
            out[f"{q}mixer.conv_{part}.weight"], out[f"{q}mixer.conv_{part}.bias"] = w, b
        for k in ("dt_bias", "A_log", "D"):
            out[q + "mixer." + k] = take(state, names[k], (n["dt"],))
        out[q + "mixer.norm.weight"] = take(state, names["norm.weight"], (n["x"],))
        out[q + "mixer.out_proj.weight"] = take(state, names["out_proj.weight"], (d, n["x"]))
    check_all_used(state, used)
    return {k: v.contiguous() for k, v in out.items()}


def state_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {"backbone.embeddings.weight": state["embed.weight"], "backbone.norm_f.weight": state["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(len(symbols(cfg))):
        p, q = f"backbone.layers.{i}.", f"layers.{i}."
        out[p + "norm.weight"] = state[q + "norm.weight"]
        out[p + "mixer.in_proj.weight"] = torch.cat([state[f"{q}mixer.in_proj_{k}.weight"] for k in PARTS])
        out[p + "mixer.conv1d.weight"] = torch.cat([state[f"{q}mixer.conv_{k}.weight"] for k in "xBC"])[:, None]
        out[p + "mixer.conv1d.bias"] = torch.cat([state[f"{q}mixer.conv_{k}.bias"] for k in "xBC"])
        for k in ("dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"):
            out[p + "mixer." + k] = state[q + "mixer." + k]
    return out


def config_to_hf(cfg: ModelConfig, base: dict | None = None) -> dict:
    if set(symbols(cfg)) != {"M"}:
        refuse(f"pattern {cfg.pattern!r}", "Mamba2ForCausalLM has Mamba-2 layers only")
    refuse_gemma_features(cfg, "Mamba-2")
    keep = {k: base[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if base and k in base}
    d_inner = cfg.ssm_expand * cfg.d_model
    hf = {**keep, "model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"], "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.d_model, "num_hidden_layers": len(symbols(cfg)), "state_size": cfg.d_state,
          "head_dim": cfg.ssm_headdim, "num_heads": d_inner // cfg.ssm_headdim, "expand": cfg.ssm_expand,
          "n_groups": cfg.ssm_ngroups, "conv_kernel": cfg.conv_width, "chunk_size": cfg.ssm_chunk_size,
          "time_step_min": cfg.dt_min, "time_step_max": cfg.dt_max, "layer_norm_epsilon": cfg.norm_eps,
          "tie_word_embeddings": cfg.tie_embeddings, "use_bias": False, "use_conv_bias": True, "hidden_act": "silu",
          "residual_in_fp32": True}
    if (cfg.dt_limit_min, cfg.dt_limit_max) != (0.0, math.inf):
        hf["time_step_limit"] = [cfg.dt_limit_min, cfg.dt_limit_max]
    return hf
