"""Training on shards: trains, resumes bitwise (with another num_workers), logs the curriculum's length."""
from __future__ import annotations

import shutil

import pytest

from data.prepare import write_synthetic_shards
from train.__main__ import main as train_main
from train.config import load_config
from train.loop import train

TINY = ["--model.pattern=(*-)x2", "--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1",
        "--data.source=shards", "--data.seq_len=32", "--data.batch_size=2", "--optim.warmup_steps=2",
        "--train.log_every=100", "--metrics.log_every=1", "--checkpoint.keep_last=0"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_shards")
    write_synthetic_shards(d, 40, shard_tokens=2000, seed=1, min_chars=30, max_chars=500)
    return d


def config(shards, run_dir, *extra):
    return load_config(None, [*TINY, f"--data.path={shards}", f"--train.run_dir={run_dir}", *extra])


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_resume_on_shards_is_bitwise_with_warmup_and_other_workers(shards, tmp_path):
    warm = ["--data.curriculum=fixed_linear", "--data.curriculum_min_len=8", "--data.curriculum_steps=4",
            "--data.curriculum_len_step=8"]
    full = train(config(shards, tmp_path / "a", "--train.steps=6", "--checkpoint.every=3", *warm), log=lambda m: None)
    assert len(full.losses) == 6 and full.exit_code == 0
    assert scalars(tmp_path / "a", "data/seq_len") == [8, 16, 24, 32, 32, 32]      # L(t) of fixed_linear
    assert scalars(tmp_path / "a", "data/batch_size") == [2] * 6
    assert scalars(tmp_path / "a", "data/skipped_corrupt") == [0] * 6
    # resume from the step-3 checkpoint of the same run, now with two loader workers
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-0000003", tmp_path / "b" / "checkpoints" / "step-0000003")
    resumed = train(config(shards, tmp_path / "b", "--train.steps=6", "--checkpoint.every=3",
                           "--checkpoint.resume=auto", "--data.num_workers=2", *warm), log=lambda m: None)
    assert resumed.losses == full.losses[3:]                                      # bitwise equal floats


def test_dd_training_logs_bucket_lengths(shards, tmp_path):
    cfg = config(shards, tmp_path / "dd", "--train.steps=4", "--checkpoint.every=0", "--data.packing=dd",
                 "--data.dd_min_len=8", "--data.dd_order=grow_p2")
    result = train(cfg, log=lambda m: None)
    assert len(result.losses) == 4
    lens, rows = scalars(tmp_path / "dd", "data/seq_len"), scalars(tmp_path / "dd", "data/batch_size")
    assert all(int(n) * int(r) == 64 for n, r in zip(lens, rows))                 # tokens per step constant


def test_cli_trains_on_shards_and_reports_bad_data_settings_in_one_line(shards, tmp_path, capsys):
    rc = train_main(["--config", "configs/tiny.toml", *TINY, f"--data.path={shards}",
                     f"--train.run_dir={tmp_path / 'cli'}", "--train.steps=2", "--checkpoint.every=0"])
    assert rc == 0 and (tmp_path / "cli" / "checkpoints" / "step-0000002").is_dir()
    rc = train_main(["--config", "configs/tiny.toml", "--data.source=shards", f"--data.path={tmp_path / 'none'}",
                     f"--train.run_dir={tmp_path / 'bad'}", "--train.steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: data.path=") and "not a directory" in err[-1]


def _dp_run(rank, world, shards, run_dir, *extra):
    cfg = config(shards, run_dir, "--train.steps=3", "--checkpoint.every=0", "--data.batch_size=2", *extra)
    return train(cfg, log=lambda m: None).losses


@pytest.mark.parametrize("packing", ["concat", "dd"])
def test_data_parallel_on_shards_matches_one_process(pool2, shards, tmp_path, packing):
    """dp=2 × 2 rows is the same global batch as 1 × 4 rows: the losses agree (both packings)."""
    extra = [f"--data.packing={packing}", "--data.dd_min_len=8"]
    two = pool2.run(_dp_run, str(shards), str(tmp_path / "dp2"), *extra)
    assert two[0] == two[1]
    one = train(config(shards, tmp_path / "dp1", "--train.steps=3", "--checkpoint.every=0", "--data.batch_size=4",
                       *extra), log=lambda m: None).losses
    assert max(abs(a - b) for a, b in zip(two[0], one)) < 1e-5
