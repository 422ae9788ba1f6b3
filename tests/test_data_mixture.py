"""Weighted mixtures ([[data.sources]]): config tables, proportions, the upsampling rule, exact resume
across data-parallel and worker counts, the realised mix in the log and TensorBoard, bad input."""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from data.errors import DataError
from data.layout import EpochLayout
from data.mixture import MixtureLoader, doc_counts
from data.prepare import write_synthetic_shards
from train.__main__ import main as train_main
from train.config import ConfigError, SourceConfig, dump_toml, load_config
from train.loop import train

TINY = ["--model.pattern=(*-)x2", "--model.d_model=32", "--model.n_heads=2", "--model.n_kv_heads=1",
        "--data.seq_len=32", "--data.batch_size=2", "--optim.warmup_steps=2", "--train.log_every=100",
        "--metrics.log_every=1", "--checkpoint.keep_last=0"]

F64 = ("--train.dtype=float64",)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    write_synthetic_shards(d / "short", 60, shard_tokens=1500, seed=1, min_chars=20, max_chars=200)
    write_synthetic_shards(d / "long", 30, shard_tokens=3000, seed=2, min_chars=100, max_chars=900)
    return d


def mix_toml(tmp_path, corpora, *tables: str, extra: str = "") -> str:
    body = "\n".join(f"[[data.sources]]\n{t}" for t in tables)
    path = tmp_path / "mix.toml"
    path.write_text(f'[data]\nsource = "mixture"\nseq_len = 32\nbatch_size = 2\n{extra}\n{body}\n')
    return str(path)


def test_sources_tables_load_check_and_round_trip(tmp_path, corpora):
    path = mix_toml(tmp_path, corpora, f'path = "{corpora / "short"}"\nweight = 0.25',
                    f'path = "{corpora / "long"}"\nweight = 0.75\nlong_doc_len = 200\nlong_doc_rate = 2.5\n'
                    'name = "books"')
    cfg = load_config(path)
    assert cfg.data.sources == [SourceConfig(path=str(corpora / "short"), weight=0.25),
                                SourceConfig(path=str(corpora / "long"), weight=0.75, long_doc_len=200,
                                             long_doc_rate=2.5, name="books")]
    dumped = tmp_path / "dumped.toml"
    dumped.write_text(dump_toml(cfg))
    assert "[[data.sources]]" in dumped.read_text() and load_config(dumped) == cfg
    with pytest.raises(ConfigError, match="unknown key 'wieght'.*'weight'"):
        load_config(mix_toml(tmp_path, corpora, 'path = "x"\nwieght = 1.0'))
    with pytest.raises(ConfigError, match="data.sources.format.*shards, megatron"):
        load_config(mix_toml(tmp_path, corpora, 'path = "x"\nformat = "arrow"'))
    with pytest.raises(ConfigError, match=r"\[\[data.sources\]\] tables in the TOML"):
        load_config(None, ["--data.sources=a,b"])


def sources(corpora, w_short=0.25, w_long=0.75, **long_kw):
    return [SourceConfig(path=str(corpora / "short"), weight=w_short),
            SourceConfig(path=str(corpora / "long"), weight=w_long, **long_kw)]


def loaders(srcs, world, rows, workers=0, **kw):
    return [MixtureLoader(srcs, 16, rows, r, world, seed=3, num_workers=workers, log=lambda m: None, **kw)
            for r in range(world)]


def test_proportions_match_the_weights_over_many_steps(corpora):
    (ld,) = loaders(sources(corpora), 1, 4)
    for _ in range(300):
        ld.next_batch()
    tokens = ld.tokens_per_source()
    assert sum(tokens.values()) == 300 * 4 * 16                   # every token comes from one source
    share = tokens["long"] / sum(tokens.values())
    assert abs(share - 0.75) < 0.04, share                         # 1200 rows: σ ≈ 0.0125
    rows = np.concatenate([ld.plan.sources_of(t, 4) for t in range(300)])
    assert tokens["long"] == int((rows == 1).sum()) * 16           # offsets are exactly the rows drawn
    scalars = ld.tb_scalars()
    assert scalars["data/share/long"] == share and scalars["data/tokens/short"] == tokens["short"]


