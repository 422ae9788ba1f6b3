"""Data integrity (issue 20): per-sample CRC-32 checksums verified on read, token ids >= vocab as
corrupt samples naming the shard, skip_corrupt covering both, manifest totals checked, corrupt
shards as one-line errors (exit 2), data.prepare's user errors exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data.manifest import ManifestError, read_manifest
from data.prepare import main as prepare_main
from data.prepare import write_synthetic_shards
from data.shards import CorruptShardError
from data.stream import ShardLoader


@pytest.fixture
def shards(tmp_path):
    write_synthetic_shards(tmp_path / "s", 40, shard_tokens=1500, seed=2, min_chars=20, max_chars=300)
    return tmp_path / "s"


def loader(path, **kw):
    """A loader and the warnings it logs (the end-of-epoch "ran dry" line is not a warning)."""
    logs = []

    def warn(msg: str) -> None:
        if "ran dry" not in msg:
            logs.append(msg)
    return ShardLoader(str(path), 16, 2, seed=1, log=warn, **kw), logs


def run_epoch(ld) -> None:
    for _ in range(ld.plan.stream.epoch_tokens // 32 + 2):
        ld.next_batch()


def token_offsets(path) -> list[int]:
    """Byte offset of each sample's token data (just past its .npy header) in a shard."""
    raw = path.read_bytes()
    out, at = [], raw.find(b"\x93NUMPY")
    while at >= 0:
        header_len = int.from_bytes(raw[at + 8:at + 10], "little")
        out.append(at + 10 + header_len)
        at = raw.find(b"\x93NUMPY", at + 1)
    return out


def flip_token(path, sample: int, value: int | None = None) -> None:
    """Change one token of one sample in place (same file size): a bit flip, or a given id."""
    raw = bytearray(path.read_bytes())
    at = token_offsets(path)[sample] + 2
    if value is None:
        raw[at] ^= 0x04
    else:
        raw[at:at + 2] = int(value).to_bytes(2, "little")
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_token_data_is_caught_by_the_checksum(shards):
    m = read_manifest(shards)
    assert m.checksums_file and (shards / m.checksums_file).is_file()
    flip_token(shards / m.shards[1].name, 2)
    ld, _ = loader(shards)
    key = f"{m.shards[0].documents + 2:010d}"
    with pytest.raises(CorruptShardError, match=rf"shard {m.shards[1].name} sample {key} .*checksum mismatch"):
        run_epoch(ld)
    ld, logs = loader(shards, skip_corrupt=True)
    run_epoch(ld)
    assert ld.skipped_documents == 1 and len(logs) == 1 and "checksum mismatch" in logs[0]


def drop_checksums(directory) -> None:
    raw = json.loads((directory / "manifest.json").read_text())
    raw.pop("checksums")
    raw["version"] = 1
    (directory / "manifest.json").write_text(json.dumps(raw))


def test_token_ids_beyond_the_vocabulary_are_corrupt_samples(shards, capsys):
    drop_checksums(shards)                      # an old (version-1) manifest: only the id check can see it
    m = read_manifest(shards)
    flip_token(shards / m.shards[2].name, 0, value=300)
    ld, _ = loader(shards)
    assert "no per-sample checksums" in capsys.readouterr().err
    with pytest.raises(CorruptShardError, match=rf"shard {m.shards[2].name} .*token id 300 >= .*vocab_size 259"):
        run_epoch(ld)
    ld, logs = loader(shards, skip_corrupt=True)
    run_epoch(ld)
    assert ld.skipped_documents == 1 and "token id 300" in logs[0]


def test_manifest_totals_are_checked(shards):
    raw = json.loads((shards / "manifest.json").read_text())
    raw["tokens"] += 7
    (shards / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=rf"says {raw['tokens']} tokens in total but its shards add up to"):
        read_manifest(shards)


def test_checksums_file_must_match_the_manifest(shards):
    np.save(shards / "checksums.npy", np.load(shards / "checksums.npy")[:-1])
    with pytest.raises(ManifestError, match="holds 39 checksums but the manifest lists 40"):
        loader(shards)


def test_truncated_shard_through_the_cli_is_one_line_exit_2(shards, tmp_path):
    m = read_manifest(shards)
    victim = shards / m.shards[1].name
    victim.write_bytes(victim.read_bytes()[: m.shards[1].bytes // 2])
    r = subprocess.run([sys.executable, "-m", "train", "--config", "configs/tiny.toml", "--data.source=shards",
                        f"--data.path={shards}", "--data.seq_len=16", "--data.batch_size=2", "--model.d_model=16",
                        "--train.steps=2", f"--train.run_dir={tmp_path / 'run'}", "--checkpoint.resume=none"],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: shard ") and m.shards[1].name in lines[0], r.stderr


def test_prepare_user_errors_exit_2(shards, tmp_path, capsys):
    assert prepare_main(["--synthetic", "5", "--output", str(shards), "--quiet"]) == 2      # manifest exists
    assert "pass --overwrite" in capsys.readouterr().err
    assert prepare_main(["--output", str(tmp_path / "x"), "--quiet"]) == 2                # no input
    assert "--input PATH" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert prepare_main(["--synthetic", "5", "--output", str(tmp_path / "file" / "sub"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and len(err.strip().splitlines()) == 1
