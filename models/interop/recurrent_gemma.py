"""RecurrentGemma / Griffin (transformers' RecurrentGemmaForCausalLM), both ways.

Their layer i (a temporal block, then an MLP) is our sublayers 2i and 2i+1:
    temporal_pre_norm -> layers.2i.norm     channel_pre_norm -> layers.2i+1.norm
    "recurrent" block -> `R`: linear_x/linear_y/linear_out (with biases), conv_1d [w, 1, k] ->
        conv_weight [w, k]; rg_lru.recurrent_gate_* -> rglru.gate_a, input_gate_* -> rglru.gate_x
        (block-diagonal [H, w/H, w/H] as ours, biases [H, w/H] flattened); recurrent_param = −Λ
        (theirs: log a = −8·r·softplus(param), ours: −c·r·softplus(−Λ) with c = 8)
    "attention" block -> `W` (always local, window = attention_window_size): q/k/v/o_proj,
        o_proj with a bias; GQA/MQA by num_key_value_heads; partial RoPE, split-half pairing
        within the rotated channels, as ours
    mlp_block gate/up/down_proj (biases; width intermediate_size // 2) -> `-` GeGLU
    embed_tokens -> embed (times sqrt(hidden_size) rounded to bfloat16, their `normalizer`);
    final_norm -> norm; lm_head -> lm_head (absent when tied); logits soft-capped.
Their norms store w and apply 1 + w (our norm_unit_offset); a document's first token enters
the RG-LRU unscaled (our lru_scale_first=false). Their conv does not reset at a document
boundary inside a row (ours does, like their RG-LRU): packed rows match theirs run per document.
"""
from __future__ import annotations

import math

import torch

from models.config import ModelConfig
from models.interop.common import InteropError, check_all_used, need, refuse, symbols, take, validated

MODEL_TYPES = ("recurrent_gemma",)
SYMBOLS = "RW-"
BLOCKS = {"recurrent": "R", "attention": "W"}
ACTIVATION = "gelu_pytorch_tanh"
LRU_C = 8.0


def bf16_sqrt(d: int) -> float:
    """sqrt(d) as transformers keeps it: a bfloat16 buffer (exact in any wider dtype)."""
    return float(torch.tensor(math.sqrt(d), dtype=torch.bfloat16))


def claims(cfg: ModelConfig) -> bool:
    """This family, not Llama's, exports cfg: it has R layers or Gemma-only features."""
    return "R" in symbols(cfg) or cfg.norm_unit_offset or cfg.embed_scale != 1.0 or cfg.logit_soft_cap > 0


