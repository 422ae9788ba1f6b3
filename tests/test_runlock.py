"""Run-directory lock (issue 20): a second live run on one run_dir exits 2 with one line naming the
holder; a lock left by a dead process is taken over with a warning; an unwritable run_dir is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from train import runlock

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
HOLD = "import sys, time; from train.runlock import acquire; acquire(sys.argv[1]); print('held', flush=True); time.sleep(3600)"


@pytest.fixture
def holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_second_live_run_exits_2_naming_the_holder(tmp_path, holder):
    with pytest.raises(runlock.RunLockError, match=rf"in use by another run \(pid {holder.pid} on "):
        runlock.acquire(tmp_path)
    r = subprocess.run([sys.executable, "-m", "train", "--config", "configs/tiny.toml", f"--train.run_dir={tmp_path}",
                        "--train.steps=2", "--model.d_model=16", "--data.seq_len=16"],
                       capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and f"pid {holder.pid}" in r.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "exit.json").exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / runlock.LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    path = runlock.acquire(tmp_path)
    try:
        assert "taking over the stale lock" in capsys.readouterr().err
        assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        runlock.release(path)
    assert path.read_text() == ""                       # released: the next run finds no holder
    runlock.release(runlock.acquire(tmp_path))
    assert "stale" not in capsys.readouterr().err


READ_ONLY = textwrap.dedent("""
    import errno, os, sys
    real = os.open
    def ro(path, *a, **k):
        if str(path).startswith(sys.argv[1]):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *a, **k)
    os.open = ro
    from train.__main__ import main
    sys.exit(main(sys.argv[2:]))
""")


def test_read_only_run_dir_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    r = subprocess.run([sys.executable, "-c", READ_ONLY, str(run), "--config", "configs/tiny.toml",
                        f"--train.run_dir={run}", "--train.steps=2"], capture_output=True, text=True, timeout=900,
                       env=ENV)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: cannot write to the run directory {run}: "
                                             f"{os.strerror(30)}; pick a writable train.run_dir"]
