"""Spec of the gated MLP `-` (models/mlp.py): linear layers only, a data-only tensor-parallel plan."""
from __future__ import annotations

from models.mixer_spec import MixerSpec, TensorParallelPlan, divisible, register
from models.mlp import GatedMLP

register(MixerSpec(
    "-", "MLP", module_class=GatedMLP, build=lambda cfg, i: GatedMLP(cfg),
    config_fields=("mlp_type", "mlp_hidden"),
    tp_plan=TensorParallelPlan(colwise=("w_gate", "w_up"), rowwise=("w_down",)),
    tp_check=lambda cfg, tp: divisible(cfg.mlp_hidden_size, "the MLP hidden size", "model.mlp_hidden", tp),
))