def temporal_kinds(hf: dict) -> list[str]:
    n = int(need(hf, "num_hidden_layers"))
    blocks = list(hf.get("block_types") or ("recurrent", "recurrent", "attention"))
    unknown = sorted(set(blocks) - set(BLOCKS))
    if unknown:
        refuse(f"block_types {unknown[0]!r}", "RecurrentGemma blocks are 'recurrent' and 'attention'")
    return [BLOCKS[b] for b in (blocks * (n // len(blocks) + 1))[:n]]


def rope_fields(hf: dict) -> dict:
    params = dict(hf.get("rope_parameters") or {})
    params.update(hf.get("rope_scaling") or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        refuse(f"rope_type {kind!r}", "RecurrentGemma has plain RoPE only")
    fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
    return {"rope_theta": float(params.get("rope_theta", hf.get("rope_theta", 10000.0))),
            "rope_fraction": float(fraction)}


def pattern_for(kinds: list[str]) -> str:
    """'(R-R-W-)x4' when the temporal kinds repeat a period exactly, else written out."""
    p = period(kinds)
    unit = "".join(k + "-" for k in kinds[:p])
    if len(kinds) % p or len(kinds) == p:
        return "".join(k + "-" for k in kinds)
    return f"({unit})x{len(kinds) // p}"


def config_from_hf(hf: dict) -> ModelConfig:
    if hf.get("hidden_activation", ACTIVATION) != ACTIVATION:
        refuse(f"hidden_activation {hf['hidden_activation']!r}", f"only {ACTIVATION} is mapped")
    if hf.get("attention_dropout", 0.0):
        refuse("attention_dropout > 0")
    cap = hf.get("logits_soft_cap", 30.0)
    if not cap or cap <= 0:
        refuse(f"logits_soft_cap={cap!r}", "transformers' RecurrentGemma always soft-caps with a positive cap")
    d, heads = int(need(hf, "hidden_size")), int(need(hf, "num_attention_heads"))
    if d % heads:
        raise InteropError(f"config.json hidden_size {d} is not divisible by num_attention_heads {heads}")
    if hf.get("head_dim") not in (None, d // heads):
        raise InteropError(f"config.json head_dim {hf['head_dim']} must be hidden_size // num_attention_heads")
    lru = int(hf.get("lru_width") or d)
    rope = rope_fields(hf)
    if int(d // heads * rope["rope_fraction"]) % 2:
        refuse(f"partial_rotary_factor {rope['rope_fraction']} giving an odd number of rotated channels")
    kinds = temporal_kinds(hf)
    cfg = ModelConfig(
        pattern=pattern_for(kinds), vocab_size=int(need(hf, "vocab_size")),
        d_model=d, n_heads=heads, n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        window=int(hf.get("attention_window_size", 2048)), attn_qkv_bias=bool(hf.get("attention_bias", False)),
        attn_out_bias=True, mlp_type="geglu", mlp_hidden=int(need(hf, "intermediate_size")) // 2, mlp_bias=True,
        conv_width=int(hf.get("conv1d_width", 4)), lru_width=lru, lru_heads=heads, lru_c=LRU_C, lru_bias=True,
        lru_scale_first=False, norm_eps=float(hf.get("rms_norm_eps", 1e-6)), norm_unit_offset=True,
        embed_scale=bf16_sqrt(d), logit_soft_cap=float(cap), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        **rope)
    return validated(cfg)


def block_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    d, w, h = cfg.d_model, cfg.lru_width or cfg.d_model, cfg.n_heads
    hd, kv, ff = cfg.attn_head_dim, cfg.kv_heads, cfg.mlp_hidden_size
    return {"linear_x": (w, d), "linear_y": (w, d), "linear_out": (d, w), "q_proj": (h * hd, d),
            "k_proj": (kv * hd, d), "v_proj": (kv * hd, d), "o_proj": (d, h * hd),
            "gate_proj": (ff, d), "up_proj": (ff, d), "down_proj": (d, ff), "gate": (h, w // h, w // h)}


def linear_names(cfg: ModelConfig) -> list[tuple[str, str, tuple]]:
    """(their name, our name, shape) of every plain-copied tensor: linears, biases, norms."""
    d, s = cfg.d_model, block_shapes(cfg)
    out = [("model.embed_tokens.weight", "embed.weight", (cfg.vocab_size, d)),
           ("model.final_norm.weight", "norm.weight", (d,))]
    if not cfg.tie_embeddings:
        out.append(("lm_head.weight", "lm_head.weight", (cfg.vocab_size, d)))
    layers = symbols(cfg)
    for i in range(len(layers) // 2):
        t, m, p = f"layers.{2 * i}.", f"layers.{2 * i + 1}.", f"model.layers.{i}."
        out += [(p + "temporal_pre_norm.weight", t + "norm.weight", (d,)),
                (p + "channel_pre_norm.weight", m + "norm.weight", (d,))]
        if layers[2 * i] == "R":
            linears = {"linear_x": ("linear_x", True), "linear_y": ("linear_y", True), "linear_out": ("linear_out", True)}
        else:
            qkv = cfg.attn_qkv_bias
            linears = {"q_proj": ("wq", qkv), "k_proj": ("wk", qkv), "v_proj": ("wv", qkv), "o_proj": ("wo", True)}
        for theirs, (ours, bias) in linears.items():
            out.append((f"{p}temporal_block.{theirs}.weight", f"{t}mixer.{ours}.weight", s[theirs]))
            if bias:
                out.append((f"{p}temporal_block.{theirs}.bias", f"{t}mixer.{ours}.bias", s[theirs][:1]))
        for theirs, ours in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "w_down")):
            out.append((f"{p}mlp_block.{theirs}.weight", f"{m}mixer.{ours}.weight", s[theirs]))
            out.append((f"{p}mlp_block.{theirs}.bias", f"{m}mixer.{ours}.bias", s[theirs][:1]))
    return out


def recurrent_layers(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(their temporal_block prefix, our mixer prefix) of each R layer."""
    layers = symbols(cfg)
    return [(f"model.layers.{i}.temporal_block.", f"layers.{2 * i}.mixer.")
            for i in range(len(layers) // 2) if layers[2 * i] == "R"]


def state_from_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    names = linear_names(cfg)
    out = {ours: take(state, theirs, shape) for theirs, ours, shape in names}
    used = {theirs for theirs, _, _ in names} | {"lm_head.weight"}
    if cfg.tie_embeddings and "lm_head.weight" in state and not torch.equal(state["lm_head.weight"],
                                                                             out["embed.weight"]):
        refuse("an lm_head different from the embedding with tie_word_embeddings=true")
    w, k, gate = cfg.lru_width or cfg.d_model, cfg.conv_width, block_shapes(cfg)["gate"]
    for p, q in recurrent_layers(cfg):
        out[q + "conv_weight"] = take(state, p + "conv_1d.weight", (w, 1, k))[:, 0]
        out[q + "conv_bias"] = take(state, p + "conv_1d.bias", (w,))
        out[q + "rglru.a_param"] = -take(state, p + "rg_lru.recurrent_param", (w,))
        for theirs, ours in (("recurrent_gate", "gate_a"), ("input_gate", "gate_x")):
            out[f"{q}rglru.{ours}.weight"] = take(state, f"{p}rg_lru.{theirs}_weight", gate)
            out[f"{q}rglru.{ours}.bias"] = take(state, f"{p}rg_lru.{theirs}_bias", gate[:2]).flatten()
        used |= {p + n for n in ("conv_1d.weight", "conv_1d.bias", "rg_lru.recurrent_param", "rg_lru.input_gate_weight",
                                 "rg_lru.input_gate_bias", "rg_lru.recurrent_gate_weight", "rg_lru.recurrent_gate_bias")}
    check_all_used(state, used, ignore=("rotary_emb.inv_freq", "normalizer"))
    return {key: v.contiguous() for key, v in out.items()}


def with_zero_biases(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Biases that cfg switched off (theirs always exist) as exact zeros."""
    full = dict(state)
    for _, ours, shape in linear_names(cfg):
        if ours not in full and ours.endswith(".bias"):
            full[ours] = state[ours[:-4] + "weight"].new_zeros(shape)
    return full


def state_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    state = with_zero_biases(state, cfg)
    out = {theirs: state[ours] for theirs, ours, _ in linear_names(cfg)}
    h = cfg.n_heads
    for p, q in recurrent_layers(cfg):
        out[p + "conv_1d.weight"] = state[q + "conv_weight"][:, None]
        out[p + "conv_1d.bias"] = state[q + "conv_bias"]
        out[p + "rg_lru.recurrent_param"] = -state[q + "rglru.a_param"]
        for theirs, ours in (("recurrent_gate", "gate_a"), ("input_gate", "gate_x")):
            out[f"{p}rg_lru.{theirs}_weight"] = state[f"{q}rglru.{ours}.weight"]
            out[f"{p}rg_lru.{theirs}_bias"] = state[f"{q}rglru.{ours}.bias"].reshape(h, -1)
    return out


def check_expressible(cfg: ModelConfig) -> list[str]:
    """Their block_types (one period of the temporal layers); InteropError for what they lack."""
    layers = symbols(cfg)
    temporal = layers[0::2]
    if len(layers) % 2 or layers[1::2] != ["-"] * len(temporal) or set(temporal) - {"R", "W"}:
        refuse(f"pattern {cfg.pattern!r}", "RecurrentGemma needs (R or W, -) pairs; its attention is local (W)")
    checks = [(cfg.mlp_type != "geglu", f"mlp_type={cfg.mlp_type!r}", "RecurrentGemma's MLP is GeGLU"),
              (not cfg.norm_unit_offset, "norm_unit_offset=false", "their norms apply 1 + w"),
              (cfg.embed_scale != bf16_sqrt(cfg.d_model), f"embed_scale={cfg.embed_scale}",
               f"transformers scales by {bf16_sqrt(cfg.d_model)} (sqrt(d_model) in bfloat16)"),
              (cfg.logit_soft_cap <= 0, "logit_soft_cap=0", "transformers always soft-caps"),
              (cfg.lru_scale_first, "lru_scale_first=true", "their first token enters the RG-LRU unscaled"),
              (cfg.lru_c != LRU_C, f"lru_c={cfg.lru_c}", "theirs is 8"),
              ((cfg.lru_heads or cfg.n_heads) != cfg.n_heads, "lru_heads != n_heads", "their gates have n_heads blocks"),
              (cfg.head_dim not in (0, cfg.d_model // cfg.n_heads), "head_dim != d_model // n_heads", ""),
              (cfg.rope_scaling != "none", f"rope_scaling={cfg.rope_scaling!r}", "RecurrentGemma has plain RoPE")]
    for bad, feature, detail in checks:
        if bad:
            refuse(feature, detail)
    return ["recurrent" if s == "R" else "attention" for s in temporal[:period(temporal)]]


def period(items: list) -> int:
    """The shortest p with items[i] == items[i % p] for every i (len(items) at worst)."""
    return next(p for p in range(1, len(items) + 1) if all(x == items[i % p] for i, x in enumerate(items)))


def config_to_hf(cfg: ModelConfig, base: dict | None = None) -> dict:
    """config.json for cfg; `base` (the imported model's) keeps token ids and other extra keys."""
    blocks = check_expressible(cfg)
    drop = ("rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor", "layer_types", "head_dim",
            "final_w_init_variance_scale")
    hf = {k: v for k, v in (base or {}).items() if k not in drop}
    hf.update(model_type="recurrent_gemma", architectures=["RecurrentGemmaForCausalLM"], vocab_size=cfg.vocab_size,
              hidden_size=cfg.d_model, intermediate_size=2 * cfg.mlp_hidden_size,
              num_hidden_layers=len(symbols(cfg)) // 2, num_attention_heads=cfg.n_heads,
              num_key_value_heads=cfg.kv_heads, lru_width=cfg.lru_width or cfg.d_model,
              attention_window_size=cfg.window, conv1d_width=cfg.conv_width, logits_soft_cap=cfg.logit_soft_cap,
              rms_norm_eps=cfg.norm_eps, hidden_activation=ACTIVATION, block_types=blocks,
              attention_bias=cfg.attn_qkv_bias, attention_dropout=0.0, tie_word_embeddings=cfg.tie_embeddings,
              rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                               "partial_rotary_factor": cfg.rope_fraction})
    return hf
