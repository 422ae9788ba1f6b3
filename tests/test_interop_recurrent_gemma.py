"""RecurrentGemma (Griffin) against transformers' RecurrentGemmaForCausalLM, tiny random models
built locally: recurrent and local-attention blocks, GQA and MQA, partial RoPE, biases
everywhere, 1 + w norms, the bfloat16 sqrt(d) embedding scale, the logit soft-cap.

transformers computes its RMSNorm, RoPE angles and RG-LRU accumulation in float32 even in a
float64 model; `lift` runs those at float64 (the shipped model is also compared, at float32
tolerance). Their conv1d does not reset at a document boundary inside a row (their RG-LRU
does, at position 0), so packed rows are compared with transformers run on each document alone.
"""
from __future__ import annotations

import functools
import json
import shutil
import types

import pytest
import torch

pytest.importorskip("transformers")
from hf_tiny import lift_fp32_casts, ours_from_hf, packed, per_document  # noqa: E402

import models  # noqa: E402
from models.interop import InteropError, family_for, family_for_model  # noqa: E402
from train import convert  # noqa: E402
from train.hf_files import read_hf_state  # noqa: E402

BASE = dict(model_type="recurrent_gemma", vocab_size=97, hidden_size=32, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, attention_window_size=5, logits_soft_cap=0.5,
            lru_width=48, tie_word_embeddings=False, bos_token_id=2, eos_token_id=1, pad_token_id=0)
CASES = {"gqa-untied": {},
         "mqa-tied-4-layers": dict(num_key_value_heads=1, num_hidden_layers=4, tie_word_embeddings=True, lru_width=32,
                                   attention_bias=True, block_types=["recurrent", "attention"])}
LENGTHS = [7, 13, 4]


def build_hf(**extra):
    """(transformers model in float64, eval; its config dict): norms and biases randomised."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = {**BASE, **extra}
    config = AutoConfig.for_model(**cfg_dict)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.2)
            elif "bias" in name:
                p.normal_(0, 0.1)
    return hf.double().eval(), cfg_dict


def gemma_norm(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)


def lift(hf, cfg) -> None:
    """transformers' float32 RMSNorm, RoPE and RG-LRU accumulation at the model's float64."""
    lift_fp32_casts(hf, cfg)
    for m in hf.modules():
        name = type(m).__name__
        if name.endswith("RMSNorm"):
            m.forward = types.MethodType(gemma_norm, m)
        elif name.endswith("Rglru"):
            m._rnn_scan = functools.partial(type(m)._rnn_scan, m, acc_dtype=torch.float64)


def imported(case: str):
    hf, cfg_dict = build_hf(**CASES[case])
    return (hf, *ours_from_hf(hf, cfg_dict))


def logits_with(ours, cfg, tokens, positions, doc_ids, **change):
    """Our logits with some config fields changed (same weights)."""
    other = models.build(type(cfg)(**{**vars(cfg), **change})).double().eval()
    other.load_state_dict(ours.state_dict())
    with torch.no_grad():
        return other(tokens, positions, doc_ids)


@pytest.mark.parametrize("case", CASES)
def test_packed_logits_match(case):
    hf, ours, cfg = imported(case)
    assert cfg.pattern == {"gqa-untied": "R-R-W-", "mqa-tied-4-layers": "(R-W-)x2"}[case]
    tokens, positions, doc_ids, docs = packed(1, LENGTHS, cfg.vocab_size)
    with torch.no_grad():
        got = ours(tokens, positions, doc_ids)
    assert (got - per_document(hf, docs)).abs().max() < 1e-5          # as shipped: float32 internals
    lift(hf, cfg)
    want = per_document(hf, docs)
    err = float((got - want).abs().max())
    assert err < 1e-12, err
    assert got.abs().max() > 0.8 * cfg.logit_soft_cap                # the cap binds
    for change in (dict(logit_soft_cap=0.0), dict(lru_scale_first=True), dict(norm_unit_offset=False)):
        assert (logits_with(ours, cfg, tokens, positions, doc_ids, **change) - want).abs().max() > 1e-4, change


@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_matches(case):
    hf, ours, cfg = imported(case)
    lift(hf, cfg)
    prompt = torch.randint(3, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 12), theirs)


def test_state_round_trip_is_identical():
    hf, ours, cfg = imported("gqa-untied")
    family = family_for(BASE)
    theirs = hf.state_dict()
    back = family.state_to_hf(family.state_from_hf(theirs, cfg), cfg)
    assert back.keys() == theirs.keys()
    assert all(torch.equal(back[k], v) for k, v in theirs.items())


def save_hf(tmp_path, case: str):
    hf, _, _ = imported(case)
    src = tmp_path / f"hf-{case}"
    hf.float().save_pretrained(src)
    return src


@pytest.mark.parametrize("case", CASES)
def test_import_export_round_trip(tmp_path, case):
    from transformers import AutoModelForCausalLM

    src = save_hf(tmp_path, case)
    assert convert.main(["from-hf", str(src), "--output", str(tmp_path / "run")]) == 0
    out = tmp_path / "out"
    assert convert.main(["to-hf", str(tmp_path / "run"), "--output", str(out)]) == 0
    original, exported = read_hf_state(src), read_hf_state(out)
    if CASES[case].get("tie_word_embeddings"):
        original.pop("lm_head.weight", None)
    assert original.keys() == exported.keys()
    assert all(torch.equal(t, exported[k]) for k, t in original.items())
    before, after = (json.loads((d / "config.json").read_text()) for d in (src, out))
    for key in ("block_types", "num_hidden_layers", "lru_width", "attention_window_size", "logits_soft_cap",
                "num_key_value_heads", "intermediate_size", "attention_bias", "rope_parameters"):
        assert after[key] == before[key], key
    first = AutoModelForCausalLM.from_pretrained(src, local_files_only=True).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tokens = torch.randint(3, 97, (1, 20), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, first(tokens).logits)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    src = save_hf(tmp_path, "gqa-untied")
    bad = {"hidden_activation": ({"hidden_activation": "gelu"}, "hidden_activation 'gelu'"),
           "block": ({"block_types": ["recurrent", "mlp"]}, "block_types 'mlp'"),
           "rope": ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_type 'linear'"),
           "shape": ({"lru_width": 64}, "shape")}
    for name, (patch, expect) in bad.items():
        d = tmp_path / name
        shutil.copytree(src, d)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **patch}))
        out = tmp_path / f"out-{name}"
        capsys.readouterr()
        assert convert.main(["from-hf", str(d), "--output", str(out)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and expect in err, (name, err)
        assert not out.exists(), name


def test_export_picks_the_family_and_refuses_what_it_cannot_express():
    _, _, cfg = imported("gqa-untied")
    from models.interop import recurrent_gemma

    attention_only = type(cfg)(**{**vars(cfg), "pattern": "(W-)x2"})
    assert family_for_model(attention_only) is recurrent_gemma           # Gemma features: not Llama
    for change, msg in ((dict(norm_unit_offset=False), "norm_unit_offset"), (dict(lru_scale_first=True), "lru_scale_first"),
                        (dict(embed_scale=2.0), "embed_scale"), (dict(pattern="R-*-"), "pattern"),
                        (dict(mlp_type="swiglu"), "mlp_type")):
        with pytest.raises(InteropError, match=msg):
            recurrent_gemma.config_to_hf(type(cfg)(**{**vars(cfg), **change}))
    llama = family_for({"model_type": "llama"})
    with pytest.raises(InteropError, match="logit_soft_cap"):
        llama.config_to_hf(type(cfg)(**{**vars(cfg), "pattern": "(*-)x2", "mlp_type": "swiglu",
                                        "norm_unit_offset": False, "embed_scale": 1.0}))


def test_pipeline_stages_scale_the_embedding_and_cap_the_logits():
    """The Gemma options live in LanguageModel.forward and in the pipeline's first/last stage."""
    from parallel.pipeline.stage import PipelineModel, StageChunk

    _, ours, cfg = imported("gqa-untied")
    tokens, positions, doc_ids, _ = packed(3, LENGTHS, cfg.vocab_size)
    first = PipelineModel(ours, [0, 1, 2], first=True, last=False)
    last = PipelineModel(ours, [3, 4, 5], first=False, last=True)
    chunks = [StageChunk(first, 0, 3, True, False), StageChunk(last, 3, 6, False, True)]
    h = tokens
    with torch.no_grad():
        for chunk in chunks:
            chunk.meta = [(positions, doc_ids)]
            h = chunk(h)
        assert torch.equal(h, ours(tokens, positions, doc_ids))


