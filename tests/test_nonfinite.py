"""Non-finite steps (issue 20): a NaN loss or gradient norm is caught before the optimizer step on
every rank at the same step; stop ends the run with no checkpoint of the bad step, skip drops the
update, counts it, and stops after train.max_nonfinite in a row."""
from __future__ import annotations

import pytest

import train.loop as loop
from train.checkpoint import list_checkpoints
from train.config import load_config
from train.nonfinite import NonFiniteError

QUICK = ["--model.d_model=16", "--model.n_heads=2", "--model.n_kv_heads=1", "--model.pattern=(*-)x1",
         "--data.seq_len=16", "--data.batch_size=2", "--data.max_doc_chars=400", "--train.log_every=1000",
         "--metrics.log_every=1", "--checkpoint.resume=none"]


def quick(run_dir, *extra):
    return load_config("configs/tiny.toml", [*QUICK, f"--train.run_dir={run_dir}", *extra])


def silent(*_):
    pass


def poison(monkeypatch, bad_steps: set[int], what: str = "grad", rank_only: int | None = None):
    """Make the grad norm (or this rank's loss) NaN at the given 1-based steps; count optimizer updates."""
    import os

    from parallel.engine import Engine

    rank = int(os.environ.get("RANK", "0"))
    seen = {"step": 0, "updates": 0}
    real_fb, real_clip, real_step = Engine.forward_backward, Engine.clip, Engine.step

    def hit() -> bool:
        return seen["step"] in bad_steps and (rank_only is None or rank == rank_only)

    def fb(self, *a, **k):
        seen["step"] += 1
        out = real_fb(self, *a, **k)
        return out * float("nan") if what == "loss" and hit() else out

    def clip(self, *a, **k):
        norm = real_clip(self, *a, **k)
        return norm * float("nan") if what == "grad" and hit() else norm

    def step(self):
        seen["updates"] += 1
        return real_step(self)

    monkeypatch.setattr(Engine, "forward_backward", fb)
    monkeypatch.setattr(Engine, "clip", clip)
    monkeypatch.setattr(Engine, "step", step)
    return seen


def test_stop_raises_before_the_update_and_saves_nothing_bad(tmp_path, monkeypatch):
    seen = poison(monkeypatch, {3})
    with pytest.raises(NonFiniteError, match="not finite at step 3"):
        loop.train(quick(tmp_path, "--train.steps=6", "--checkpoint.every=2", "--checkpoint.keep_last=1"), log=silent)
    assert seen["updates"] == 2
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-0000002"]


def test_skip_drops_the_update_counts_it_and_continues(tmp_path, monkeypatch):
    seen = poison(monkeypatch, {2, 4})
    r = loop.train(quick(tmp_path, "--train.steps=5", "--checkpoint.every=0", "--train.on_nonfinite=skip"),
                   log=silent)
    assert r.final_step == 5 and seen["updates"] == 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    counts = [e.value for e in acc.Scalars("train/nonfinite_skipped")]
    assert counts == [0, 1, 1, 2, 2]


def test_skip_stops_after_max_in_a_row(tmp_path, monkeypatch):
    seen = poison(monkeypatch, {2, 3, 4})
    with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
        loop.train(quick(tmp_path, "--train.steps=6", "--checkpoint.every=1", "--train.on_nonfinite=skip",
                         "--train.max_nonfinite=3"), log=silent)
    assert seen["updates"] == 1
    assert list_checkpoints(tmp_path / "checkpoints")[-1].name == "step-0000003"


def _one_rank_nan(rank, world, run_dir, policy):
    mp = pytest.MonkeyPatch()
    try:
        seen = poison(mp, {3}, what="loss", rank_only=1)
        try:
            r = loop.train(quick(run_dir, "--train.steps=4", "--checkpoint.every=0", f"--train.on_nonfinite={policy}",
                                 "--data.batch_size=1"), log=silent)
            return ("done", r.final_step, seen["updates"])
        except NonFiniteError as e:
            return ("stopped", str(e), seen["updates"])
    finally:
        mp.undo()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_ranks_agree_when_only_one_rank_sees_nan(pool2, tmp_path, policy):
    out = pool2.run(_one_rank_nan, str(tmp_path), policy)
    if policy == "stop":
        assert [o[0] for o in out] == ["stopped"] * 2 and all("step 3" in o[1] for o in out)
        assert [o[2] for o in out] == [2, 2]
    else:
        assert out == [("done", 4, 3)] * 2
