"""The real-size recipes load, name the size they are (parameters counted on the meta device,
nothing allocated) and pass the trainer's layout check for the world they are written for."""
from __future__ import annotations

from pathlib import Path

import pytest

from train.config import load_config
from train.layout_check import validate_run_layout
from train.plan_memory import meta_model

ROOT = Path(__file__).resolve().parents[1]
# recipe -> (parameters its name promises, world size of its layout, symbols it must use)
RECIPES = {
    "transformer-1b-8k": (1.0e9, 8, {"*", "-"}),
    "transformer-8b-64k": (8.0e9, 8, {"*", "-"}),
    "mamba2-1.3b-64k": (1.3e9, 8, {"M"}),
    "griffin-1b-8k": (1.0e9, 8, {"R", "W", "-"}),
    "hawk-1b-8k": (1.0e9, 8, {"R", "-"}),
    "hybrid-1b-8k": (1.0e9, 8, {"M", "*", "-"}),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_is_its_named_size(name):
    size, world, symbols = RECIPES[name]
    cfg = load_config(ROOT / "configs" / f"{name}.toml")
    model = meta_model(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / size - 1) < 0.05, f"{name}: {n / 1e9:.3f} B parameters"
    assert set(model.symbols) == symbols
    assert all(p.is_meta for p in model.parameters())
    dims = validate_run_layout(cfg, world)
    assert dims.world == world


def test_8b_recipe_splits_over_one_node():
    cfg = load_config(ROOT / "configs" / "transformer-8b-64k.toml")
    dims = validate_run_layout(cfg, 8)
    assert (dims.tp, dims.sp, dims.dp) == (4, 2, 1)
    assert cfg.data.seq_len == 65536 and cfg.train.activation_checkpointing
