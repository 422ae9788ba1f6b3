"""benchmarks/long_context.py --quick runs every path (recipes, RoPE scalings, mitigations,
interventions, the collapse experiment) and writes its tables; its figures mean nothing."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_mode_runs_every_part(tmp_path, capsys, monkeypatch):
    """Transformer (attention + RoPE path) and Hawk (recurrent path); Mamba-2 runs in part (c)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))   # undone after the test: benchmarks/kernels.py
    import long_context

    scored, evaluate = {}, long_context.evaluate_model

    def spy(model, cfg, out, **kw):
        scored[Path(out).relative_to(tmp_path / "out").as_posix()] = kw["step"]
        return evaluate(model, cfg, out, **kw)

    monkeypatch.setattr(long_context, "evaluate_model", spy)
    assert long_context.main(["--quick", "--stacks", "transformer,hawk", "--out", str(tmp_path / "out"),
                              "--runs", str(tmp_path / "runs")]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["stack"] for r in res["a"]] == ["transformer", "hawk"]
    assert all(0.0 <= r["passkey_1T"] <= 1.0 and 0.0 <= r["multikey_1T"] <= 1.0 for r in res["a"])
    methods = {(r["stack"], r["method"]) for r in res["b"]}
    for m in ("none", "PI (linear)", "NTK-aware", "YaRN", "truncated (Giraffe)"):
        assert ("transformer", m) in methods
    for stack in ("hawk",):
        for m in ("mitigation: forget more λ=2", "mitigation: window w=T", "post-training: noise init",
                  "post-training: state passing", "post-training: TBPTT"):
            assert (stack, m) in methods
    assert res["c"] and all("ranges" in r for r in res["c"])
    out = capsys.readouterr().out
    assert "| stack | steps | train s | passkey 1T | multi-key 1T |" in out and "| transformer | YaRN |" in out
    assert (tmp_path / "out" / "a" / "transformer" / "passkey.png").is_file()
    # each evaluation (its heatmaps' titles) names the step of the checkpoint it scored: 2 for a recipe,
    # 1 after a one-step post-training
    assert {p: scored[p] for p in ("a/transformer", "b/rope-yarn-4T", "b/hawk-tbptt-rows-of-4-t")} == \
        {"a/transformer": 2, "b/rope-yarn-4T": 1, "b/hawk-tbptt-rows-of-4-t": 1}



def bench_module():
    """benchmarks/long_context.py loaded from its file: putting benchmarks/ on sys.path would let its
    kernels.py shadow the kernels package for every test that imports it later."""
    spec = importlib.util.spec_from_file_location("long_context_cli", ROOT / "benchmarks" / "long_context.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unknown_rope_method_or_stack_is_one_line_exit_2(capsys):
    """--rope-methods takes the short names (none, pi, ntk, yarn, truncated), --recurrent-methods theirs; a
    typo names the choices."""
    long_context = bench_module()
    for argv in (["--rope-methods", "ntk,yarm"], ["--stacks", "transformer,gpt"], ["--recurrent-methods", "tbpt"]):
        with pytest.raises(SystemExit) as e:
            long_context.main(argv + ["--parts", "b", "--out", "/nonexistent/never-written"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "unknown stack or method" in err and "ntk, yarn, truncated" in err and "tbptt-rows-of-8-t" in err


def test_rope_method_short_names():
    long_context = bench_module()
    names = list(long_context.rope_methods(256))
    assert [long_context.method_key(n) for n in names] == ["none", "pi", "ntk", "yarn", "truncated"]
