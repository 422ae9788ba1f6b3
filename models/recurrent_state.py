"""Helpers shared by the recurrent mixers (M, R) for their carried state."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.conv1d import causal_conv1d
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


def split_initial_state(ctx: MixerContext, layer_idx: int) -> tuple:
    """(conv tail, recurrent state) this layer starts from; (None, None) from zero."""
    init = ctx.initial_state(layer_idx)
    return (None, None) if init is None else init


def mixer_conv(ctx: MixerContext, name: str, x_in: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               conv_init: torch.Tensor | None, activation: str | None) -> torch.Tensor:
    """The causal depthwise conv of a recurrent mixer: under sequence parallelism through the
    halo hook (the chunk's left context comes from the previous rank, so an initial conv state
    cannot be given there), else the kernel continuing from `conv_init`."""
    if ctx.sp is None:
        return causal_conv1d(x_in, weight, bias, doc_ids=ctx.doc_ids, left_context=conv_init, activation=activation)
    if conv_init is not None:
        raise NotImplementedError(f"{name}: an initial conv state under sequence parallelism is "
                                  "not supported; pass initial states without sp")
    return ctx.sp.causal_conv1d(causal_conv1d, x_in, weight, bias, doc_ids=ctx.doc_ids, activation=activation)


def finish_state(ctx: MixerContext, layer_idx: int, state, plain: torch.Tensor, x_in: torch.Tensor,
                 conv_init: torch.Tensor | None, conv_width: int) -> None:
    """Record the final state's norm (collapse watch) and, when asked, leave (conv tail, state)
    as this layer's final state — exactly the cache `step` continues from."""
    record_state_norm(ctx, layer_idx, plain)
    if ctx.return_states:
        ctx.set_final_state(layer_idx, (conv_tail(x_in, conv_init, conv_width, ctx.doc_ids), state))
