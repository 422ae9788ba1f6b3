"""Config: TOML + CLI overrides, typed conversion, one-line errors with the nearest key, exit code 2."""
import subprocess
import sys

import pytest

from train.config import ConfigError, dump_toml, load_config


def test_defaults_and_toml_and_overrides(tmp_path):
    cfg = load_config("configs/tiny.toml", ["--optim.lr=1e-3", "--train.steps", "7", "--model.tie_embeddings=false",
                                             "--eval.passkey_lengths=128,256"])
    assert cfg.optim.lr == 1e-3 and cfg.train.steps == 7
    assert cfg.model.tie_embeddings is False
    assert cfg.eval.passkey_lengths == [128, 256]
    assert cfg.model.pattern == "(*-)x4"          # from the TOML file
    assert cfg.data.seq_len == 256


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("configs/tiny.toml", ["--optim.schedule=wsd", "--train.run_dir=/x y/z"])
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("args, words", [
    (["--optim.lrr=1"], ["optim.lrr", "optim.lr"]),
    (["--trian.steps=1"], ["trian.steps", "train.steps"]),
    (["--optim.lr=fast"], ["optim.lr", "float"]),
    (["--train.steps=1.5"], ["train.steps", "int"]),
    (["--optim.schedule=linear"], ["optim.schedule", "cosine"]),
    (["--model.pattern=(*-)x4Q"], ["model.pattern", "unknown symbol"]),
    (["--train.steps"], ["--train.steps", "VALUE"]),
])
def test_bad_keys_and_values_name_the_key(args, words):
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny.toml", args)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_unknown_key_in_toml_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(p)


def test_cli_exits_2_with_one_line():
    r = subprocess.run([sys.executable, "-m", "train", "--config", "configs/tiny.toml", "--optim.lrr=0.1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "optim.lr" in lines[0] and "optim.lrr" in lines[0]
