"""benchmarks/state_collapse.py: its measures on hand-made inputs, and --quick running every variant
(trained and training-free) and path (table, plots, merge); the quick run's figures mean nothing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import state_collapse  # noqa: E402


def test_doubling_lengths():
    assert state_collapse.doubling(32, 64) == [32, 64, 128, 256, 512, 1024, 2048]
    assert state_collapse.doubling(256, 1) == [256]
    assert state_collapse.doubling(10, 12) == [10, 20, 40, 80, 120]


def test_loss_ratio_is_the_last_range_over_the_best():
    assert state_collapse.loss_ratio({"0-1T": 1.0, "1-2T": 0.3, "2-4T": 0.45}) == pytest.approx(1.5)
    assert state_collapse.loss_ratio({"0-1T": 1.0, "1-2T": 0.4, "2-4T": 0.3}) == pytest.approx(1.0)


def test_merge_tags_rows_of_runs_without_regime_fields_and_keeps_by_label(tmp_path):
    old = {"args": {"seq_len": 256, "steps": 300, "lr": 0.003}, "wall_seconds": 5.0,
           "rows": [{"arch": "hawk", "variant": v, "ranges": {"0-1T": 1.0, "1-2T": 0.5, "2-4T": 0.6},
                     "passkey": {"256": 0.0, "1024": 0.25}} for v in ("none", "window w=256", "forget λ=2")]}
    merged = state_collapse.merge([old], tmp_path, keep="none,window")
    assert [r["variant"] for r in merged["rows"]] == ["none", "window w=256"]
    r = merged["rows"][0]
    assert r["regime"] == {"T": 256, "d_state": 64, "heads": 4, "steps": 300, "lr": 0.003}
    assert r["loss_ratio"] == pytest.approx(1.2) and r["passkey_lengths"] == [256, 1024]
    assert json.loads((tmp_path / "results.json").read_text())["rows"][1]["variant"] == "window w=256"


def test_bad_variant_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        state_collapse.parse_args(["--variants", "none,bogus"])
    assert e.value.code == 2 and "unknown variant(s) bogus" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_runs_every_variant_and_merges(tmp_path, capsys):
    out = tmp_path / "out"
    assert state_collapse.main(["--quick", "--archs", "mamba2,hawk", "--threads", "1", "--out", str(out),
                                "--runs", str(tmp_path / "runs")]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["rows"]) == 2 * 8
    for r in res["rows"]:
        assert r["norm_lengths"] == [32, 64, 128, 256] and len(r["state_norms"]) == 4
        assert all(n > 0 for n in r["state_norms"] + r["newline_norms"]) and r["loss_ratio"] > 0
        assert list(r["passkey"]) == ["256"] and 0.0 <= r["passkey"]["256"] <= 1.0
        assert r["regime"]["T"] == 32
    labels = [r["variant"] for r in res["rows"][:8]]
    assert labels[0] == "none" and labels[-3:] == ["state passing (train)", "noise init (train)", "TBPTT (train)"]
    # the window variant reads only the last T tokens: its state cannot keep growing with the length read
    window = next(r for r in res["rows"] if r["variant"].startswith("window"))
    assert window["state_norm_growth"] < 2.0
    for arch in ("mamba2", "hawk"):
        for png in (f"loss_by_position_{arch}.png", f"state_norm_{arch}.png", f"passkey_{arch}_base.png"):
            assert (out / png).is_file()
    printed = capsys.readouterr().out
    assert "| arch | T | d_state | heads | steps | lr | variant | loss 0-1T |" in printed
    assert state_collapse.main(["--merge", str(out / "results.json"), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "state_norm_hawk.png").is_file()
