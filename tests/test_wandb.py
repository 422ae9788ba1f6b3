"""Weights & Biases logging beside TensorBoard: the same tags at the same steps, offline (no network)."""
import pytest

from train.config import ConfigError, load_config
from train.loop import train
from train.wandb_log import FanOut, require_wandb

TINY = ["--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1", "--data.seq_len=32", "--data.batch_size=2",
        "--data.max_doc_chars=800", "--train.steps=3", "--train.log_every=1", "--checkpoint.every=0"]


class Recorder:
    def __init__(self):
        self.calls = []

    def scalars(self, step, values):
        self.calls.append(("scalars", step, sorted(k for k, v in values.items() if v is not None)))

    def text(self, tag, text, step=0):
        self.calls.append(("text", step, [tag]))

    def flush(self):
        pass

    def close(self):
        pass


def test_fan_out_sends_every_call_to_every_logger(monkeypatch, tmp_path):
    a, b = Recorder(), Recorder()
    monkeypatch.setattr("train.loop.build_loggers", lambda run_dir, cfg, is_main: FanOut(a, b))
    train(load_config("configs/tiny.toml", [*TINY, f"--train.run_dir={tmp_path}"]), log=lambda *_: None)
    assert a.calls == b.calls
    assert [c[1] for c in a.calls if c[0] == "scalars" and "train/loss" in c[2]] == [1, 2, 3]


def test_offline_wandb_run_gets_the_tensorboard_tags(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    from train.wandb_log import WandbLogger

    sent = {}   # tag -> steps, as handed to the W&B run (its offline file is a binary log)
    original = WandbLogger.scalars

    def recording(self, step, values):
        for k, v in values.items():
            if v is not None:
                sent.setdefault(k, []).append(step)
        original(self, step, values)

    monkeypatch.setattr(WandbLogger, "scalars", recording)
    cfg = load_config("configs/tiny.toml", [*TINY, f"--train.run_dir={tmp_path}", "--metrics.wandb=true",
                                            "--metrics.wandb_mode=offline"])
    train(cfg, log=lambda *_: None)
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (log,) = run.glob("run-*.wandb")
    assert log.stat().st_size > 0
    assert (tmp_path / "wandb_id").read_text().strip() in run.name
    assert sent["train/loss"] == [1, 2, 3]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tb = set(acc.Tags()["scalars"])
    assert set(sent) == tb
    for tag in ("train/loss", "perf/tokens_per_sec_per_device", "data/seq_len"):
        assert [e.step for e in acc.Scalars(tag)] == sent[tag]


def test_missing_wandb_is_a_one_line_config_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    require_wandb(False)
    with pytest.raises(ConfigError, match=r"pip install 'longweave\[wandb\]'"):
        require_wandb(True)
