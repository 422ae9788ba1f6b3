"""`M`: the Mamba-2 mixer (Dao & Gu 2024), built on kernels.ssd and kernels.conv1d.

    in_proj(x) -> [z, x, B, C, dt];  xBC = silu(causal_conv1d(xBC));  Δ = softplus(dt + dt_bias)
    y = SSD(x, Δ, A = −exp(A_log), B, C) + D·x;  out = out_proj(GatedRMSNorm(y, z))
Heads of size ssm_headdim share B/C within ssm_ngroups groups. Init follows mamba-ssm:
dt_bias = softplus⁻¹(dt) with dt ~ logUniform(dt_min, dt_max), A_log = log U[1, 16], D = 1.
The state is (conv tail [B, k−1, conv channels], ssm state [B, h, p, n]); forward can start
from one (ctx.initial_states) and leave one (ctx.final_states), which is exactly the cache
`step` continues from.

Parameters are kept per component (in_proj_z/x/B/C/dt, conv_x/B/C) rather than as one fused
in_proj and conv: each is then one contiguous block of heads (z, x, dt, conv_x) or groups
(B, C, conv_B/C), so tensor parallelism can shard every one on dim 0 with the same names at
any layout (parallel/tensor/recurrent.py). The forward still runs one in_proj matmul and one
conv over [x | B | C], on the concatenated weights (cheap: weights, not activations).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.ssd import ssd
from models.collapse import plain_state, recurrent_step, settings_from, ssd_forward
from models.config import ModelConfig
from models.context import MixerContext
from models.gated_norm import GatedRMSNorm
from models.recurrent_state import finish_state, mixer_conv, split_initial_state


class DepthwiseConvParams(nn.Module):
    """Weight [channels, k] and bias [channels] of one component's depthwise causal conv
    (read by Mamba2, never called: the components are convolved together)."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, width))
        self.bias = nn.Parameter(torch.empty(channels))


