"""Llama / Mistral / Qwen2 (transformers' LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).

Layer i of theirs is our sublayers 2i (attention, `*` or `W`) and 2i+1 (MLP `-`):
    model.embed_tokens            -> embed
    layers.i.input_layernorm      -> layers.2i.norm       self_attn.{q,k,v,o}_proj -> layers.2i.mixer.w{q,k,v,o}
    layers.i.post_attention_layernorm -> layers.2i+1.norm mlp.{gate,up,down}_proj -> layers.2i+1.mixer.w_{gate,up,down}
    model.norm -> norm            lm_head -> lm_head (absent when tied)
Their RoPE is the split-half rotation on q/k as stored, like ours, so no permutation is needed.
Mistral's sliding window is our `W` (key j visible to query i iff i − j < window, as theirs);
Qwen2's `layer_types` pick `*` or `W` per layer and its q/k/v carry biases.
"""
from __future__ import annotations

import torch

from models.config import ModelConfig
from models.interop.common import (
    InteropError,
    check_all_used,
    need,
    pattern_string,
    refuse,
    refuse_gemma_features,
    rope_from_hf,
    rope_to_hf,
    symbols,
    take,
    validated,
)

MODEL_TYPES = ("llama", "mistral", "qwen2")
SYMBOLS = "*W-"
ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
ATTN = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo"}
MLP = {"gate_proj": "w_gate", "up_proj": "w_up", "down_proj": "w_down"}


def layer_kinds(hf: dict) -> list[str]:
    """'*' or 'W' for each of their layers."""
    n = int(need(hf, "num_hidden_layers"))
    mt = hf["model_type"]
    if mt == "llama":
        return ["*"] * n
    if mt == "mistral":
        if hf.get("layer_types"):
            refuse("Mistral layer_types (alternating attention)", "convert it as Ministral is not supported")
        return ["W" if hf.get("sliding_window") else "*"] * n
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    kinds = hf.get("layer_types") or ["sliding_attention" if window is not None and i >= hf.get("max_window_layers", 28)
                                      else "full_attention" for i in range(n)]
    if len(kinds) != n or set(kinds) - {"full_attention", "sliding_attention"}:
        raise InteropError(f"config.json layer_types {kinds} must list {n} of full_attention/sliding_attention")
    return ["W" if k == "sliding_attention" else "*" for k in kinds]


