"""`python -m train --help` lists every config key (type, default, meaning, from the dataclasses);
`--print-config` prints the resolved TOML and exits 0."""
import dataclasses
import re

import pytest

from train.__main__ import main
from train.config import Config, ConfigError, all_keys, load_config
from train.config_help import key_rows


def test_every_config_field_has_a_one_line_meaning():
    missing = [k for k, _, _, meaning in key_rows() if not meaning.strip()]
    assert not missing, f"add metadata help to these fields (opt(default, 'meaning')): {missing}"
    assert all("\n" not in meaning for *_, meaning in key_rows())


def test_help_lists_every_key_with_type_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    lines = {m.group(1): line for line in out.splitlines() if (m := re.match(r"\s+(--\w+\.\w+) ", line))}
    assert sorted(lines) == sorted(f"--{k}" for k in all_keys(Config()))
    assert "--optim.lr float" in lines["--optim.lr"] and "peak learning rate" in lines["--optim.lr"]
    assert lines["--optim.lr"].endswith("(default 0.003)")
    assert "{cosine|wsd|constant}" in lines["--optim.schedule"]
    assert "--eval.passkey_lengths list[int]" in lines["--eval.passkey_lengths"]
    assert "(default [256, 512, 1024])" in lines["--eval.passkey_lengths"]
    assert "--print-config" in out


def test_print_config_is_the_resolved_toml(capsys, tmp_path):
    assert main(["--config", "configs/tiny.toml", "--print-config", "--optim.lr=0.0125", "--resume", "auto"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "resolved.toml"
    path.write_text(text)
    again = load_config(path)
    expected = load_config("configs/tiny.toml", ["--optim.lr=0.0125", "--checkpoint.resume=auto"])
    assert dataclasses.asdict(again) == dataclasses.asdict(expected)
    assert not (tmp_path / "runs").exists()


def test_print_config_with_a_bad_key_is_exit_2(capsys):
    assert main(["--print-config", "--optim.lrr=1"]) == 2
    assert "nearest valid key: 'optim.lr'" in capsys.readouterr().err


def test_config_takes_a_recipe_name_and_environment_overrides(monkeypatch, tmp_path):
    by_path = load_config("configs/mamba2-tiny.toml")
    assert dataclasses.asdict(load_config("mamba2-tiny")) == dataclasses.asdict(by_path)
    monkeypatch.chdir(tmp_path)   # outside the checkout the shipped recipes are still found
    assert dataclasses.asdict(load_config("configs/mamba2-tiny.toml")) == dataclasses.asdict(by_path)
    with pytest.raises(ConfigError, match=r"not found; pass an existing TOML file or a recipe name \(.*tiny"):
        load_config("no-such-recipe")
    monkeypatch.setenv("LONGWEAVE_OVERRIDES", "--model.d_model=32 --data.seq_len 48")
    cfg = load_config("tiny", ["--model.d_model=64", "--optim.lr=0.5"])
    assert (cfg.model.d_model, cfg.data.seq_len, cfg.optim.lr) == (32, 48, 0.5)


def test_cuda_without_a_gpu_is_a_one_line_user_error(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert main(["--config", "tiny", "--train.device=cuda", f"--train.run_dir={tmp_path}", "--train.threads=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.device='cuda' but no CUDA device is visible") and err.count("\n") == 1