class Mamba2(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.d_inner = cfg.ssm_expand * cfg.d_model
        self.headdim, self.ngroups, self.d_state = cfg.ssm_headdim, cfg.ssm_ngroups, cfg.d_state
        self.nheads = self.d_inner // self.headdim
        self.chunk_size, self.conv_width = cfg.ssm_chunk_size, cfg.conv_width
        self.dt_min, self.dt_max = cfg.dt_min, cfg.dt_max
        self.dt_limit = (cfg.dt_limit_min, cfg.dt_limit_max)
        self.collapse = settings_from(cfg)      # state-collapse mitigations (off by default)
        self.conv_channels = self.d_inner + 2 * self.ngroups * self.d_state
        group_rows = self.ngroups * self.d_state
        self.in_proj_z = nn.Linear(cfg.d_model, self.d_inner, bias=False)
        self.in_proj_x = nn.Linear(cfg.d_model, self.d_inner, bias=False)
        self.in_proj_B = nn.Linear(cfg.d_model, group_rows, bias=False)
        self.in_proj_C = nn.Linear(cfg.d_model, group_rows, bias=False)
        self.in_proj_dt = nn.Linear(cfg.d_model, self.nheads, bias=False)
        self.conv_x = DepthwiseConvParams(self.d_inner, self.conv_width)
        self.conv_B = DepthwiseConvParams(group_rows, self.conv_width)
        self.conv_C = DepthwiseConvParams(group_rows, self.conv_width)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.empty(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner, self.ngroups, cfg.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)
        self.out_proj.is_residual_out = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.conv_width)       # nn.Conv1d's default for a depthwise conv
        for conv in (self.conv_x, self.conv_B, self.conv_C):
            conv.weight.uniform_(-bound, bound)
            conv.bias.uniform_(-bound, bound)
        u = torch.rand(self.dt_bias.shape, dtype=torch.float64)
        dt = torch.exp(u * (math.log(self.dt_max) - math.log(self.dt_min)) + math.log(self.dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))     # softplus(dt_bias) == dt
        self.A_log.copy_(torch.log(torch.empty(self.nheads, dtype=torch.float64).uniform_(1.0, 16.0)))
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)

    def split_heads(self, xbc: torch.Tensor):
        """Conv output [..., conv_channels] -> x [..., h, p], B and C [..., g, n]."""
        x, B, C = torch.split(xbc, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        return (x.unflatten(-1, (-1, self.headdim)), B.unflatten(-1, (-1, self.d_state)),
                C.unflatten(-1, (-1, self.d_state)))

    def time_step(self, dt: torch.Tensor) -> torch.Tensor:
        """Δ = softplus(dt + dt_bias), clamped to [dt_limit_min, dt_limit_max] when a limit is set
        (mamba-ssm's dt_limit / transformers' time_step_limit; forward and step alike)."""
        dt = F.softplus(dt + self.dt_bias)
        if self.dt_limit != (0.0, math.inf):
            dt = dt.clamp(*self.dt_limit)
        return dt

    def in_proj_weight(self) -> torch.Tensor:
        """The fused [z | x | B | C | dt] projection, so the input is read by one matmul."""
        return torch.cat([self.in_proj_z.weight, self.in_proj_x.weight, self.in_proj_B.weight,
                          self.in_proj_C.weight, self.in_proj_dt.weight])

    def conv_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [conv_channels, k], bias [conv_channels]) of the conv over [x | B | C]."""
        parts = (self.conv_x, self.conv_B, self.conv_C)
        return torch.cat([c.weight for c in parts]), torch.cat([c.bias for c in parts])

    def project(self, u: torch.Tensor):
        z, xbc, dt = torch.split(F.linear(u, self.in_proj_weight()), [self.d_inner, self.conv_channels, self.nheads], -1)
        return z, xbc, dt

    def forward(self, u: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        b, t, _ = u.shape
        z, xbc_in, dt = self.project(u)
        conv_init, ssm_init = split_initial_state(ctx, self.layer_idx)
        xbc = mixer_conv(ctx, "Mamba-2", xbc_in, *self.conv_params(), conv_init, "silu")
        x, B, C = self.split_heads(xbc)
        dt = self.time_step(dt)
        A = -torch.exp(self.A_log.float() if self.A_log.dtype != torch.float64 else self.A_log)
        if self.collapse.active:
            y, state = ssd_forward(self.collapse, ssd, x, dt, A, B, C, D=self.D, initial_state=ssm_init,
                                   doc_ids=ctx.doc_ids, chunk_size=self.chunk_size, sp=ctx.sp,
                                   return_window_cache=ctx.return_states)
        elif ctx.sp is not None:
            y, state = ctx.sp.ssd(ssd, x, dt, A, B, C, D=self.D, doc_ids=ctx.doc_ids,
                                  initial_state=ssm_init, chunk_size=self.chunk_size)
        else:
            y, state = ssd(x, dt, A, B, C, D=self.D, initial_state=ssm_init, doc_ids=ctx.doc_ids,
                           return_final_state=True, chunk_size=self.chunk_size)
        finish_state(ctx, self.layer_idx, state, plain_state(state), xbc_in, conv_init, self.conv_width)
        y = self.norm(y.reshape(b, t, self.d_inner), z)
        return self.out_proj(y)

    def init_cache(self, batch_size: int, device=None, dtype=torch.float32):
        """Zero state: (conv tail [B, k−1, channels], ssm state [B, h, p, n] in float32/64)."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return (torch.zeros(batch_size, self.conv_width - 1, self.conv_channels, device=device, dtype=dtype),
                torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=work))

    def step(self, u: torch.Tensor, cache):
        """One token u [B, d_model] -> (y [B, d_model], next cache); same weights as forward."""
        tail, state = cache
        z, xbc_in, dt = self.project(u)
        window = torch.cat([tail.to(xbc_in.dtype), xbc_in[:, None]], dim=1)          # [B, k, channels]
        conv_weight, conv_bias = self.conv_params()
        xbc = F.silu((window * conv_weight.t()).sum(1) + conv_bias)
        x, B, C = self.split_heads(xbc)
        work = plain_state(state).dtype
        dt = self.time_step(dt).to(work)                                              # [B, h]
        A = -torch.exp(self.A_log.to(work))
        rep = self.nheads // B.shape[1]
        Bh, Ch = B.to(work).repeat_interleave(rep, 1), C.to(work).repeat_interleave(rep, 1)
        xw = x.to(work)
        if self.collapse.active:
            state, read = recurrent_step(self.collapse, state, (dt * A)[..., None, None],
                                         (dt[..., None] * xw)[..., None] * Bh[:, :, None])
        else:
            state = torch.exp(dt * A)[..., None, None] * state + (dt[..., None] * xw)[..., None] * Bh[:, :, None]
            read = state
        y = torch.einsum("bhpn,bhn->bhp", read, Ch) + self.D.to(work)[:, None] * xw
        y = self.norm(y.reshape(u.shape[0], self.d_inner).to(u.dtype), z)
        return self.out_proj(y), (window[:, 1:], state)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token outside the Linear layers (in_proj/out_proj are counted by
        models.flops). Conv: 2·channels·k. Chunked SSD with chunk L = min(chunk, T), as the
        chunked kernels execute it (full L×L blocks): C·Bᵀ 2·L·g·n, scores·x 2·L·h·p, chunk
        state 2·h·p·n, state→output 2·h·p·n. Elementwise work (softplus, exp, gating, norm)
        is O(d_inner) and omitted, as for activations elsewhere."""
        L = min(self.chunk_size, seq_len)
        h, p, n, g = self.nheads, self.headdim, self.d_state, self.ngroups
        conv = 2.0 * self.conv_channels * self.conv_width
        return conv + 2.0 * L * g * n + 2.0 * L * h * p + 4.0 * h * p * n
