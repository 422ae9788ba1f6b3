"""Preemption in the trainer: a signal on one rank stops every rank at the same step with a
checkpoint and the requeue code; the resumed run continues bit for bit; the time limit stops
early enough to save. Multi-process through the gloo worker pool (no torchrun start-up cost);
tests/test_launch_torchrun.py covers the same through the real launcher and torchrun."""
import json
import os
import signal
import time

import pytest

import train.preemption as preemption
from train.checkpoint import list_checkpoints
from train.config import load_config
from train.loop import train
from train.metrics import read_step_log
from train.preemption import REQUEUE_EXIT_CODE, StopFlag, read_exit_record

QUICK = ["--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1", "--model.pattern=(*-)x1",
         "--data.seq_len=32", "--data.batch_size=2", "--data.max_doc_chars=800", "--train.log_every=1000",
         "--metrics.tensorboard=false", "--checkpoint.every=0"]


def quick(run_dir, *extra):
    return load_config("configs/tiny.toml", [*QUICK, f"--train.run_dir={run_dir}", *extra])


def silent(*_):
    pass


def test_time_limit_keeps_room_for_step_and_save(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: now[0])
    flag = StopFlag(time_limit_minutes=1.0, margin_seconds=3.0)        # deadline 1060
    flag.observe_step(4.0)
    flag.observe_step(10.0)                                              # the slowest recent step counts
    flag.observe_save(8.0)                                               # 10 + 1.5 * 8 + 3 = 25 s needed
    assert flag.seconds_needed() == pytest.approx(25.0)
    now[0] = 1034.9
    assert not flag.local()
    now[0] = 1035.0
    assert flag.local() and flag.reason == "time limit"
    assert StopFlag(time_limit_minutes=10).margin == pytest.approx(30.0)  # default: 5% of the limit ...
    assert StopFlag(time_limit_minutes=600).margin == pytest.approx(60.0)  # ... at most a minute
    assert not StopFlag().local()                                        # no limit, no signal


def test_signal_sets_flag_and_keeps_first_reason():
    flag = StopFlag().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.local() and flag.reason == "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def _run(rank, world, run_dir, steps, resume, signal_rank=-1, signal_at=0, signum=signal.SIGUSR1):
    """Train; rank `signal_rank` signals itself after its `signal_at`-th step (mid-run, one rank only)."""
    cfg = quick(run_dir, f"--train.steps={steps}", f"--checkpoint.resume={resume}")
    original = StopFlag.observe_step

    def observe(self, seconds):
        original(self, seconds)
        if rank == signal_rank and len(self.recent_steps) == signal_at:
            os.kill(os.getpid(), signum)

    StopFlag.observe_step = observe
    try:
        r = train(cfg, log=silent)
    finally:
        StopFlag.observe_step = original
        for s in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
    return r.losses, r.final_step, r.exit_code


@pytest.mark.parametrize("signum,signal_rank", [(signal.SIGUSR1, 1), (signal.SIGTERM, 0)])
def test_signal_on_one_rank_stops_all_and_resume_is_bitwise(pool2, tmp_path, signum, signal_rank):
    full = pool2.run(_run, str(tmp_path / "full"), 8, "none")
    stopped = pool2.run(_run, str(tmp_path / "pre"), 8, "none", signal_rank, 3, signum)
    # the signal lands during step 4 on one rank: both ranks agree on that step, save it, exit 75
    assert [s[1:] for s in stopped] == [(4, REQUEUE_EXIT_CODE)] * 2
    ckpts = list_checkpoints(tmp_path / "pre" / "checkpoints")
    assert [p.name for p in ckpts] == ["step-0000004"]
    assert sorted(f.name for f in ckpts[0].glob("rank-*.pt")) == ["rank-00000.pt", "rank-00001.pt"]
    record = read_exit_record(tmp_path / "pre")
    assert record["exit_code"] == REQUEUE_EXIT_CODE and record["step"] == 4
    assert record["reason"] == signal.Signals(signum).name      # rank 0 records the signal rank 1 got
    resumed = pool2.run(_run, str(tmp_path / "pre"), 8, "auto")
    assert [r[1:] for r in resumed] == [(8, 0)] * 2
    assert stopped[0][0] + resumed[0][0] == full[0][0]           # bitwise: exact float equality
    log = read_step_log(tmp_path / "pre")                          # metrics.jsonl holds the same numbers
    assert [log[s]["loss"] for s in range(1, 9)] == full[0][0]
    assert read_exit_record(tmp_path / "pre")["exit_code"] == 0


def _time_limited(rank, world, run_dir, minutes):
    cfg = quick(run_dir, "--train.steps=100000", f"--train.time_limit={minutes}", "--checkpoint.every=20")
    t0 = time.monotonic()
    r = train(cfg, log=silent)
    for s in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    return r.final_step, r.exit_code, time.monotonic() - t0


def test_time_limit_saves_before_the_deadline(pool2, tmp_path):
    limit_s = 5.0
    results = pool2.run(_time_limited, str(tmp_path), limit_s / 60)
    steps = {r[0] for r in results}
    assert len(steps) == 1 and steps.pop() > 1                    # every rank stopped at the same step
    assert all(r[1] == REQUEUE_EXIT_CODE for r in results)
    assert all(r[2] < limit_s for r in results), results           # save included, inside the limit
    assert list_checkpoints(tmp_path / "checkpoints")[-1].name == f"step-{results[0][0]:07d}"
    assert json.loads((tmp_path / "exit.json").read_text())["reason"] == "time limit"


def _catches(pid: int, signum: int) -> bool:
    from launch.torchrun import catches

    return catches(pid, signum)


def test_sigterm_while_starting_and_a_second_one_still_save_and_exit_75(tmp_path):
    """The handler is in before torch is imported; a second SIGTERM 0.3 s later changes nothing."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "train", "--config", "configs/tiny.toml", *QUICK,
                             f"--train.run_dir={tmp_path}", "--train.steps=50"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not _catches(proc.pid, signal.SIGTERM) and time.monotonic() - t0 < 120:
        time.sleep(0.01)
    maps = open(f"/proc/{proc.pid}/maps").read()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=900)
    assert "libtorch" not in maps                                  # caught while still starting
    assert proc.returncode == REQUEUE_EXIT_CODE, err
    record = read_exit_record(tmp_path)
    assert record["exit_code"] == REQUEUE_EXIT_CODE and record["reason"] == "SIGTERM"
    assert list_checkpoints(tmp_path / "checkpoints")[-1].name == f"step-{record['step']:07d}"


def test_exit_record_is_written_when_the_run_crashes(tmp_path):
    import subprocess
    import sys

    (tmp_path / "exit.json").write_text(json.dumps({"exit_code": 0, "step": 9, "reason": "finished"}))
    crash = ("import sys, train.loop as l\n"
             "def boom(*a, **k): raise RuntimeError('disk controller on fire')\n"
             "l.train_step = boom\n"
             "from train.__main__ import main\nsys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", crash, "--config", "configs/tiny.toml", *QUICK,
                        f"--train.run_dir={tmp_path}", "--train.steps=3"], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "disk controller on fire" in r.stderr
    record = read_exit_record(tmp_path)
    assert record["exit_code"] == 1 and record["reason"] == "crashed: RuntimeError: disk controller on fire"