def config_from_hf(hf: dict) -> ModelConfig:
    mt = hf["model_type"]
    if hf.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act {hf['hidden_act']!r}", "only silu (SwiGLU) is mapped for this family")
    if (hf.get("pretraining_tp") or 1) != 1:
        refuse("pretraining_tp != 1")
    for key in ("attention_dropout", "mlp_dropout"):
        if hf.get(key):
            refuse(f"{key}={hf[key]}")
    d, heads = int(need(hf, "hidden_size")), int(need(hf, "num_attention_heads"))
    head_dim = int(hf.get("head_dim") or d // heads)
    kinds = layer_kinds(hf)
    attn_bias = bool(hf.get("attention_bias", False))
    cfg = ModelConfig(
        pattern=pattern_string([k + "-" for k in kinds]), vocab_size=int(need(hf, "vocab_size")), d_model=d,
        n_heads=heads, n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=head_dim if head_dim != d // heads else 0,
        window=int(hf.get("sliding_window") or 256), mlp_type="swiglu", mlp_hidden=int(need(hf, "intermediate_size")),
        attn_qkv_bias=attn_bias or mt == "qwen2", attn_out_bias=attn_bias, mlp_bias=bool(hf.get("mlp_bias", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings") or 0),
        **rope_from_hf(hf, head_dim))
    if cfg.rope_fraction != 1.0:
        refuse("partial_rotary_factor", f"model_type {mt!r} rotates whole heads")
    return validated(cfg)


def tensor_names(cfg: ModelConfig) -> list[tuple[str, str, tuple[int, ...]]]:
    """(their name, our name, shape) of every tensor."""
    d, hd, kv, h = cfg.d_model, cfg.attn_head_dim, cfg.kv_heads, cfg.n_heads
    ff = cfg.mlp_hidden_size
    out = [("model.embed_tokens.weight", "embed.weight", (cfg.vocab_size, d)), ("model.norm.weight", "norm.weight", (d,))]
    if not cfg.tie_embeddings:
        out.append(("lm_head.weight", "lm_head.weight", (cfg.vocab_size, d)))
    shapes = {"q_proj": (h * hd, d), "k_proj": (kv * hd, d), "v_proj": (kv * hd, d), "o_proj": (d, h * hd),
              "gate_proj": (ff, d), "up_proj": (ff, d), "down_proj": (d, ff)}
    for i in range(len(symbols(cfg)) // 2):
        a, m = 2 * i, 2 * i + 1
        out.append((f"model.layers.{i}.input_layernorm.weight", f"layers.{a}.norm.weight", (d,)))
        out.append((f"model.layers.{i}.post_attention_layernorm.weight", f"layers.{m}.norm.weight", (d,)))
        for theirs, ours in ATTN.items():
            out.append((f"model.layers.{i}.self_attn.{theirs}.weight", f"layers.{a}.mixer.{ours}.weight", shapes[theirs]))
            if (cfg.attn_out_bias if theirs == "o_proj" else cfg.attn_qkv_bias):
                out.append((f"model.layers.{i}.self_attn.{theirs}.bias", f"layers.{a}.mixer.{ours}.bias",
                            shapes[theirs][:1]))
        for theirs, ours in MLP.items():
            out.append((f"model.layers.{i}.mlp.{theirs}.weight", f"layers.{m}.mixer.{ours}.weight", shapes[theirs]))
            if cfg.mlp_bias:
                out.append((f"model.layers.{i}.mlp.{theirs}.bias", f"layers.{m}.mixer.{ours}.bias", shapes[theirs][:1]))
    return out


def state_from_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    names = tensor_names(cfg)
    if cfg.tie_embeddings and "lm_head.weight" in state:
        if not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
            refuse("an lm_head different from the embedding with tie_word_embeddings=true")
    check_all_used(state, {t for t, _, _ in names} | {"lm_head.weight"}, ignore=("rotary_emb.inv_freq",))
    return {ours: take(state, theirs, shape) for theirs, ours, shape in names}


def state_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return {theirs: take(state, ours, shape) for theirs, ours, shape in tensor_names(cfg)}


def model_type_for(cfg: ModelConfig) -> str:
    """The transformers family that expresses cfg exactly (InteropError if none does)."""
    layers = symbols(cfg)
    attn = layers[0::2]
    if layers[1::2] != ["-"] * (len(layers) // 2) or len(layers) % 2 or set(attn) - {"*", "W"}:
        refuse(f"pattern {cfg.pattern!r}", "Llama-family exports need (attention, MLP) pairs of '*' or 'W' and '-'")
    if cfg.mlp_type != "swiglu":
        refuse(f"mlp_type={cfg.mlp_type!r}", "Llama-family models use SwiGLU")
    refuse_gemma_features(cfg, "Llama-family")
    if cfg.rope_fraction != 1.0:
        refuse("rope_fraction < 1", "Llama-family models rotate whole heads")
    if cfg.attn_qkv_bias and not cfg.attn_out_bias:
        if cfg.mlp_bias:
            refuse("MLP biases with q/k/v-only biases")
        return "qwen2"
    if cfg.attn_out_bias and not cfg.attn_qkv_bias:
        refuse("an attention output bias without q/k/v biases", "no Llama-family model has it")
    if "W" in attn:
        if cfg.attn_qkv_bias or cfg.mlp_bias:
            refuse("biases with sliding-window layers", "no Llama-family model has both")
        if set(attn) == {"W"}:
            return "mistral"
        refuse("a mix of '*' and 'W' layers without q/k/v biases", "only Qwen2 expresses per-layer windows")
    return "llama"


def mistral_without_window(model_type: str | None, cfg: ModelConfig) -> bool:
    return (model_type == "mistral" and set(symbols(cfg)[0::2]) == {"*"} and not cfg.attn_qkv_bias
            and not cfg.mlp_bias)


def config_to_hf(cfg: ModelConfig, base: dict | None = None) -> dict:
    """config.json for cfg; `base` (the imported model's config.json) keeps their extra keys
    (token ids, dtype, ...) and its model_type when that family still expresses cfg."""
    mt = model_type_for(cfg)
    if base and mistral_without_window(base.get("model_type"), cfg):
        mt = "mistral"                      # a Mistral imported with sliding_window=null stays one
    hf = {k: v for k, v in (base or {}).items() if k not in ("rope_parameters", "rope_scaling", "layer_types")}
    attn = symbols(cfg)[0::2]
    hf.update(model_type=mt, architectures=[ARCH[mt]], vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
              intermediate_size=cfg.mlp_hidden_size, num_hidden_layers=len(attn), num_attention_heads=cfg.n_heads,
              num_key_value_heads=cfg.kv_heads, head_dim=cfg.attn_head_dim, hidden_act="silu",
              rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, attention_dropout=0.0,
              max_position_embeddings=cfg.max_position_embeddings or max(cfg.rope_original_max_len, 2048),
              **rope_to_hf(cfg))
    if cfg.rope_scaling == "dynamic":
        hf["max_position_embeddings"] = cfg.rope_original_max_len
    if mt == "llama":
        hf.update(attention_bias=cfg.attn_qkv_bias, mlp_bias=cfg.mlp_bias, pretraining_tp=1)
    if mt == "mistral":
        hf["sliding_window"] = cfg.window if "W" in attn else None
    if mt == "qwen2":
        windowed = "W" in attn
        hf.update(use_sliding_window=windowed, sliding_window=cfg.window if windowed else None,
                  max_window_layers=len(attn),
                  layer_types=["sliding_attention" if a == "W" else "full_attention" for a in attn])
    return hf
