"""README "Continued pretraining": both shell blocks run as written, in order, in a scratch
directory holding what a user brings: the downloaded models (here tiny random transformers
models, each with a tiny tokenizer trained here, at the README's paths) and a corpus/.
Sizes shrink through LONGWEAVE_OVERRIDES as in tests/test_readme.py (short rows, 2 steps, no
curriculum, and for the 8-process Llama run sp = 2 x dp = 4 instead of sp = 8). The exports
then load in transformers and give the logits of the trained checkpoint."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from hf_tiny import build_hf  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OVERRIDES = ("--data.seq_len=64 --data.batch_size=2 --data.curriculum=none --train.steps=2 --train.log_every=1 "
             "--checkpoint.every=0 --eval.every=0 --train.activation_checkpointing=false --metrics.tensorboard=false")
LLAMA_RUN = "--parallel.sp=2 --parallel.engine=ddp"


def section_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Continued pretraining\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) == 2
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]


def tokenizer_into(directory: Path) -> None:
    import tokenizers
    import transformers

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50, trainer)
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>").save_pretrained(directory)


def user_files(cwd: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    shutil.copytree(REPO / "configs", cwd / "configs")
    (cwd / "corpus").mkdir()
    for i in range(4):
        (cwd / "corpus" / f"doc{i}.txt").write_text(f"Document {i}: " + "the quick brown fox jumps over the lazy dog. "
                                                    * (30 + 10 * i))
    llama, _ = build_hf("llama", vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0)
    llama.float().save_pretrained(cwd / "hf" / "Llama-3.2-1B")
    torch.manual_seed(0)
    mamba = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "mamba2", vocab_size=320, hidden_size=32, num_hidden_layers=2, state_size=8, head_dim=8, num_heads=8,
        expand=2, n_groups=1, chunk_size=16))
    mamba.save_pretrained(cwd / "hf" / "mamba2-370m")
    for d in ("Llama-3.2-1B", "mamba2-370m"):
        tokenizer_into(cwd / "hf" / d)


def test_continued_pretraining_commands_run_as_written(tmp_path):
    from transformers import AutoModelForCausalLM

    import models
    from train.checkpoint import list_checkpoints, load_model_weights
    from train.config import Config
    from train.convert import apply_toml

    cwd = tmp_path / "work"
    cwd.mkdir()
    user_files(cwd)
    base = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in section_commands():
        extra = LLAMA_RUN if command.startswith("torchrun") else ""
        env = {**base, "LONGWEAVE_OVERRIDES": f"{OVERRIDES} {extra}"}
        out = subprocess.run(["bash", "-c", f"set -euo pipefail\n{command}"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{command}\n{out.stdout[-1500:]}\n{out.stderr[-2500:]}"
    for run, export in (("llama3.2-1b-64k", "llama3.2-1b-64k"), ("mamba2-370m-64k", "mamba2-370m-64k")):
        ckpt = list_checkpoints(cwd / "runs" / run / "checkpoints")[-1]
        assert ckpt.name == "step-0000002"
        cfg = Config()
        apply_toml(cfg, ckpt / "config.toml")
        ours = models.build(cfg.model).eval()
        load_model_weights(ckpt, ours)
        hf = AutoModelForCausalLM.from_pretrained(cwd / "exports" / export, local_files_only=True,
                                                  torch_dtype=torch.float32).eval()
        tokens = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            err = float((hf(tokens).logits.float() - ours(tokens)).abs().max())
        tol = 5e-2 if run.startswith("llama") else 1e-4      # Llama export is bfloat16 as the README says
        assert err < tol, (run, err)
    assert (cwd / "exports" / "llama3.2-1b-64k" / "tokenizer.json").is_file()
