"""Length-generalisation interventions: noise / fitted noise / state passing init, TBPTT loader and carry."""
from __future__ import annotations

import pytest
import torch

import models
from data.row_streams import RowStreamLoader
from train.config import LengthGenConfig, load_config
from train.length_gen import LengthGen, build_length_gen, per_head_rms


def tiny(pattern="M-R-", dtype=torch.float32):
    torch.manual_seed(0)
    cfg = models.ModelConfig(pattern=pattern, d_model=32, n_heads=2, d_state=8, ssm_headdim=16, ssm_chunk_size=8,
                             vocab_size=260)
    return models.build(cfg).to(dtype)


class FakeBatch:
    def __init__(self, b=3, t=16, positions0=None):
        self.tokens = torch.randint(0, 256, (b, t))
        self.positions = torch.arange(t).expand(b, t).clone()
        if positions0 is not None:
            self.positions += torch.tensor(positions0)[:, None]
        self.doc_ids = torch.zeros(b, t, dtype=torch.int32)


def test_noise_init_shapes_sigma_and_detached():
    model = tiny()
    lg = LengthGen(LengthGenConfig(state_init="noise", noise_std=0.3), model)
    init = lg.initial_states(FakeBatch(b=64))
    assert set(init) == {0, 2}                                  # the M and R layers only
    conv, ssm = init[0]
    assert conv is None and ssm.shape == (64, model.layers[0].mixer.nheads, 16, 8)
    assert init[2][1].shape == (64, 32)
    assert not ssm.requires_grad
    assert abs(float(ssm.std()) - 0.3) < 0.02
    again = lg.initial_states(FakeBatch(b=64))
    assert not torch.equal(again[0][1], ssm)                    # fresh noise each forward
    assert lg.forward_kwargs(FakeBatch())["return_states"] is False


def test_fitted_noise_follows_recorded_states_per_head():
    model = tiny()
    lg = LengthGen(LengthGenConfig(state_init="fitted_noise", noise_std=0.1, fit_momentum=0.0), model)
    batch = FakeBatch(b=4)
    out = model(batch.tokens, **lg.forward_kwargs(batch))
    logits = lg.after_forward(out, batch)
    assert logits.shape == (4, 16, 260)
    heads = model.layers[0].mixer.nheads
    rms = per_head_rms(out[1][0][1], heads)
    torch.testing.assert_close(lg.sigma[0], rms)
    big = lg.initial_states(FakeBatch(b=512))[0][1]
    emp = big.reshape(512, heads, -1).pow(2).mean(dim=(0, 2)).sqrt()
    torch.testing.assert_close(emp, rms, rtol=0.05, atol=0.0)


def test_state_passing_uses_other_rows_detached_final_state():
    model = tiny()
    lg = LengthGen(LengthGenConfig(state_init="passing"), model)
    b1 = FakeBatch(b=3)
    assert lg.initial_states(b1) is None                        # first step: zero state
    out = model(b1.tokens, **lg.forward_kwargs(b1))
    assert out[1][0][1].requires_grad
    lg.after_forward(out, b1)
    init = lg.initial_states(FakeBatch(b=3))
    for layer in (0, 2):
        conv, st = init[layer]
        assert conv is None and not st.requires_grad and st.grad_fn is None
        fin = out[1][layer][1].detach()
        assert torch.equal(st[1], fin[0]) and torch.equal(st[0], fin[2])   # row r <- row r-1
        assert not torch.equal(st[0], fin[0])


def test_row_stream_loader_continuity_and_resume():
    loader = RowStreamLoader(seq_len=64, batch_size=2, dp_rank=0, dp_size=2, seed=5, min_chars=50, max_chars=150)
    b1, b2 = loader.next_batch(), loader.next_batch()
    seen_cont = False
    for _ in range(6):
        for r in range(2):
            if b2.positions[r, 0] > 0:       # the row continues its own document from the previous step
                seen_cont = True
                assert b2.positions[r, 0] == b1.positions[r, -1] + 1 and b1.labels[r, -1] == b2.tokens[r, 0]
            else:                            # a new document starts exactly at the row start
                assert b1.labels[r, -1] == -100 and b2.tokens[r, 0] == 256
        b1, b2 = b2, loader.next_batch()
    assert seen_cont
    rank1 = RowStreamLoader(64, 2, 1, 2, 5, 50, 150).next_batch()
    assert not torch.equal(rank1.tokens, b1.tokens)
    state = loader.state_dict()
    nxt = loader.next_batch()
    fresh = RowStreamLoader(64, 2, 0, 2, 5, 50, 150)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.next_batch().tokens, nxt.tokens)


