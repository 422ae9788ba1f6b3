"""Mamba-2 against transformers' Mamba2ForCausalLM (tiny random models built locally) and
mamba-ssm's config.json + pytorch_model.bin layout.

transformers runs the Mamba-2 scan and gated norm in float32 even in a float64 model, so the
logits are compared at float32 tolerance (measured ≈ 6e-7 on logits of size ≈ 2); packed
documents (our doc_ids) against transformers run on each document alone.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("transformers")
from hf_tiny import packed, per_document  # noqa: E402

import models  # noqa: E402
from models.interop import InteropError, family_for  # noqa: E402
from train import convert  # noqa: E402

BASE = dict(model_type="mamba2", vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=8, head_dim=8,
            num_heads=8, expand=2, n_groups=2, conv_kernel=4, chunk_size=8, layer_norm_epsilon=1e-5,
            tie_word_embeddings=False, residual_in_fp32=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build(**extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = {**BASE, **extra}
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg_dict)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.add_(0.2 * torch.randn_like(p))
    family = family_for(cfg_dict)
    cfg = family.config_from_hf(cfg_dict)
    ours = models.build(cfg).eval()
    ours.load_state_dict(family.state_from_hf(hf.state_dict(), cfg))
    return hf, ours, cfg


@pytest.mark.parametrize("extra", [{}, dict(time_step_limit=[0.02, 0.05]), dict(tie_word_embeddings=True, n_groups=1)],
                         ids=["plain", "dt-limit", "tied-1-group"])
def test_packed_logits_match(extra):
    hf, ours, cfg = build(**extra)
    tokens, positions, doc_ids, docs = packed(2, [7, 13, 4], cfg.vocab_size)
    with torch.no_grad():
        got, want = ours(tokens, positions, doc_ids), per_document(hf, docs)
    err = float((got - want).abs().max())
    assert err < 1e-5, err
    if extra.get("time_step_limit"):                 # the clamp binds: without it the logits differ
        cfg.dt_limit_min, cfg.dt_limit_max = 0.0, math.inf
        loose = models.build(cfg).eval()
        loose.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert (loose(tokens, positions, doc_ids) - want).abs().max() > 1e-3


def test_greedy_generation_matches():
    hf, ours, cfg = build()
    prompt = torch.randint(3, cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 10), theirs)


def test_split_and_fuse_round_trip():
    hf, _, cfg = build()
    family = family_for(BASE)
    theirs = hf.state_dict()
    back = family.state_to_hf(family.state_from_hf(theirs, cfg), cfg)
    assert back.keys() == theirs.keys()
    assert all(torch.equal(back[k], v) for k, v in theirs.items())


def mamba_ssm_dir(tmp_path, hf):
    """The same model as mamba-ssm saves it: config.json with ssm_cfg and pytorch_model.bin."""
    src = tmp_path / "mamba-ssm"
    src.mkdir()
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    torch.save(state, src / "pytorch_model.bin")
    cfg = {"d_model": 32, "n_layer": 2, "vocab_size": 93, "pad_vocab_size_multiple": 97, "rms_norm": True,
           "residual_in_fp32": True, "fused_add_norm": True, "tie_embeddings": False, "d_intermediate": 0,
           "attn_layer_idx": [], "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "ngroups": 2,
                                             "d_conv": 4, "expand": 2, "chunk_size": 8}}
    (src / "config.json").write_text(json.dumps(cfg))
    return src


def test_mamba_ssm_checkpoint_imports_and_exports(tmp_path):
    from transformers import AutoModelForCausalLM

    hf, ours, cfg = build()
    src = mamba_ssm_dir(tmp_path, hf)
    assert convert.main(["from-hf", str(src), "--output", str(tmp_path / "run")]) == 0
    out = tmp_path / "out"
    assert convert.main(["to-hf", str(tmp_path / "run"), "--output", str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tokens = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(exported(tokens).logits, hf(tokens).logits)


@pytest.mark.parametrize("patch, msg", [({"use_bias": True}, "use_bias"), ({"use_conv_bias": False}, "use_conv_bias"),
                                        ({"num_heads": 4}, "num_heads")])
def test_unsupported_features_are_refused(patch, msg):
    with pytest.raises(InteropError, match=msg):
        family_for(BASE).config_from_hf({**BASE, **patch})


def test_mamba_ssm_unsupported_are_refused():
    cfg = {"d_model": 32, "n_layer": 2, "vocab_size": 97, "ssm_cfg": {"layer": "Mamba2"}}
    with pytest.raises(InteropError, match="attn_layer_idx"):
        family_for(cfg).config_from_hf({**cfg, "attn_layer_idx": [1]})
    with pytest.raises(InteropError, match="Mamba1"):
        family_for(cfg).config_from_hf({**cfg, "ssm_cfg": {}})
