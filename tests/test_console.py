"""Console (train/console.py): throughput and ETA averaged over the log interval, checkpoint lines,
the end-of-run summary, a progress bar only on a terminal."""
import re
import sys

from train.console import Console, Interval, format_eta

LINE = re.compile(r"^step +(\d+)/(\d+) \| loss ([\d.]+) \| lr \S+ \| grad [\d.]+ \| ([\d,]+) tok/s/dev \| eta (\S+)$")


def test_interval_averages_tokens_over_time_not_the_last_step():
    iv = Interval()
    for seconds in (0.5, 4.0, 0.5, 1.0):   # a slow step in the middle
        iv.add(1000, seconds)
    assert iv.tokens_per_sec() == 4000 / 6.0
    assert iv.eta(10) == 6.0 / 4 * 10
    iv.reset()
    assert iv.tokens_per_sec() == 0.0 and iv.eta(5) == 0.0


def test_step_lines_use_the_interval_since_the_previous_line():
    lines = []
    con = Console(lines.append, total=100, first_step=0, model_parallel=2, is_main=True, dp=3)
    con.step(1, 2000, 1.0, 5.5, 1e-3, 1.2, due=True)
    for i, seconds in enumerate((0.1, 0.9, 0.2, 0.8), start=2):
        con.step(i, 2000, seconds, 4.0, 1e-3, 1.0, due=(i == 5))
    assert len(lines) == 2
    m = LINE.match(lines[1])
    assert m, lines[1]
    assert m.group(1, 2) == ("5", "100")
    assert m.group(4) == "2,000"                 # 8000 tokens / 2.0 s / model_parallel 2
    assert m.group(5) == format_eta(0.5 * 95)   # 2.0 s over 4 steps, 95 steps left
    con.checkpoint("runs/x/checkpoints/step-0000005", 1.234)
    assert lines[-1] == "checkpoint: runs/x/checkpoints/step-0000005 (1.2s)"
    con.summary(5, [5.5, 4.1, 4.0, 3.9, 3.8765], "runs/x", "runs/x/checkpoints/step-0000005", tensorboard=True)
    assert lines[-2].startswith("done: step 5/100 | final loss 3.8765 | 5 steps, 30,000 tokens in ")
    assert lines[-1] == ("run directory runs/x: checkpoint runs/x/checkpoints/step-0000005; "
                         "TensorBoard: tensorboard --logdir runs/x/tb")


def test_other_ranks_print_nothing_and_no_steps_means_no_summary():
    lines = []
    con = Console(lines.append, total=10, first_step=0, model_parallel=1, is_main=False)
    con.step(1, 10, 0.1, 1.0, 1e-3, 1.0, due=True)
    con.checkpoint("x", 1.0)
    con.summary(1, [1.0], "r", "c", True)
    assert lines == []
    main = Console(lines.append, total=10, first_step=10, model_parallel=1, is_main=True)
    main.summary(10, [], "r", None, False)
    assert lines == []


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    con = Console(print, total=4, first_step=0, model_parallel=1, is_main=True)
    assert con.bar is None                        # pytest's stdout is not a TTY
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    con = Console(print, total=4, first_step=1, model_parallel=1, is_main=True)
    assert con.bar is not None and con.bar.n == 1
    con.step(2, 100, 0.1, 2.0, 1e-3, 1.0, due=True)
    assert con.bar.n == 2
    con.summary(2, [2.0], "r", "r/checkpoints/step-0000002", False)
    assert con.bar is None
    out = capsys.readouterr().out
    assert "step      2/4 | loss 2.0000" in out and "done: step 2/4" in out
    assert Console(lambda _: None, 4, 0, 1, True).bar is None   # a custom log never gets a bar


def test_a_run_prints_checkpoints_and_a_summary(tmp_path):
    from train.config import load_config
    from train.loop import train

    lines = []
    cfg = load_config("configs/tiny.toml", [
        "--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1", "--data.seq_len=32", "--data.batch_size=2",
        "--data.max_doc_chars=800", "--train.steps=4", "--train.log_every=2", "--checkpoint.every=2",
        f"--train.run_dir={tmp_path}", "--metrics.tensorboard=false"])
    train(cfg, log=lines.append)
    steps = [m.group(1) for line in lines if (m := LINE.match(line))]
    assert steps == ["1", "2", "4"]
    assert [line.split(" (")[0] for line in lines if line.startswith("checkpoint: ")] == [
        f"checkpoint: {tmp_path}/checkpoints/step-0000002", f"checkpoint: {tmp_path}/checkpoints/step-0000004"]
    assert lines[-2].startswith("done: step 4/4 | final loss ") and "4 steps, 256 tokens in " in lines[-2]
    assert lines[-1] == f"run directory {tmp_path}: checkpoint {tmp_path}/checkpoints/step-0000004"
    lines.clear()
    train(cfg, log=lines.append)   # resumed at the last step: says so, with the checkpoint's real step
    assert any(line.startswith("nothing to do: ") and "is at step 4 and train.steps=4" in line for line in lines)


def test_metrics_log_every_is_a_deprecated_alias_of_train_log_every():
    import pytest

    from train.config import load_config

    with pytest.warns(FutureWarning, match="'metrics.log_every' is deprecated: 'train.log_every'"):
        cfg = load_config("configs/tiny.toml", ["--train.log_every=1000", "--metrics.log_every=3"])
    assert cfg.train.log_every == 3 and not hasattr(cfg.metrics, "log_every")