def test_tbptt_carry_equals_unsplit_forward():
    """Carrying (conv tail, state) of the same row across two chunks = one forward over both."""
    model = tiny("M-R-", torch.float64)
    lg = LengthGen(LengthGenConfig(tbptt=True), model)
    tokens = torch.randint(0, 256, (2, 24))
    full = model(tokens)
    first = FakeBatch(b=2, t=12)
    first.tokens = tokens[:, :12]
    lg.after_forward(model(first.tokens, **lg.forward_kwargs(first)), first)
    second = FakeBatch(b=2, t=12, positions0=[12, 0])      # row 0 continues; row 1 starts a new document
    second.tokens = tokens[:, 12:]
    kw = lg.forward_kwargs(second)
    assert kw["return_states"] and not kw["initial_states"][0][1].requires_grad
    logits = lg.after_forward(model(second.tokens, **kw), second)
    torch.testing.assert_close(logits[0], full[0, 12:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logits[1], model(tokens[1:, 12:])[0], rtol=1e-9, atol=1e-9)


def test_training_with_interventions_runs(tmp_path):
    from parallel.dims import LayoutError
    from train.loop import train

    base = ["--model.pattern=M-R-", "--model.d_model=32", "--model.n_heads=2", "--model.d_state=8",
            "--model.ssm_headdim=16", "--data.seq_len=32", "--data.batch_size=2", "--train.steps=2",
            "--checkpoint.every=0", "--checkpoint.save_final=false", "--metrics.tensorboard=false",
            "--train.log_every=100", "--train.device=cpu"]
    for extra in (["--lengthgen.state_init=passing"], ["--lengthgen.state_init=fitted_noise"],
                  ["--lengthgen.tbptt=true"]):
        cfg = load_config(None, [*base, f"--train.run_dir={tmp_path / extra[0][12:20]}", *extra])
        res = train(cfg, log=lambda *_: None)
        assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    bad = load_config(None, [*base, "--lengthgen.tbptt=true", "--lengthgen.state_init=noise"])

    class P:
        dims = type("D", (), {"sp": 1, "pp": 1})()
        rank = 0
    with pytest.raises(LayoutError, match="state_init=zero"):
        build_length_gen(bad, tiny(), P())
    attn = load_config(None, ["--model.pattern=*-", "--lengthgen.state_init=noise"])
    with pytest.raises(LayoutError, match="has none"):
        build_length_gen(attn, models.build(attn.model), P())


@pytest.mark.parametrize("extra", [["--lengthgen.tbptt=true"], ["--lengthgen.state_init=fitted_noise"],
                                   ["--lengthgen.state_init=passing"]])
def test_resume_continues_the_carried_state_exactly(tmp_path, extra):
    """4 steps straight equal 2 steps, a checkpoint, and 2 resumed steps, bitwise: the carried
    final states, fitted σ and noise generator come back from the checkpoint."""
    from train.loop import train

    base = ["--model.pattern=M-R-", "--model.d_model=32", "--model.n_heads=2", "--model.d_state=8",
            "--model.ssm_headdim=16", "--data.seq_len=32", "--data.batch_size=2", "--checkpoint.every=2",
            "--metrics.tensorboard=false", "--train.log_every=100", "--train.device=cpu", *extra]
    straight = train(load_config(None, [*base, "--train.steps=4", f"--train.run_dir={tmp_path / 'a'}"]),
                     log=lambda *_: None).losses
    train(load_config(None, [*base, "--train.steps=2", f"--train.run_dir={tmp_path / 'b'}"]), log=lambda *_: None)
    resumed = train(load_config(None, [*base, "--train.steps=4", f"--train.run_dir={tmp_path / 'b'}",
                                       "--checkpoint.resume=auto"]), log=lambda *_: None).losses
    assert len(resumed) == 2 and resumed == straight[2:]


def test_row_streams_over_the_sized_corpus_carry_its_task_documents():
    """lengthgen.tbptt with data.corpus = "sized": each stream is a fitting packer over documents r, r + n, ...
    of the sized corpus (the task documents the run it continues trained on), rows continue their own
    stream, and resume is exact."""
    from pathlib import Path

    from data.row_streams import build_row_stream_loader
    from data.tasks.corpus import FittingPacker, sized_corpus
    from data.tokenizer import ByteTokenizer
    from train.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "long-context-mamba2-tiny.toml", ["--data.batch_size=3"])
    loader = build_row_stream_loader(cfg.data)
    assert all(isinstance(p, FittingPacker) for p in loader.packers)
    corpus, tok, T = sized_corpus(cfg.data, ByteTokenizer()), ByteTokenizer(), cfg.data.seq_len
    b1 = loader.next_batch()
    for r in range(3):                        # stream r starts with the corpus's document r (when it fits)
        first = corpus.document(r, T)
        if len(first) <= T:
            assert torch.equal(b1.tokens[r, :len(first)], torch.from_numpy(first))
    text, seen_cont = "", False
    for _ in range(8):
        b2 = loader.next_batch()
        for r in range(3):
            if b2.positions[r, 0] > 0:        # the same document, continued from the previous step
                seen_cont = True
                assert b2.positions[r, 0] == b1.positions[r, -1] + 1
                assert b1.labels[r, -1] in (-100, b2.tokens[r, 0])
            else:
                assert b1.labels[r, -1] == -100 and b2.tokens[r, 0] == tok.BOS
        text += "".join(tok.decode(row) for row in b2.tokens.tolist())
        b1 = b2
    assert seen_cont and text.count("What is the pass key?") >= 3 and " key? " in text
    state, nxt = loader.state_dict(), loader.next_batch()
    fresh = build_row_stream_loader(cfg.data)
    fresh.load_state_dict(state)
    again = fresh.next_batch()
    assert torch.equal(again.tokens, nxt.tokens) and torch.equal(again.labels, nxt.labels)
