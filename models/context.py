"""MixerContext: what a mixer needs besides its input, and where it leaves its results.

One context travels through the whole stack for one forward call:
- positions / doc_ids (global, [B, T]) drive RoPE, document masking and recurrence resets;
- initial_states[layer] seeds recurrent mixers (state passing, truncated BPTT, SP carry);
- with return_states, each stateful mixer stores its final state in final_states[layer];
- recurrent mixers store a per-layer state norm in state_norms (state-collapse watch);
- sp holds the sequence-parallel hooks (set by `parallel`, None on one process), so a
  model runs unchanged with any parallel layout and `models` never imports `parallel`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class MixerContext:
    positions: torch.Tensor
    doc_ids: torch.Tensor | None = None
    initial_states: dict[int, Any] | None = None
    return_states: bool = False
    final_states: dict[int, Any] = field(default_factory=dict)
    state_norms: dict[int, torch.Tensor] = field(default_factory=dict)
    sp: Any = None

    def initial_state(self, layer_idx: int) -> Any:
        return None if self.initial_states is None else self.initial_states.get(layer_idx)

    def set_final_state(self, layer_idx: int, state: Any) -> None:
        if self.return_states:
            self.final_states[layer_idx] = state
