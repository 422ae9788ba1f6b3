"""`R`: Griffin's recurrent block (De et al. 2024, "Griffin"), built on kernels.rglru/conv1d.

    gate = gelu(linear_y(x))                          (branch 1)
    u = causal_conv1d(linear_x(x), width conv_width)  (branch 2) ;  h = RG-LRU(u)
    out = linear_out(gate ⊙ h)
RG-LRU:  r_t = σ(W_a u_t + b_a),  i_t = σ(W_x u_t + b_x)   (block-diagonal W, lru_heads blocks)
         log a_t = −c · softplus(−Λ) · r_t   (= c · r_t · log σ(Λ)),  c = lru_c = 8
         h_t = a_t ⊙ h_{t−1} + √(1 − a_t²) ⊙ (i_t ⊙ u_t)
Λ is initialised so that a^c = σ(Λ)^c is uniform in [0.9, 0.999]. The state is
(conv tail [B, k−1, width], h [B, width]); forward and step share it (see models/mamba2.py).
By default the first token of a document is scaled by √(1 − a²) like every other; it keeps
forward, step and state passing one formula, and is equally learnable. RecurrentGemma instead
lets a document's first token (position 0, where its state resets) in unscaled:
model.lru_scale_first=false does the same in forward (step always continues a document: the
first token of one goes through forward, as generate's prefill does). model.lru_bias adds
biases on linear_x/linear_y/linear_out, as RecurrentGemma checkpoints have.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.rglru import linear_scan
from models.collapse import plain_state, recurrent_step, scan_forward, settings_from
from models.config import ModelConfig
from models.context import MixerContext
from models.recurrent_state import finish_state, mixer_conv, split_initial_state

MAX_SQRT_GRAD = 1000.0


class SqrtBoundedDerivative(torch.autograd.Function):
    """sqrt(v) whose derivative 1/(2·sqrt(v)) is capped at MAX_SQRT_GRAD.

    √(1 − a²) has an unbounded derivative as a → 1 (slow channels, where r_t → 0); capping it
    (as Griffin does) keeps the gradient finite there without changing the forward value."""

    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v)
        return torch.sqrt(v)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (v,) = ctx.saved_tensors
        return grad / torch.sqrt(v).clamp(min=1.0 / (2 * MAX_SQRT_GRAD)) / 2


class BlockDiagonalLinear(nn.Module):
    """x [..., H·w] -> [..., H·w] with one [w, w] block per head (Griffin's gate layout: a
    tensor-parallel shard keeps whole blocks, so the gates need no communication)."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.blocks, self.block = blocks, width // blocks
        self.weight = nn.Parameter(torch.empty(blocks, self.block, self.block))
        self.bias = nn.Parameter(torch.zeros(width))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, 1.0 / math.sqrt(self.block))
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.unflatten(-1, (-1, self.block))                      # [..., H, w]
        return torch.einsum("...hi,hij->...hj", xb, self.weight).flatten(-2) + self.bias


class RGLRU(nn.Module):
    def __init__(self, width: int, heads: int, c: float):
        super().__init__()
        self.c = c
        self.gate_a = BlockDiagonalLinear(width, heads)
        self.gate_x = BlockDiagonalLinear(width, heads)
        self.a_param = nn.Parameter(torch.empty(width))         # Λ; 1-D, so no weight decay

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.gate_a.reset_parameters()
        self.gate_x.reset_parameters()
        ac = torch.empty_like(self.a_param, dtype=torch.float64).uniform_(0.9, 0.999)   # a^c
        a = ac ** (1.0 / self.c)
        self.a_param.copy_(torch.log(a) - torch.log1p(-a))                             # Λ = logit(a)

    def coefficients(self, u: torch.Tensor, unscaled: torch.Tensor | None = None):
        """(a, scaled input) for u [..., width], in float32/float64: h_t = a_t·h_{t−1} + b_t.
        Tokens where the bool mask `unscaled` [...] is set enter without the √(1 − a²) scale."""
        work = torch.float64 if u.dtype == torch.float64 else torch.float32
        r = torch.sigmoid(self.gate_a(u)).to(work)
        i = torch.sigmoid(self.gate_x(u)).to(work)
        log_a = -self.c * F.softplus(-self.a_param.to(work)) * r
        a = torch.exp(log_a)
        scale = SqrtBoundedDerivative.apply(-torch.expm1(2 * log_a))   # 1 − a², no cancellation
        if unscaled is not None:
            scale = torch.where(unscaled[..., None], torch.ones_like(scale), scale)
        return a, scale * (i * u.to(work))


