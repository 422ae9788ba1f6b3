"""Transformer LM: causality, document isolation, tied/untied heads, init scale, FLOPs formula."""
import pytest
import torch

import models
from models import ModelConfig, flops_per_token
from models.flops import mean_visible_keys


def tiny(**kw):
    base = dict(pattern="(*-)x2", vocab_size=50, d_model=32, n_heads=4, n_kv_heads=2)
    base.update(kw)
    torch.manual_seed(0)
    return models.build(ModelConfig(**base)).double()


@pytest.mark.parametrize("pattern", ["(*-)x2", "(W-)x2"])
def test_causality(pattern):
    m = tiny(pattern=pattern, window=5)
    x = torch.randint(0, 50, (2, 24))
    y = m(x)
    for t in (0, 7, 22):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randint(0, 50, x2[:, t + 1:].shape)
        assert not torch.equal(x2, x)
        y2 = m(x2)
        torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-12)
        assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:])


def test_document_masking_isolates_documents():
    """Tokens of document 2 do not depend on document 1's contents (positions restart per document)."""
    m = tiny()
    t1, t2 = 10, 14
    doc2 = torch.randint(0, 50, (1, t2))
    doc_ids = torch.tensor([[0] * t1 + [1] * t2], dtype=torch.int32)
    positions = torch.cat([torch.arange(t1), torch.arange(t2)]).unsqueeze(0)
    outs = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        doc1 = torch.randint(0, 50, (1, t1), generator=g)
        outs.append(m(torch.cat([doc1, doc2], 1), positions, doc_ids))
    assert not torch.allclose(outs[0][:, :t1], outs[1][:, :t1])
    torch.testing.assert_close(outs[0][:, t1:], outs[1][:, t1:], rtol=0, atol=1e-12)
    alone = m(doc2)                                   # the document on its own gives the same logits
    torch.testing.assert_close(outs[0][:, t1:], alone, rtol=1e-10, atol=1e-10)


def test_tied_and_untied_heads():
    tied, untied = tiny(tie_embeddings=True), tiny(tie_embeddings=False)
    assert tied.lm_head is None and untied.lm_head is not None
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 50 * 32


def test_residual_projections_get_scaled_init():
    m = models.build(ModelConfig(pattern="(*-)x8", d_model=256, n_heads=4, init_std=0.02))
    q_std = m.layers[0].mixer.wq.weight.std().item()
    o_std = m.layers[0].mixer.wo.weight.std().item()
    assert abs(q_std - 0.02) < 0.002
    assert abs(o_std - 0.02 / 16 ** 0.5) < 0.0005


def test_not_implemented_symbols_and_bad_heads():
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(d_model=30, n_heads=4).validate()
    with pytest.raises(ValueError, match="multiple"):
        ModelConfig(n_heads=4, n_kv_heads=3).validate()


def test_flops_per_token_formula():
    cfg = ModelConfig(pattern="(*-)x2", vocab_size=100, d_model=64, n_heads=4, n_kv_heads=2, mlp_hidden=128,
                      tie_embeddings=True)
    m = models.build(cfg)
    t = 512
    d, hd, kv = 64, 16, 2
    attn_params = d * 4 * hd + 2 * d * kv * hd + 4 * hd * d
    mlp_params = 3 * d * 128
    fwd = 2 * (2 * attn_params + 2 * mlp_params) + 2 * d * 100 + 2 * 4 * 4 * hd * (t + 1) / 2
    assert flops_per_token(m, t) == pytest.approx(3 * fwd)
    assert mean_visible_keys(8, 3) == pytest.approx((3 * 4 / 2 + 5 * 3) / 8)
    # brute-force check of the window average
    assert mean_visible_keys(8, 3) == pytest.approx(sum(min(i + 1, 3) for i in range(8)) / 8)