def test_upsampling_rule_copies_long_documents_a_times_and_short_ones_b_times(corpora):
    src = SourceConfig(path="x", long_doc_len=300, long_doc_rate=3.0, short_doc_rate=0.0)
    lengths = [np.array([10, 299, 300, 5000]), np.array([301, 7])]
    assert [c.tolist() for c in doc_counts(lengths, src, 0, 0)] == [[0, 0, 3, 3], [3, 0]]
    frac = SourceConfig(path="x", long_doc_len=100, long_doc_rate=1.5, short_doc_rate=0.25, min_doc_len=20,
                        max_doc_len=4000)
    big = [np.arange(1, 5001)]
    (c,) = doc_counts(big, frac, 0, 0)
    n = big[0]
    assert set(c[(n >= 100) & (n <= 4000)].tolist()) == {1, 2} and set(c[(n < 100) & (n >= 20)].tolist()) <= {0, 1}
    assert (c[n < 20] == 0).all() and (c[n > 4000] == 0).all()     # length filters
    assert abs(c[(n >= 100) & (n <= 4000)].mean() - 1.5) < 0.05
    assert abs(c[(n >= 20) & (n < 100)].mean() - 0.25) < 0.12
    # the epoch layout really repeats the copies: every kept document appears count times
    lay = EpochLayout(lengths, seed=0, epoch=4, counts=doc_counts(lengths, src, 0, 0))
    assert Counter(zip(lay.shard.tolist(), lay.local.tolist())) == {(0, 2): 3, (0, 3): 3, (1, 0): 3}


def test_upsampled_source_reaches_training_with_its_long_documents(corpora):
    (ld,) = loaders(sources(corpora, long_doc_len=250, long_doc_rate=2.0, short_doc_rate=0.0), 1, 2)
    corpus, counts = ld.corpora[1], ld.counts[1]
    lengths, reps = np.concatenate(corpus.lengths), np.concatenate(counts)
    assert (reps[lengths >= 250] == 2).all() and (reps[lengths < 250] == 0).all()
    assert ld.plan.streams[1].epoch_tokens == 2 * int(lengths[lengths >= 250].sum())
    report = "\n".join(ld.describe())
    assert "long docs" in report and "L=250, 2/0" in report and "histogram" in report


def take(ld, steps):
    return [tuple(x.numpy().copy() for x in (b.tokens, b.labels, b.positions, b.doc_ids))
            for b in (ld.next_batch() for _ in range(steps))]


def test_resume_across_dp_and_workers_is_exact(corpora):
    srcs = sources(corpora, long_doc_len=200, long_doc_rate=1.5)
    ref = take(loaders(srcs, 1, 4)[0], 8)
    two = loaders(srcs, 2, 2)
    first = [take(ld, 4) for ld in two]
    for step in range(4):
        for k in range(4):
            np.testing.assert_array_equal(np.concatenate([first[0][step][k], first[1][step][k]]), ref[step][k])
    (one,) = loaders(srcs, 1, 4, workers=2)
    one.load_state_dict(two[1].state_dict())
    for want, have in zip(ref[4:], take(one, 4)):
        for a, b in zip(want, have):
            np.testing.assert_array_equal(a, b)


def test_a_source_that_runs_dry_starts_its_next_epoch_and_says_so(corpora):
    logged = []
    ld = MixtureLoader(sources(corpora, 0.9, 0.1), 16, 4, seed=3, log=logged.append)
    epoch = ld.plan.streams[0].epoch_tokens
    steps = epoch // (0.9 * 4 * 16) + 20
    for _ in range(int(steps)):
        ld.next_batch()
    assert ld.tokens_per_source()["short"] > epoch
    dry = [m for m in logged if "ran dry" in m]
    assert dry and "source 'short'" in dry[0] and "starting epoch 1" in dry[0]


def test_bad_mixtures_are_one_line_errors(corpora, tmp_path, capsys):
    def err(*tables, extra=""):
        rc = train_main(["--config", mix_toml(tmp_path, corpora, *tables, extra=extra), *TINY,
                         f"--train.run_dir={tmp_path / 'bad'}", "--train.steps=1"])
        lines = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("error")]
        assert rc == 2 and len(lines) == 1
        return lines[0]

    short, long = f'path = "{corpora / "short"}"', f'path = "{corpora / "long"}"'
    assert "weight -1.0" in err(f"{short}\nweight = -1.0", long)
    assert "every [[data.sources]] weight is 0" in err(f"{short}\nweight = 0.0", f"{long}\nweight = 0.0")
    assert "keeps no documents" in err(short, f"{long}\nmin_doc_len = 100000")
    assert "needs [[data.sources]]" in err()
    assert "data.source='mixture'" in err(short, extra='packing = "dd"')
    with pytest.raises(DataError, match="not a directory"):
        MixtureLoader([SourceConfig(path=str(tmp_path / "nowhere"))], 16, 2)


