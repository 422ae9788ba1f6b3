"""parallel.sp_mode (distattn | ulysses | 2d) against single-process attention: outputs and
gradients in float64 at P = 2 and 4 with packed documents, GQA/MQA (K/V expanded only when the
head group does not divide kv_heads), windows, and query heads that P does not divide (2d)."""
from __future__ import annotations

import pytest
import torch
from test_distattn import packed_docs

from kernels.attention import attention_reference
from parallel.sequence import SequenceParallelHooks
from parallel.sequence.heads import kv_expansion, mode_problem, resolve_mode

T = 24


def mode_check(rank, world, mode, group, heads, kv_heads, window, docs):
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, T, h, 8, dtype=torch.float64, generator=gen).requires_grad_(True)
               for h in (heads, kv_heads, kv_heads))
    do = torch.randn(2, T, heads, 8, dtype=torch.float64, generator=gen)
    doc = packed_docs(2, T) if docs else None
    o_ref, _ = attention_reference(q, k, v, window=window, q_doc_ids=doc, k_doc_ids=doc)
    o_ref.backward(do)
    n = T // world
    sl = slice(rank * n, (rank + 1) * n)
    ql, kl, vl = (x.detach()[:, sl].clone().requires_grad_(True) for x in (q, k, v))
    hooks = SequenceParallelHooks(mode=mode, head_group=group)
    o = hooks.attention(ql, kl, vl, causal=True, window=window, doc_ids=None if doc is None else doc[:, sl])
    o.backward(do[:, sl])
    pairs = [(o, o_ref[:, sl]), (ql.grad, q.grad[:, sl]), (kl.grad, k.grad[:, sl]), (vl.grad, v.grad[:, sl])]
    return max(float((a - b).abs().max()) for a, b in pairs), hooks.records[-1].fwd_bytes


