"""Reading and writing the tensor files of a Hugging Face model directory.

Read: model.safetensors, or shards listed by model.safetensors.index.json; else
pytorch_model.bin or its index (loaded with weights_only=True). Write: safetensors shards of at
most shard_bytes each (model-0000i-of-0000n.safetensors) and model.safetensors.index.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


class MissingWeights(ValueError):
    pass


def _index_files(src: Path, index_name: str) -> list[Path]:
    index = json.loads((src / index_name).read_text())
    names = sorted(set(index.get("weight_map", {}).values()))
    missing = [n for n in names if not (src / n).is_file()]
    if missing:
        raise MissingWeights(f"{src / missing[0]} (listed in {index_name}) not found")
    return [src / n for n in names]


def read_hf_state(src: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the model directory, by its name there."""
    from safetensors.torch import load_file

    from models.interop import InteropError

    try:
        if (src / "model.safetensors.index.json").is_file():
            files, loader = _index_files(src, "model.safetensors.index.json"), load_file
        elif (src / "model.safetensors").is_file():
            files, loader = [src / "model.safetensors"], load_file
        elif (src / "pytorch_model.bin.index.json").is_file():
            files, loader = _index_files(src, "pytorch_model.bin.index.json"), _load_bin
        elif (src / "pytorch_model.bin").is_file():
            files, loader = [src / "pytorch_model.bin"], _load_bin
        else:
            raise MissingWeights(f"no model.safetensors, sharded safetensors index or pytorch_model.bin in {src}")
    except MissingWeights as e:
        raise InteropError(str(e)) from None
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(loader(str(f)))
    return state


def _load_bin(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_hf_state(state: dict[str, torch.Tensor], out: Path, shard_bytes: int) -> None:
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in state:
        t = state[name].detach().contiguous().clone()
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    out.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
