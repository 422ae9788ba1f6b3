"""Helpers shared by the recurrent mixers (M, R) for their carried state."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.segments import segment_ids
from models.context import MixerContext


def conv_tail(x_in: torch.Tensor, left: torch.Tensor | None, width: int, doc_ids: torch.Tensor | None):
    """The k−1 conv inputs that end this chunk [B, k−1, C]: the left context of the next call.

    Inputs from a document other than the chunk's last one are zeroed: the next chunk (or the
    step path) continues the last document, and a tap into another document must read 0.
    """
    b, t, c = x_in.shape
    k1 = width - 1
    left = x_in.new_zeros(b, k1, c) if left is None else left.to(x_in.dtype)
    ext = torch.cat([left, x_in], dim=1)[:, -k1:] if k1 else x_in[:, :0]
    if doc_ids is None or k1 == 0:
        return ext
    seg = segment_ids(doc_ids)                                      # [B, T]
    seg_ext = F.pad(seg, (k1, 0), value=0)[:, -k1:]                 # left context: token 0's segment
    same = (seg_ext == seg[:, -1:]).to(ext.dtype).unsqueeze(-1)
    return ext * same


def record_state_norm(ctx: MixerContext, layer_idx: int, state: torch.Tensor) -> None:
    """Mean over the batch of the final state's L2 norm (state-collapse watch), detached."""
    with torch.no_grad():
        ctx.state_norms[layer_idx] = state.detach().float().flatten(1).norm(dim=1).mean()