def test_export_without_biases_writes_exact_zeros():
    """A Griffin trained here without the linear biases exports them as zeros: same function."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.interop import recurrent_gemma

    _, _, cfg = imported("gqa-untied")
    cfg = type(cfg)(**{**vars(cfg), "lru_bias": False, "mlp_bias": False, "attn_out_bias": False})
    torch.manual_seed(5)
    ours = models.build(cfg).double().eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.2)
    hf_cfg = recurrent_gemma.config_to_hf(cfg)
    config = AutoConfig.for_model(**hf_cfg)
    config._attn_implementation = "sdpa"
    hf = AutoModelForCausalLM.from_config(config).double().eval()
    theirs = recurrent_gemma.state_to_hf(ours.state_dict(), cfg)
    assert all(not theirs[k].any() for k in theirs if k.endswith("linear_out.bias") or k.endswith("down_proj.bias"))
    hf.load_state_dict(theirs, strict=True)
    lift(hf, cfg)
    tokens = torch.randint(3, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (hf(tokens).logits - ours(tokens)).abs().max() < 1e-12


def test_transformers_4_config_maps_like_5():
    """google/recurrentgemma-* config.json (transformers 4) keeps rope_theta and
    partial_rotary_factor at the top level; transformers 5 nests them in rope_parameters."""
    family = family_for(BASE)
    v5 = {**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.25}}
    v4 = {**BASE, "rope_theta": 500.0, "partial_rotary_factor": 0.25, "embeddings_scale_by_sqrt_dim": True,
          "final_w_init_variance_scale": 0.67}
    assert family.config_from_hf(v4) == family.config_from_hf(v5)
    assert family.config_from_hf(BASE).rope_fraction == 0.5               # transformers' default for this family