CASES = [  # (mode, head_group, heads, kv_heads, window, docs)
    ("ulysses", 0, 4, 2, None, True),      # P=4: kv heads expanded x2; P=2: un-expanded
    ("ulysses", 0, 4, 1, None, False),     # MQA
    ("ulysses", 0, 4, 4, 5, True),         # window: the halo path in every mode
    ("2d", 2, 6, 2, None, True),           # P=4: 6 heads, P does not divide them
    ("2d", 2, 2, 1, None, True),
    ("2d", 1, 3, 1, None, True),           # G = 1 is distattn
    ("distattn", 0, 3, 3, None, True),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_sp_mode_matches_single_process(pool2, pool4, case):
    for pool in (pool2, pool4):
        mode, group, heads = case[:3]
        if mode_problem(mode, pool.world, group, heads) is not None:
            continue
        out = pool.run(mode_check, *case)
        assert max(o[0] for o in out) < 1e-10, (pool.world, case)


def a2a_check(rank, world):
    from parallel.sequence.heads import HeadLayout, all_to_all
    from parallel.sequence.p2p import SPGroup

    g = SPGroup()
    sub = HeadLayout(g, world).heads
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(2, 3, 2 * world, 4, dtype=torch.float64, generator=gen)      # [B, n, H', D]
    member_major = x.reshape(2, 3, world, 2, 4).permute(2, 0, 1, 3, 4).contiguous()
    out, sent = [], []
    for whole in (True, False):
        sub.whole = whole
        before = g.bytes_sent
        seq = all_to_all(x, sub, True)
        out += [seq, all_to_all(member_major, sub, True), all_to_all(seq, sub, False)]
        sent.append(g.bytes_sent - before)
    back_is_x = bool(torch.equal(out[2], x))
    return [bool(torch.equal(a, b)) for a, b in zip(out[:3], out[3:])], sent[0] == sent[1], back_is_x


def test_whole_group_all_to_all_equals_point_to_point(pool2, pool4):
    """ulysses' one all_to_all_single collective moves exactly what the P−1 point-to-point pairs
    (2d's head groups) move: same tensors, same bytes counted, and the inverse restores the input."""
    for pool in (pool2, pool4):
        for same, same_bytes, back in pool.run(a2a_check):
            assert same == [True, True, True] and same_bytes and back


def test_auto_mode_is_ulysses_where_sp_divides_the_heads(pool4):
    """sp_mode='auto' (the default) runs ulysses where sp divides the heads (same bytes as ulysses)
    and distattn otherwise (same bytes as distattn), exact against one process either way."""
    assert resolve_mode("auto", 4, 8) == "ulysses" and resolve_mode("auto", 4, 6) == "distattn"
    assert resolve_mode("auto", 2, None) == "distattn" and resolve_mode("2d", 4, 6) == "2d"
    assert mode_problem("auto", 4, 2, 6) is None
    for heads, same_as in [(4, "ulysses"), (6, "distattn")]:
        auto, explicit = (pool4.run(mode_check, mode, 0, heads, 2, None, True) for mode in ("auto", same_as))
        assert max(o[0] for o in auto) < 1e-10
        assert [o[1] for o in auto] == [o[1] for o in explicit], heads


def test_mode_problems_are_one_line():
    assert mode_problem("ring", 4, 1, 8).startswith("parallel.sp_mode='ring' is not one of")
    assert "sp_head_group=3 must divide parallel.sp=4" in mode_problem("2d", 4, 3, 12)
    assert "make parallel.sp divide 6" in mode_problem("ulysses", 4, 1, 6)
    assert mode_problem("2d", 4, 2, 6) is None and mode_problem("distattn", 4, 1, 5) is None
    assert kv_expansion(8, 2, 4) == 2 and kv_expansion(8, 4, 2) == 1 and kv_expansion(6, 1, 2) == 2


@pytest.mark.parametrize("mode", ["ulysses", "2d"])
def test_sp_mode_hybrid_model_with_remat(pool4, mode):
    """A hybrid (M-*-R-W-) model in each head mode equals one process (recurrences pass state as in
    every mode); under rematerialization-aware checkpointing attention still runs once per step."""
    from test_sp_model import check

    out = check(pool4, "hybrid", checkpointing=True, mode=mode, head_group=2)
    assert all(o[3] == 1 for o in out)


def test_layout_validation_refuses_bad_modes_in_one_line():
    from parallel.dims import LayoutError, ParallelDims, validate_layout
    from train.config import ParallelConfig, load_config

    cfg = load_config(None, ["--model.pattern=(*-)x2", "--model.n_heads=6", "--model.n_kv_heads=2",
                             "--model.d_model=96"]).model
    validate_layout(ParallelDims(sp=4), cfg, ParallelConfig(sp=4, sp_mode="2d", sp_head_group=2))
    validate_layout(ParallelDims(sp=4), cfg, ParallelConfig(sp=4, sp_mode="distattn"))
    for pcfg, match in [(ParallelConfig(sp=4, sp_mode="ulysses"), "make parallel.sp divide 6"),
                        (ParallelConfig(sp=4, sp_mode="2d", sp_head_group=4), "make parallel.sp_head_group divide"),
                        (ParallelConfig(sp=4, sp_mode="2d", sp_head_group=3), "must divide parallel.sp=4")]:
        with pytest.raises(LayoutError, match=match) as e:
            validate_layout(ParallelDims(sp=4), cfg, pcfg)
        assert "\n" not in str(e.value)


def test_trainer_sp_modes_match_single_process(pool4, tmp_path):
    """The trainer wires parallel.sp_mode through: ulysses (dp=2 × sp=2) and 2d (sp=4, head groups
    of 2) train a hybrid model with the single-process losses."""
    from test_sp_train import ARGS, _sp_run, silent

    from train.config import load_config
    from train.loop import train

    steps = ["--data.batch_size=4", "--train.steps=4"]
    single = train(load_config("configs/tiny.toml", [*ARGS, f"--train.run_dir={tmp_path / 's'}", *steps]),
                   log=silent).losses
    runs = {"ulysses": ["--parallel.sp=2", "--parallel.dp=2", "--data.batch_size=2", "--train.steps=4",
                        "--parallel.sp_mode=ulysses"],
            "2d": [*steps, "--parallel.sp=4", "--parallel.sp_mode=2d", "--parallel.sp_head_group=2"]}
    for name, extra in runs.items():
        losses = pool4.run(_sp_run, str(tmp_path / name), extra)[0]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(single), rtol=1e-5, atol=0)


def test_plan_names_the_resolved_sp_mode():
    """The planner prints the layout the trainer's hooks will use (same resolve_mode)."""
    from train.config import load_config
    from train.plan import sp_mode_note

    base = ["--model.pattern=(*-)x2", "--model.n_heads=6", "--model.n_kv_heads=2", "--model.d_model=96"]
    assert sp_mode_note(load_config(None, [*base, "--parallel.sp=3"])) == ", sp_mode auto -> ulysses"
    assert sp_mode_note(load_config(None, [*base, "--parallel.sp=4"])) == ", sp_mode auto -> distattn"
    assert sp_mode_note(load_config(None, [*base, "--parallel.sp=2", "--parallel.tp=2"])) == ", sp_mode auto -> distattn"
    assert sp_mode_note(load_config(None, [*base, "--parallel.sp=2", "--parallel.sp_mode=2d"])) == ", sp_mode 2d"
    assert sp_mode_note(load_config(None, base)) == ""
