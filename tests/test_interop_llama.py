"""Llama / Mistral / Qwen2 against transformers, with tiny random models built locally.

- logits: packed documents through our model (doc_ids, restarting positions) against
  transformers run on each document alone; float64 with transformers' float32 casts lifted
  (tests/hf_tiny.py) to round-off, and transformers as shipped to float32 tolerance;
- greedy generation identical;
- from-hf -> to-hf gives back bit-identical tensors and a config transformers loads;
- an imported model trained by `python -m train` exports, loads in transformers and generates
  what our model generates;
- bad input: one line, exit 2, nothing written.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("transformers")
from hf_tiny import build_hf, lift_fp32_casts, ours_from_hf, packed, per_document  # noqa: E402

import models  # noqa: E402
from models.interop import family_for  # noqa: E402
from train import convert  # noqa: E402

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "original_max_position_embeddings": 16,
          "low_freq_factor": 1.0, "high_freq_factor": 4.0}
CASES = {
    "llama": ("llama", {}),
    "llama-biases-tied": ("llama", dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    "llama3-rope": ("llama", dict(rope_scaling=LLAMA3, max_position_embeddings=64)),
    "yarn": ("llama", dict(rope_scaling=YARN, max_position_embeddings=64)),
    "linear": ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral-window": ("mistral", dict(sliding_window=5)),
    "qwen2-mixed-window": ("qwen2", dict(use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    "mqa-head-dim": ("llama", dict(num_key_value_heads=1, head_dim=24)),
}
LENGTHS = [7, 13, 4]


def imported(case: str):
    model_type, extra = CASES[case]
    hf, cfg_dict = build_hf(model_type, **extra)
    return (hf, *ours_from_hf(hf, cfg_dict))


@pytest.mark.parametrize("case", CASES)
def test_packed_logits_match(case):
    hf, ours, cfg = imported(case)
    tokens, positions, doc_ids, docs = packed(1, LENGTHS, cfg.vocab_size)
    with torch.no_grad():
        got = ours(tokens, positions, doc_ids)
    shipped = per_document(hf, docs)
    assert (got - shipped).abs().max() < 1e-5          # transformers' float32 RMSNorm/RoPE as they ship
    lift_fp32_casts(hf, cfg)
    err = float((got - per_document(hf, docs)).abs().max())
    assert err < 1e-12, err


def test_dynamic_ntk_matches_beyond_the_original_length():
    """Dynamic NTK uses the call's length: one document longer than max_position_embeddings."""
    hf, cfg_dict = build_hf("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=12)
    family = family_for(cfg_dict)
    cfg = family.config_from_hf(cfg_dict)
    assert (cfg.rope_scaling, cfg.rope_original_max_len) == ("dynamic", 12)
    ours = models.build(cfg).double()
    ours.load_state_dict(family.state_from_hf(hf.state_dict(), cfg))
    tokens = torch.randint(3, cfg.vocab_size, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        shipped = hf(tokens).logits
        got = ours(tokens)
        assert (got - shipped).abs().max() < 1e-5
        lift_fp32_casts(hf, cfg)
        assert (got - hf(tokens).logits).abs().max() < 1e-12


@pytest.mark.parametrize("case", ["llama", "mistral-window", "qwen2-mixed-window", "yarn"])
def test_greedy_generation_matches(case):
    hf, ours, cfg = imported(case)
    lift_fp32_casts(hf, cfg)
    prompt = torch.randint(3, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    theirs = hf.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    mine = ours.generate(prompt, 12)
    assert torch.equal(mine, theirs)


def save_hf(tmp_path, case: str, safe: bool = True):
    hf, _, _ = imported(case)
    src = tmp_path / f"hf-{case}"
    hf.float().save_pretrained(src, safe_serialization=safe)
    return hf, src


def hf_tensors(path):
    from train.hf_files import read_hf_state

    return read_hf_state(path)


@pytest.mark.parametrize("case,safe", [("llama", True), ("qwen2-mixed-window", True), ("mistral-window", False),
                                       ("llama-biases-tied", True)])
def test_import_export_round_trip(tmp_path, case, safe):
    from transformers import AutoModelForCausalLM

    _, src = save_hf(tmp_path, case, safe)
    assert convert.main(["from-hf", str(src), "--output", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "checkpoints" / "step-0000000" / ".metadata").is_file()
    out = tmp_path / "out"
    assert convert.main(["to-hf", str(tmp_path / "run"), "--output", str(out), "--shard-size-mb", "0.05"]) == 0
    assert len(list(out.glob("model-*.safetensors"))) > 1          # sharded, with an index
    original, exported = hf_tensors(src), hf_tensors(out)
    original.pop("lm_head.weight", None) if json.loads((src / "config.json").read_text())["tie_word_embeddings"] else None
    assert original.keys() == exported.keys()
    for name, t in original.items():
        assert torch.equal(t, exported[name]), name
    before = json.loads((src / "config.json").read_text())
    after = json.loads((out / "config.json").read_text())
    assert after["model_type"] == before["model_type"]
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    first = AutoModelForCausalLM.from_pretrained(src, local_files_only=True).eval()
    tokens = torch.randint(3, 97, (1, 20), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, first(tokens).logits)


def run_cli(argv):
    return convert.main(argv)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    _, src = save_hf(tmp_path, "llama")
    cases = {}
    cases["missing-dir"] = tmp_path / "nowhere"
    bad = {"unknown-type": {"model_type": "gpt_bigcode"}, "unsupported": {"hidden_act": "gelu"},
           "rope-type": {"rope_scaling": {"rope_type": "longrope", "factor": 2.0}},
           "shape": {"intermediate_size": 100}}
    for name, patch in bad.items():
        d = tmp_path / name
        shutil.copytree(src, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(patch)
        (d / "config.json").write_text(json.dumps(cfg))
        cases[name] = d
    nofile = tmp_path / "no-weights"
    nofile.mkdir()
    shutil.copy(src / "config.json", nofile / "config.json")
    cases["no-weights"] = nofile
    expect = {"missing-dir": "config.json", "unknown-type": "gpt_bigcode", "unsupported": "hidden_act",
              "rope-type": "longrope", "shape": "shape", "no-weights": "no model.safetensors"}
    for name, d in cases.items():
        out = tmp_path / f"out-{name}"
        capsys.readouterr()
        assert run_cli(["from-hf", str(d), "--output", str(out)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and expect[name] in err, (name, err)
        assert not out.exists(), name
    out = tmp_path / "out-ckpt"
    assert run_cli(["to-hf", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    assert not out.exists()
