"""State-collapse mitigations for the recurrent mixers (M: SSD, R: RG-LRU) — DESIGN.md §7.

Recurrent LMs trained at length T often fail past T because the state, never asked to hold
more than T tokens, keeps accumulating ("state collapse", Chen et al. 2024, Stuffed Mamba).
Three training-free switches (also usable during training), all acting on the generic
elementwise-decay recurrence both mixers share,

    S_t = a_t ⊙ S_{t−1} + u_t        (M: a_t = exp(Δ_t·A) per head, u_t = Δ_t·x_t ⊗ B_t;
                                      R: a_t per channel,           u_t = √(1−a_t²)·i_t·x_t)

1. forget more (`collapse_decay_scale` λ ≥ 1, `collapse_write_scale` γ ≤ 1): a_t → a_t^λ
   (Δ·A → λ·Δ·A for SSD), u_t → γ·u_t (for SSD through B → γ·B, so the D·x skip is untouched).
   Exact in every path. For R the input normaliser √(1−a²) keeps the unscaled a.
2. state normalisation (`collapse_state_norm` = bound β > 0): after every update each head's
   state is rescaled to norm ≤ β. Step path: exact. Parallel path: *chunk-level approximation*
   — the sequence is cut into chunks (`collapse_norm_chunk` tokens), the kernel runs per chunk
   and only the carried state is renormalised between chunks; outputs inside a chunk read
   un-normalised states. (A per-token bound is not a linear recurrence, so no parallel scan
   computes it exactly.)
3. sliding window by state difference (`collapse_window` = w): Ŝ_t = S_t − (Π_{r=t−w+1..t} a_r)·S_{t−w},
   which for scalar (M) or elementwise (R) decay equals the state recomputed from zero over the
   last w tokens — exact. Paths: R parallel = that difference on the scan's states; M parallel
   = the same quantity via the banded (windowed) SSD quadratic form, chunked over queries
   (M's kernel does not return every state); step = the incremental form of the same
   difference, Ŝ_t = a_t·Ŝ_{t−1} + u_t − (Π_{r=t−w+1..t} a_r)·u_{t−w}, with a ring buffer of
   the last w (u, log a) — cache `WindowCache`. The initial state (state passing) counts as an
   input at position −1: it is inside the window while t < w − 1. A forward pass that
   *starts* from a WindowCache (chunked state passing) treats its Ŝ as that input (approximate:
   buffered inputs leave the window late); prefill → step decoding is exact.
A document boundary drops everything before it, as in the kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.segments import compute_dtype, segment_ids


@dataclass
class CollapseSettings:
    decay_scale: float = 1.0
    write_scale: float = 1.0
    state_norm: float = 0.0
    window: int = 0
    norm_chunk: int = 64

    @property
    def active(self) -> bool:
        return self.decay_scale != 1.0 or self.write_scale != 1.0 or self.state_norm > 0 or self.window > 0


def settings_from(cfg) -> CollapseSettings:
    """The mitigation switches of a ModelConfig (missing fields = off)."""
    return CollapseSettings(getattr(cfg, "collapse_decay_scale", 1.0), getattr(cfg, "collapse_write_scale", 1.0),
                            getattr(cfg, "collapse_state_norm", 0.0), getattr(cfg, "collapse_window", 0),
                            getattr(cfg, "collapse_norm_chunk", 64))


def validate(s: CollapseSettings) -> None:
    if s.decay_scale <= 0 or s.write_scale <= 0:
        raise ValueError("model.collapse_decay_scale and model.collapse_write_scale must be > 0 (1 = off)")
    if s.state_norm < 0 or s.window < 0 or s.norm_chunk <= 0:
        raise ValueError("model.collapse_state_norm and model.collapse_window must be >= 0 (0 = off), "
                         "model.collapse_norm_chunk > 0")
    if s.state_norm > 0 and s.window > 0:
        raise ValueError("model.collapse_state_norm and model.collapse_window are exclusive; set one of them to 0")


@dataclass
class WindowCache:
    """Recurrent state under the state-difference window: Ŝ plus the last w inputs and log-decays.

    u_buf [B, w, *state] and loga_buf [B, w, *decay] hold positions t−w..t−1 (oldest first)."""
    state: torch.Tensor
    u_buf: torch.Tensor
    loga_buf: torch.Tensor

    def detach(self) -> WindowCache:
        return WindowCache(self.state.detach(), self.u_buf.detach(), self.loga_buf.detach())


def plain_state(state):
    """The state tensor itself, whether or not it is wrapped in a WindowCache."""
    return state.state if isinstance(state, WindowCache) else state


def clip_norm(state: torch.Tensor, bound: float, head_dims: int, heads: int = 0) -> torch.Tensor:
    """Rescale each head so its L2 norm is at most `bound`. The leading `head_dims` dims index
    (batch, head) and the rest is one head's state; with `heads`, a [B, d] state is first viewed
    as [B, heads, d/heads] (R's block-diagonal heads)."""
    if heads:
        return clip_norm(state.view(state.shape[0], heads, -1), bound, 2).view_as(state)
    flat = state.flatten(head_dims)
    norm = flat.norm(dim=-1, keepdim=True)
    scale = torch.clamp(bound / norm.clamp_min(1e-30), max=1.0)
    return (flat * scale).view_as(state)


# ---------------------------------------------------------------------------------- step path

def recurrent_step(s: CollapseSettings, state, log_a: torch.Tensor, u: torch.Tensor, head_dims: int = 2,
                   heads: int = 0):
    """One update S = a·S + u with the mitigations; log_a broadcasts against u. Returns the new state
    (tensor, or WindowCache when s.window) and the tensor the output reads."""
    log_a = log_a * s.decay_scale
    u = u * s.write_scale
    if s.window <= 0:
        new = torch.exp(log_a) * plain_state(state) + u
        if s.state_norm > 0:
            new = clip_norm(new, s.state_norm, head_dims, heads)
        return new, new
    if not isinstance(state, WindowCache):
        state = init_window_cache(state, u, log_a, s.window)
    old_u = state.u_buf[:, 0]
    log_p = state.loga_buf[:, 1:].sum(1) + log_a            # Σ log a over (t−w, t]
    new = torch.exp(log_a) * state.state + u - torch.exp(log_p) * old_u
    cache = WindowCache(new, torch.cat([state.u_buf[:, 1:], u[:, None]], 1),
                        torch.cat([state.loga_buf[:, 1:], log_a[:, None]], 1))
    return cache, new


def init_window_cache(state: torch.Tensor | None, u_like: torch.Tensor, loga_like: torch.Tensor,
                      w: int) -> WindowCache:
    """A WindowCache continuing from a plain state, which becomes the input at position −1."""
    b = u_like.shape[0]
    st = torch.zeros_like(u_like) if state is None else state.to(u_like.dtype)
    u_buf = u_like.new_zeros((b, w, *u_like.shape[1:]))
    u_buf[:, -1] = st
    loga_shape = (b, *loga_like.shape[1:])
    return WindowCache(st, u_buf, loga_like.new_zeros((b, w, *loga_shape[1:])))


# ---------------------------------------------------------------------------------- parallel paths

def _chunked_normalised(run, t: int, chunk: int, init, doc_ids, bound: float, head_dims: int):
    """Run `run(sl, init, doc)` per chunk; renormalise the carried state at chunk edges.

    The kernel contract always seeds token 0 with init, so a carried state is zeroed here for
    rows whose chunk starts a new document."""
    outs, state = [], init
    for c0 in range(0, t, chunk):
        sl = slice(c0, min(t, c0 + chunk))
        doc = None if doc_ids is None else doc_ids[:, sl]
        if state is not None:
            state = clip_norm(state, bound, head_dims)
            if doc_ids is not None and c0 > 0:
                keep = (doc_ids[:, c0] == doc_ids[:, c0 - 1]).to(state.dtype)
                state = state * keep.view(-1, *([1] * (state.ndim - 1)))
        y, state = run(sl, state, doc)
        outs.append(y)
    return torch.cat(outs, dim=1), clip_norm(state, bound, head_dims)


def _window_ok(s: CollapseSettings, sp) -> None:
    if sp is not None and (s.window > 0 or s.state_norm > 0):
        raise NotImplementedError("collapse_window / collapse_state_norm do not run under sequence "
                                  "parallelism; evaluate with parallel.sp=1")


def ssd_forward(s: CollapseSettings, ssd_fn, x, dt, A, B, C, *, D=None, initial_state=None, doc_ids=None,
                chunk_size: int = 64, sp=None, return_window_cache: bool = False):
    """SSD with the mitigations: (y [b,t,h,p], final state). Same inputs as kernels.ssd.ssd."""
    _window_ok(s, sp)
    A = A * s.decay_scale
    B = B * s.write_scale if s.write_scale != 1.0 else B
    init = plain_state(initial_state)
    if s.window > 0:
        return ssd_windowed(x, dt, A, B, C, s.window, D=D, initial_state=init, doc_ids=doc_ids,
                            chunk_size=chunk_size, return_cache=return_window_cache)
    if sp is not None:
        return sp.ssd(ssd_fn, x, dt, A, B, C, D=D, doc_ids=doc_ids, initial_state=init, chunk_size=chunk_size)
    if s.state_norm > 0:
        def run(sl, st, doc):
            return ssd_fn(x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], D=D, initial_state=st, doc_ids=doc,
                          return_final_state=True, chunk_size=chunk_size)
        return _chunked_normalised(run, x.shape[1], s.norm_chunk, init, doc_ids, s.state_norm, 2)
    return ssd_fn(x, dt, A, B, C, D=D, initial_state=init, doc_ids=doc_ids, return_final_state=True,
                  chunk_size=chunk_size)