class GriffinRecurrent(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.width = cfg.lru_width or cfg.d_model
        self.conv_width = cfg.conv_width
        self.scale_first = cfg.lru_scale_first
        self.linear_y = nn.Linear(cfg.d_model, self.width, bias=cfg.lru_bias)
        self.linear_x = nn.Linear(cfg.d_model, self.width, bias=cfg.lru_bias)
        self.conv_weight = nn.Parameter(torch.empty(self.width, self.conv_width))
        self.conv_bias = nn.Parameter(torch.empty(self.width))
        self.rglru = RGLRU(self.width, cfg.lru_heads or cfg.n_heads, cfg.lru_c)
        self.collapse = settings_from(cfg)      # state-collapse mitigations (off by default)
        self.linear_out = nn.Linear(self.width, cfg.d_model, bias=cfg.lru_bias)
        self.linear_out.is_residual_out = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.conv_width)
        self.conv_weight.uniform_(-bound, bound)
        self.conv_bias.zero_()
        self.rglru.reset_parameters()

    def forward(self, x: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        gate = F.gelu(self.linear_y(x), approximate="tanh")
        u_in = self.linear_x(x)
        conv_init, h_init = split_initial_state(ctx, self.layer_idx)
        u = mixer_conv(ctx, "Griffin", u_in, self.conv_weight, self.conv_bias, conv_init, None)
        a, b = self.rglru.coefficients(u, None if self.scale_first else ctx.positions == 0)
        if self.collapse.active:
            h, state = scan_forward(self.collapse, linear_scan, a, b, initial_state=h_init, doc_ids=ctx.doc_ids,
                                    heads=self.rglru.gate_a.blocks, sp=ctx.sp, return_window_cache=ctx.return_states)
        elif ctx.sp is not None:
            h, state = ctx.sp.linear_scan(linear_scan, a, b, doc_ids=ctx.doc_ids, initial_state=h_init)
        else:
            h, state = linear_scan(a, b, initial_state=h_init, doc_ids=ctx.doc_ids, return_final_state=True)
        finish_state(ctx, self.layer_idx, state, plain_state(state), u_in, conv_init, self.conv_width)
        return self.linear_out(gate * h.to(x.dtype))

    def init_cache(self, batch_size: int, device=None, dtype=torch.float32):
        """Zero state: (conv tail [B, k−1, width], h [B, width] in float32/64)."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return (torch.zeros(batch_size, self.conv_width - 1, self.width, device=device, dtype=dtype),
                torch.zeros(batch_size, self.width, device=device, dtype=work))

    def step(self, x: torch.Tensor, cache):
        """One token x [B, d_model] -> (y [B, d_model], next cache); same weights as forward."""
        tail, h = cache
        gate = F.gelu(self.linear_y(x), approximate="tanh")
        u_in = self.linear_x(x)
        window = torch.cat([tail.to(u_in.dtype), u_in[:, None]], dim=1)
        u = (window * self.conv_weight.t()).sum(1) + self.conv_bias
        a, b = self.rglru.coefficients(u)
        if self.collapse.active:
            state, h = recurrent_step(self.collapse, h, torch.log(a), b, heads=self.rglru.gate_a.blocks)
        else:
            h = state = a * h + b
        return self.linear_out(gate * h.to(x.dtype)), (window[:, 1:], state)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token outside the nn.Linear layers: conv 2·width·k, the two
        block-diagonal gates 2·2·width·(width/heads), and the recurrence ~2·width (the
        elementwise gate math is O(width) and omitted, as for activations elsewhere)."""
        block = self.rglru.gate_a.block
        return 2.0 * self.width * self.conv_width + 4.0 * self.width * block + 2.0 * self.width
