"""Tiny random transformers models built locally (no download) and the float64 switch for them.

transformers computes RMSNorm and the RoPE angles in float32 even in a float64 model (and
eager softmax in float32). `lift_fp32_casts` replaces those three forwards of one model
instance by the same formulas at the model's dtype (RoPE frequencies from models.rope, which
test_rope_scaling checks against transformers' own to float32 round-off), so a float64
comparison measures the mapping, not their float32 casts. The unpatched model is compared at
float32 tolerance separately.
"""
from __future__ import annotations

import types

import torch

LLAMA_BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, rope_theta=1000.0, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build_hf(model_type: str, seed: int = 0, **overrides):
    """(model in float64, eval mode, sdpa attention; its config dict as config.json holds it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = {**LLAMA_BASE, **overrides}
    config = AutoConfig.for_model(model_type, **cfg_dict)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():                      # norms at 1 would hide a norm mix-up
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model.double().eval(), {"model_type": model_type, **cfg_dict}


def rms_forward(self, x):
    eps = getattr(self, "variance_epsilon", getattr(self, "eps", 1e-6))
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def lift_fp32_casts(model, our_cfg) -> None:
    """Run one transformers model's RMSNorm and RoPE at its own dtype (see module doc)."""
    from models.rope import attention_factor, inv_frequencies, rope_spec, rotary_dim

    spec = rope_spec(our_cfg)
    dim = rotary_dim(our_cfg.attn_head_dim, our_cfg.rope_fraction)

    def rope_forward(self, x, position_ids, **_):
        seq_len = int(position_ids.max()) + 1 if spec.scaling == "dynamic" else None
        inv = inv_frequencies(spec, dim, seq_len, torch.float64, x.device)
        freqs = position_ids[..., None].to(torch.float64) * inv
        emb = torch.cat([freqs, freqs], dim=-1)
        scale = attention_factor(spec)
        return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)

    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            module.forward = types.MethodType(rms_forward, module)
        elif name.endswith("RotaryEmbedding"):
            module.forward = types.MethodType(rope_forward, module)


def packed(seed: int, lengths: list[int], vocab: int):
    """tokens [1, T], positions and doc_ids for documents of the given lengths, and the documents."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(3, vocab, (n,), generator=g) for n in lengths]
    tokens = torch.cat(docs)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    doc_ids = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lengths)])[None]
    return tokens, positions, doc_ids, docs


def ours_from_hf(hf, cfg_dict: dict):
    """(our float64 model holding `hf`'s weights, its ModelConfig), mapped by the interop family of
    `cfg_dict` (the config.json)."""
    import models
    from models.interop import family_for

    family = family_for(cfg_dict)
    cfg = family.config_from_hf(cfg_dict)
    ours = models.build(cfg).double().eval()
    ours.load_state_dict(family.state_from_hf(hf.state_dict(), cfg))
    return ours, cfg


def per_document(hf, docs) -> torch.Tensor:
    """transformers' logits for each document run alone, concatenated: the packed row's reference."""
    with torch.no_grad():
        return torch.cat([hf(d[None]).logits for d in docs], dim=1)
