"""Trainer: loss falls, bitwise resume (1 process and 2-process DDP), atomic checkpoints,
TensorBoard tags, schedules, activation checkpointing."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import models
from train.checkpoint import Checkpointer
from train.config import OptimConfig, load_config
from train.loop import train
from train.optim import lr_at

QUICK = ["--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1", "--data.seq_len=32",
         "--data.batch_size=4", "--data.max_doc_chars=800", "--train.log_every=1000", "--metrics.log_every=1"]


def quick(run_dir, *extra):
    return load_config("configs/tiny.toml", [*QUICK, f"--train.run_dir={run_dir}", *extra])


def silent(*_):
    pass


def test_loss_falls(tmp_path):
    r = train(quick(tmp_path, "--train.steps=40", "--checkpoint.every=0", "--optim.warmup_steps=5"), log=silent)
    assert len(r.losses) == 40
    assert r.losses[-1] < r.losses[0] - 1.5


def test_resume_is_bitwise_identical(tmp_path):
    full = train(quick(tmp_path / "a", "--train.steps=6", "--checkpoint.every=0"), log=silent).losses
    first = train(quick(tmp_path / "b", "--train.steps=6", "--checkpoint.every=3"), log=silent).losses
    import shutil
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000006")
    second = train(quick(tmp_path / "b", "--train.steps=6", "--checkpoint.every=3", "--checkpoint.resume=auto"),
                   log=silent).losses
    assert len(second) == 3
    assert first[:3] + second == full          # bitwise, not approximately


def _ddp_run(rank, world, run_dir, steps, every, resume):
    cfg = quick(run_dir, f"--train.steps={steps}", f"--checkpoint.every={every}", f"--checkpoint.resume={resume}",
                "--data.batch_size=2")
    return train(cfg, log=silent).losses


def test_ddp_resume_is_bitwise_identical_and_matches_one_process(pool2, tmp_path):
    full = pool2.run(_ddp_run, str(tmp_path / "a"), 6, 0, "none")
    assert full[0] == full[1]
    pool2.run(_ddp_run, str(tmp_path / "b"), 3, 3, "none")
    resumed = pool2.run(_ddp_run, str(tmp_path / "b"), 6, 3, "auto")
    first = full[0][:3]
    assert first + resumed[0] == full[0]
    single = train(quick(tmp_path / "c", "--train.steps=6", "--checkpoint.every=0"), log=silent).losses
    torch.testing.assert_close(torch.tensor(full[0]), torch.tensor(single), rtol=1e-5, atol=0)


CRASH = textwrap.dedent("""
    import os, sys
    import train.checkpoint as ck
    real = os.replace
    def crashing_replace(src, dst):
        if str(dst).endswith("step-0000004"):
            os._exit(9)                      # killed between writing and renaming
        return real(src, dst)
    ck.os.replace = crashing_replace
    from train.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


def test_interrupted_save_leaves_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-c", CRASH, "--config", "configs/tiny.toml", *QUICK, f"--train.run_dir={run}",
            "--train.steps=6", "--checkpoint.every=2", "--checkpoint.keep_last=0", "--checkpoint.resume=none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 9, r.stderr
    ck = Checkpointer(run, keep_last=0, rank=0)
    assert (run / "checkpoints" / ".tmp-step-0000004").is_dir()
    assert ck.resolve("auto").name == "step-0000002"
    # a directory with the final name but no metadata is skipped, never loaded half
    (run / "checkpoints" / "step-0000005").mkdir()
    assert ck.resolve("auto").name == "step-0000002"
    r2 = subprocess.run([sys.executable, "-m", "train", "--config", "configs/tiny.toml", *QUICK,
                         f"--train.run_dir={run}", "--train.steps=6", "--checkpoint.every=2", "--resume", "auto"],
                        capture_output=True, text=True, timeout=300, env=env)
    assert r2.returncode == 0, r2.stderr
    assert "resumed from" in r2.stdout and "step-0000002" in r2.stdout
    assert "skipping incomplete checkpoint" in r2.stderr
    assert ck.resolve("auto").name == "step-0000006"
    assert not (run / "checkpoints" / ".tmp-step-0000004").exists()     # cleaned by the next save


def test_tensorboard_tags_and_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(quick(tmp_path, "--train.steps=3", "--checkpoint.every=0"), log=silent)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_sec_per_device",
                "perf/max_memory_gb", "data/seq_len"):
        assert tag in tags, tags
    assert "perf/mfu" not in tags                  # no MFU on CPU
    assert any("config" in t for t in acc.Tags()["tensors"])
    assert (tmp_path / "config.toml").read_text().startswith("[model]")


def test_checkpoint_contents_and_keep_last(tmp_path):
    train(quick(tmp_path, "--train.steps=6", "--checkpoint.every=2", "--checkpoint.keep_last=2"), log=silent)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000004", "step-0000006"]
    ck = tmp_path / "checkpoints" / "step-0000006"
    for f in (".metadata", "train_state.json", "config.toml", "rank-00000.pt"):
        assert (ck / f).exists(), f


def test_schedules():
    cos = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, schedule="cosine")
    assert lr_at(0, 100, cos) == pytest.approx(0.1)
    assert lr_at(9, 100, cos) == pytest.approx(1.0)
    assert lr_at(99, 100, cos) == pytest.approx(0.1)
    assert 0.1 < lr_at(50, 100, cos) < 1.0
    wsd = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    assert lr_at(50, 100, wsd) == 1.0 and lr_at(79, 100, wsd) == 1.0
    assert lr_at(89, 100, wsd) == pytest.approx(0.5)
    assert lr_at(99, 100, wsd) == pytest.approx(0.0)


def test_activation_checkpointing_same_gradients():
    from parallel.checkpointing import apply_activation_checkpointing

    torch.manual_seed(0)
    cfg = models.ModelConfig(pattern="(*-)x2", vocab_size=40, d_model=32, n_heads=2)
    a = models.build(cfg).double()
    b = models.build(cfg).double()
    b.load_state_dict(a.state_dict())
    apply_activation_checkpointing(b)
    assert set(a.state_dict()) == set(b.state_dict())          # names unchanged (checkpoints stay compatible)
    x = torch.randint(0, 40, (2, 16))
    for m in (a, b):
        m(x).pow(2).mean().backward()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12, msg=n)