def scan_forward(s: CollapseSettings, scan_fn, a, x, *, initial_state=None, doc_ids=None, heads: int = 1,
                 sp=None, return_window_cache: bool = False):
    """Linear scan h_t = a_t·h_{t−1} + x_t with the mitigations: (h [b,t,d], final state)."""
    _window_ok(s, sp)
    if s.decay_scale != 1.0:
        a = torch.exp(torch.log(a.clamp_min(1e-38)) * s.decay_scale)
    x = x * s.write_scale if s.write_scale != 1.0 else x
    init = plain_state(initial_state)
    if sp is not None:
        return sp.linear_scan(scan_fn, a, x, doc_ids=doc_ids, initial_state=init)
    if s.state_norm > 0:
        d = x.shape[-1]

        def run(sl, st, doc):
            h, fin = scan_fn(a[:, sl], x[:, sl], initial_state=None if st is None else st.flatten(1),
                             doc_ids=doc, return_final_state=True)
            return h, fin.view(-1, heads, d // heads)
        st0 = None if init is None else init.view(-1, heads, d // heads)
        h, fin = _chunked_normalised(run, x.shape[1], s.norm_chunk, st0, doc_ids, s.state_norm, 2)
        return h, fin.flatten(1)
    h, fin = scan_fn(a, x, initial_state=init, doc_ids=doc_ids, return_final_state=True)
    if s.window <= 0:
        return h, fin
    return scan_window_difference(h, a, x, init, doc_ids, s.window, return_window_cache)


def _segments(doc_ids, b, t, device):
    if doc_ids is None:
        return torch.zeros(b, t, dtype=torch.int64, device=device)
    return segment_ids(doc_ids)


def scan_window_difference(h, a, x, init, doc_ids, w: int, return_cache: bool = False):
    """ĥ_t = h_t − (Π_{r=t−w+1..t} a_r)·h_{t−w} from the scan's states (h_{−1} = init, earlier = 0)."""
    b, t, d = h.shape
    acc = h.dtype
    loga = torch.log(a.to(torch.float64).clamp_min(1e-300))
    seg = _segments(doc_ids, b, t, h.device)
    L = torch.nn.functional.pad(loga.cumsum(1), (0, 0, 1, 0))                 # L[i] = Σ_{r<i} log a_r
    h_prev = torch.cat([h.new_zeros(b, max(0, w - 1), d),
                        (h.new_zeros(b, 1, d) if init is None else init.to(acc)[:, None]), h], dim=1)
    lag = h_prev[:, :t]                                                        # h_{t−w}
    idx = torch.arange(t, device=h.device)
    lo = (idx - w + 1).clamp(min=0)                                            # Π over r ∈ (t−w, t]
    log_p = L[:, idx + 1] - L[:, lo]
    seg_lo = seg[:, (idx - w).clamp(min=0)]
    same = (seg == seg_lo) if doc_ids is not None else torch.ones_like(seg, dtype=torch.bool)
    # a lag inside the row needs no boundary in (t−w, t]; the initial state needs none in [0, t]
    same = torch.where((idx - w >= 0)[None], same, seg == 0)
    p = torch.exp(log_p).to(acc) * same[..., None].to(acc)
    out = h - p * lag
    fin = out[:, -1]
    if not return_cache:
        return out, fin
    return out, _window_cache_from_inputs(fin, x[:, -w:], loga.to(acc)[:, -w:], init, seg[:, -w:], w)


def _window_cache_from_inputs(fin, u, loga, init, seg, w: int) -> WindowCache:
    """WindowCache at the end of a forward: the last w inputs of the final document (init as −1)."""
    b, t = u.shape[:2]
    u_ext = torch.cat([u.new_zeros((b, w, *u.shape[2:])),
                       (u.new_zeros((b, 1, *u.shape[2:])) if init is None else init.to(u.dtype)[:, None]), u], 1)
    loga_ext = torch.cat([loga.new_zeros((b, w + 1, *loga.shape[2:])), loga], 1)
    seg_ext = torch.cat([seg[:, :1].expand(b, w + 1), seg], 1)
    live = (seg_ext[:, -w:] == seg[:, -1:])
    shape = (b, w) + (1,) * (u.ndim - 2)
    u_buf = u_ext[:, -w:] * live.view(shape).to(u.dtype)
    return WindowCache(fin, u_buf, loga_ext[:, -w:])


def ssd_windowed(x, dt, A, B, C, w: int, *, D=None, initial_state=None, doc_ids=None, chunk_size: int = 64,
                 return_cache: bool = False):
    """SSD restricted to the last w tokens (state recomputed from zero over (t−w, t]), exactly, by
    the banded quadratic form y_t = Σ_{s∈(t−w,t]} (C_t·B_s)·exp(Σ_{r=s+1..t} Δ_r A)·Δ_s·x_s, chunked
    over queries (memory O(b·Q·(Q+w)·h)); the initial state enters while t < w − 1."""
    b, t, h, p = x.shape
    g = B.shape[2]
    acc = compute_dtype(x.dtype)
    xf, dtf = x.to(acc), dt.to(acc)
    Bh = B.to(acc).repeat_interleave(h // g, dim=2)
    Ch = C.to(acc).repeat_interleave(h // g, dim=2)
    loga64 = dt.to(torch.float64) * A.to(torch.float64)                         # [b,t,h]
    L = loga64.cumsum(1)
    seg = _segments(doc_ids, b, t, x.device)
    pos = torch.arange(t, device=x.device)
    ys = []
    for q0 in range(0, t, chunk_size):
        q1 = min(t, q0 + chunk_size)
        k0 = max(0, q0 - w + 1)
        qi, ki = pos[q0:q1], pos[k0:q1]
        mask = (ki[None] <= qi[:, None]) & (ki[None] > qi[:, None] - w)           # [Q,K]
        mask = mask[None] & (seg[:, q0:q1, None] == seg[:, None, k0:q1])         # [b,Q,K]
        diff = L[:, q0:q1, None] - L[:, None, k0:q1]                             # [b,Q,K,h]
        decay = torch.exp(diff.masked_fill(~mask[..., None], float("-inf"))).to(acc)
        cb = torch.einsum("bqhn,bkhn->bqkh", Ch[:, q0:q1], Bh[:, k0:q1])
        m = cb * decay * dtf[:, None, k0:q1]
        ys.append(torch.einsum("bqkh,bkhp->bqhp", m, xf[:, k0:q1]))
    y = torch.cat(ys, 1)
    init = None if initial_state is None else initial_state.to(acc)
    if init is not None:
        live = ((pos < w - 1)[None] & (seg == 0)).to(acc)                         # [b,t]
        w_init = torch.exp(L).to(acc) * live[..., None]                          # [b,t,h]
        y = y + torch.einsum("bthn,bhpn->bthp", Ch, init) * w_init[..., None]
    if D is not None:
        y = y + D.to(acc)[:, None] * xf
    # final windowed state: the same sum at t = T−1, as a state [b,h,p,n]
    k0 = max(0, t - w)
    wk = (torch.exp(L[:, -1:] - L[:, k0:]) * (seg[:, k0:] == seg[:, -1:])[..., None]).to(acc)   # [b,K,h]
    fin = torch.einsum("bkh,bkhp,bkhn->bhpn", wk * dtf[:, k0:], xf[:, k0:], Bh[:, k0:])
    if init is not None and t - 1 < w - 1:
        fin = fin + init * (torch.exp(L[:, -1]).to(acc) * (seg[:, -1:] == 0).to(acc))[..., None, None]
    y = y.to(x.dtype)
    if not return_cache:
        return y, fin
    k0 = max(0, t - w)                 # only the last w inputs are kept (u is [.., h, p, n] per token)
    u = (dtf[:, k0:, :, None, None] * xf[:, k0:, :, :, None]) * Bh[:, k0:, :, None, :]
    return y, _window_cache_from_inputs(fin, u, loga64[:, k0:].to(acc)[..., None, None], init, seg[:, k0:], w)


def set_collapse(model, s: CollapseSettings) -> int:
    """Switch the mitigations of every recurrent mixer of `model` (training-free, e.g. at evaluation);
    returns how many mixers were changed."""
    validate(s)
    n = 0
    for m in model.modules():
        if isinstance(getattr(m, "collapse", None), CollapseSettings):
            m.collapse = s
            n += 1
    return n
