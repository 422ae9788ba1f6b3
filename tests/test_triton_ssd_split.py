"""The split Triton SSD backward (kernels/ssd/triton_bwd_split.py) vs the float64 sequential
reference: y, the final state and every gradient (x, dt, A, B, C, D, initial state, z, dt_bias)
with document resets, groups, initial state, D, z gating, dt_bias + softplus, ragged chunks and
NaN-poisoned outputs; and the switch that picks it. Runs in Triton's CPU interpreter off-GPU."""
from __future__ import annotations

import pytest
import torch

import kernels.dispatch as dispatch
from kernels.ssd import ssd_reference

pytest.importorskip("triton")

from kernels.ssd import triton_bwd, triton_bwd_split  # noqa: E402
from kernels.ssd.triton import ssd_triton  # noqa: E402

NAMES = ("y", "final", "dx", "ddt", "dA", "dB", "dC", "dD", "dh0", "dz", "ddt_bias")


def _inputs(b, t, h, g, p, n, seed):
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(generator=gen, dtype=torch.float64)
    ins = dict(x=torch.randn(b, t, h, p, **f64), dt=torch.randn(b, t, h, **f64) - 0.5,
               A=-torch.rand(h, **f64) - 0.2, B=torch.randn(b, t, g, n, **f64), C=torch.randn(b, t, g, n, **f64),
               D=torch.randn(h, **f64), h0=torch.randn(b, h, p, n, **f64), z=torch.randn(b, t, h, p, **f64),
               dt_bias=torch.randn(h, **f64) * 0.5)
    doc = torch.sort(torch.randint(0, 3, (b, t), generator=gen), 1).values
    weights = torch.randn(b, t, h, p, **f64), torch.randn(b, h, p, n, **f64)
    return ins, doc, weights


def _grads(fn, dtype, ins, doc, weights, **kw):
    def cast(k):   # the initial state is fp32 (the accumulation dtype) unless everything is float64
        return torch.float64 if dtype == torch.float64 else torch.float32 if k == "h0" else dtype

    leaves = {k: v.detach().to(cast(k)).requires_grad_() for k, v in ins.items()}
    v = leaves
    y, final = fn(v["x"], v["dt"], v["A"], v["B"], v["C"], D=v["D"], initial_state=v["h0"], doc_ids=doc,
                  z=v["z"], dt_bias=v["dt_bias"], dt_softplus=True, return_final_state=True, **kw)
    ((y.double() * weights[0]).sum() + (final.double() * weights[1]).sum()).backward()
    order = ("x", "dt", "A", "B", "C", "D", "h0", "z", "dt_bias")
    return [y.detach(), final.detach()] + [leaves[k].grad for k in order]


def _rel(got, ref):
    got, ref = got.double(), ref.double()
    assert torch.isfinite(got).all(), "non-finite result (an element was not written)"
    return ((got - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("b,t,h,g,p,n,chunk,dtype,tol,split_tiles", [
    (2, 37, 4, 2, 8, 16, 16, torch.float32, 1e-5, ""),        # groups (2 heads each), ragged last chunk
    (1, 48, 4, 1, 12, 40, 16, torch.bfloat16, 2e-2, "4,16,4"),  # one group of 4, padded P, bf16, dB/dC in
    (1, 40, 2, 1, 8, 16, 128, torch.float32, 1e-5, ""),         # 3 column blocks of 16 (last ragged); the
])                                                             # split-only 128-token chunk
def test_split_backward_matches_reference(b, t, h, g, p, n, chunk, dtype, tol, split_tiles, monkeypatch):
    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)
    monkeypatch.setenv("LONGWEAVE_SSD_SPLIT_TILES", split_tiles)
    ins, doc, weights = _inputs(b, t, h, g, p, n, seed=t + h)
    ref = _grads(ssd_reference, torch.float64, ins, doc, weights)
    got = _grads(ssd_triton, dtype, ins, doc, weights, chunk_size=chunk, backward="split")
    for name, u, r in zip(NAMES, got, ref):
        assert _rel(u, r) < tol, name


def test_env_switch_picks_the_split_backward(monkeypatch):
    """LONGWEAVE_SSD_BWD=split runs the split kernels (the fused one is never called); the default
    stays fused; an unknown name is a one-line error."""
    ins, doc, weights = _inputs(1, 20, 2, 1, 8, 16, seed=3)
    calls = []
    for mod, name in ((triton_bwd_split, "ssd_backward_split"), (triton_bwd, "ssd_backward")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    monkeypatch.setenv("LONGWEAVE_SSD_BWD", "split")
    got = _grads(ssd_triton, torch.float32, ins, doc, weights, chunk_size=16)
    assert calls == ["ssd_backward_split"]
    ref = _grads(ssd_reference, torch.float64, ins, doc, weights)
    assert max(_rel(u, r) for u, r in zip(got, ref)) < 1e-5
    monkeypatch.delenv("LONGWEAVE_SSD_BWD")
    assert dispatch.ssd_bwd_variant() == "fused"
    monkeypatch.setenv("LONGWEAVE_SSD_BWD", "fastest")
    with pytest.raises(ValueError, match="LONGWEAVE_SSD_BWD='fastest' is not one of fused, split"):
        dispatch.ssd_bwd_variant()


def test_kernel_benchmark_lists_both_variants_without_a_gpu(capsys):
    """benchmarks/kernels.py runs --help and --dry-run on a CPU; the prepared GPU run covers SSD up to
    256K with both backward variants and both scans; a bad section is exit code 2."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"   # its name clashes with kernels/
    spec = importlib.util.spec_from_file_location("benchmark_kernels", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    with pytest.raises(SystemExit) as exit_:
        bench.main(["--help"])
    assert exit_.value.code == 0
    assert bench.main(["--dry-run", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "cases: [4096, 16384, 65536, 131072, 262144]" in out and "fused and split backward" in out
    assert "(1, 262144, 2560)" in out and "tiled and lookback" in out and "profile: SSD T=65536" in out
    assert bench.main(["--only", "ssd,nonsense"]) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("split_tiles", ["", "4,64,4", "4,32,4"])
@pytest.mark.parametrize("chunk", [64, 128])
def test_split_backward_on_gpu(dtype, tol, split_tiles, chunk, monkeypatch):
    """Real sizes on a CUDA device (T=1500, P=64, N=128, groups), vs the float64 chunked path."""
    from kernels.ssd import ssd_chunked

    monkeypatch.setattr(dispatch, "POISON_OUTPUTS", True)
    monkeypatch.setenv("LONGWEAVE_SSD_SPLIT_TILES", split_tiles)
    ins, doc, weights = _inputs(2, 1500, 8, 2, 64, 128, seed=11)
    ins, doc = {k: v.cuda() for k, v in ins.items()}, doc.cuda()
    weights = tuple(w.cuda() for w in weights)
    ref = _grads(ssd_chunked, torch.float64, ins, doc, weights, chunk_size=64)
    got = _grads(ssd_triton, dtype, ins, doc, weights, chunk_size=chunk, backward="split")
    for name, u, r in zip(NAMES, got, ref):
        assert _rel(u, r) < tol, name