def test_trains_on_a_mixture_resumes_bitwise_and_logs_the_realised_mix(corpora, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = mix_toml(tmp_path, corpora, f'path = "{corpora / "short"}"\nweight = 0.3',
                    f'path = "{corpora / "long"}"\nweight = 0.7\nlong_doc_len = 300\nlong_doc_rate = 2.0')
    args = [*TINY, "--train.steps=6", "--checkpoint.every=3"]
    logged: list[str] = []
    full = train(load_config(path, [*args, f"--train.run_dir={tmp_path / 'a'}"]), log=logged.append)
    assert len(full.losses) == 6 and "data mixture: 2 sources" in "\n".join(logged)
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-0000003", tmp_path / "b" / "checkpoints" / "step-0000003")
    resumed = train(load_config(path, [*args, f"--train.run_dir={tmp_path / 'b'}", "--checkpoint.resume=auto",
                                       "--data.num_workers=2"]), log=lambda m: None)
    assert resumed.losses == full.losses[3:]                                   # bitwise equal floats
    acc = EventAccumulator(str(tmp_path / "a" / "tb"))
    acc.Reload()
    tokens = [e.value for e in acc.Scalars("data/tokens/long")]
    total = [a + b for a, b in zip(tokens, (e.value for e in acc.Scalars("data/tokens/short")))]
    assert total == [32 * 2 * (t + 1) for t in range(6)]                      # all tokens of steps 1..t
    assert "data/mix/text_summary" in acc.Tags()["tensors"]


def test_long_context_mix_recipe_loads_and_trains_on_its_three_sources(tmp_path, monkeypatch):
    pytest.importorskip("megatron.core.datasets.indexed_dataset")
    from pathlib import Path

    from data.prepare import main as prepare_main

    recipe = Path(__file__).resolve().parents[1] / "configs" / "long-context-mix.toml"
    monkeypatch.chdir(tmp_path)                       # the recipe's source paths are relative
    for name, fmt, seed in (("code", "megatron", 1), ("books", "megatron", 2), ("short", "shards", 3)):
        assert prepare_main(["--synthetic", "40", "--seed", str(seed), "--min-chars", "100", "--max-chars", "3000",
                             "--output", f"data/mix/{name}", "--format", fmt, "--quiet"]) == 0
    cfg = load_config(recipe)
    assert [(s.name, s.format, s.weight) for s in cfg.data.sources] == [
        ("code", "megatron", 0.3), ("books", "megatron", 0.3), ("short", "shards", 0.4)]
    small = ["--model.pattern=(M-*-)x1", "--model.d_model=32", "--model.d_state=16", "--model.n_heads=2",
             "--data.seq_len=64", "--data.batch_size=2", "--data.curriculum=none", "--data.num_workers=0",
             "--train.steps=2", "--checkpoint.every=0", f"--train.run_dir={tmp_path / 'run'}"]
    logged: list[str] = []
    result = train(load_config(recipe, small), log=logged.append)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert "L=16384, 3/0.3" in "\n".join(logged)


def _mixture_run(rank, world, path, run_dir, *extra):
    return train(load_config(path, [*TINY, f"--train.run_dir={run_dir}", *extra]), log=lambda m: None).losses


def test_a_dp2_checkpoint_resumes_on_one_process_with_the_same_global_batches(pool2, corpora, tmp_path):
    path = mix_toml(tmp_path, corpora, f'path = "{corpora / "short"}"\nweight = 0.5',
                    f'path = "{corpora / "long"}"\nweight = 0.5\nlong_doc_len = 300\nlong_doc_rate = 2.0')
    two = pool2.run(_mixture_run, path, str(tmp_path / "dp2"), "--train.steps=4", "--checkpoint.every=2", *F64)
    assert two[0] == two[1] and len(two[0]) == 4
    (tmp_path / "one" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "dp2" / "checkpoints" / "step-0000002", tmp_path / "one" / "checkpoints" / "step-0000002")
    one = _mixture_run(0, 1, path, str(tmp_path / "one"), "--train.steps=4", "--checkpoint.every=2",
                       "--checkpoint.resume=auto", "--data.batch_size=4", "--data.num_workers=2", *F64)
    # dp=2·2 rows = 1·4 rows: the same batches and weights; in float64 all that differs is the order in
    # which the gradient all-reduce sums, so the losses agree to round-off (float32: ~1e-6)
    assert len(one) == 2 and max(abs(a - b) for a, b in zip(two[0][2:], one)) < 1e-12


def test_sources_with_different_tokenizers_are_refused(corpora, tmp_path):
    pytest.importorskip("megatron.core.datasets.indexed_dataset")
    import json

    from data.prepare import main as prepare_main

    assert prepare_main(["--synthetic", "5", "--output", str(tmp_path / "m"), "--format", "megatron", "--quiet"]) == 0
    meta = json.loads((tmp_path / "m" / "text_document.json").read_text())
    (tmp_path / "m" / "text_document.json").write_text(json.dumps({**meta, "tokenizer": "hf:other"}))
    srcs = [SourceConfig(path=str(corpora / "short")), SourceConfig(path=str(tmp_path / "m"), format="megatron")]
    with pytest.raises(DataError, match="different tokenizers: short has byte, m has hf:other"):
        MixtureLoader(srcs, 16, 2)
