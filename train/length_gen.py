"""Length-generalisation training interventions for recurrent layers (config section [lengthgen]).

A recurrent model trained only from a zero state at length T never sees the states it will
reach after T tokens; these interventions show it such states during training:
- state_init = "noise": every row starts from S_0 ~ N(0, noise_std²) in each recurrent layer;
- state_init = "fitted_noise": the same, with σ per (layer, head) fitted as a running RMS
  (momentum fit_momentum) of the final states the model actually produces — starts at noise_std;
- state_init = "passing": S_0 is the detached final state of a *different* row (rows rolled by
  one) of the previous forward pass — a realistic "long prefix" state at no extra cost;
- tbptt = true: truncated BPTT — each row continues the same row of the previous step (the
  row-stream loader, data/row_streams.py, keeps documents continuous across steps), starting
  from that row's detached final state (conv tail and recurrent state), zeroed where a new
  document starts at the row start; gradients stop at the step boundary.
Only the recurrent state (M, R) is initialised; attention layers are untouched. What carries
from step to step (the last final states, fitted σ, the noise generator) is per-rank state that
the checkpoint keeps (state_dict, in rank-RRRRR.pt), so a resumed run continues exactly; after a
change of world size it starts again from the configured initial state.
The trainer passes it to the engine as its forward hooks (parallel.engine.ForwardHooks:
forward_kwargs / after_forward around every micro-batch forward).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.collapse import WindowCache
from models.mixer_spec import mixer_spec


@dataclass
class LayerInfo:
    index: int
    heads: int            # SSD: state dim 1; R: width split into `heads` blocks


def map_state(fn, st):
    """Apply fn to every tensor of a recurrent state (tensor, WindowCache or None)."""
    if st is None:
        return None
    if isinstance(st, WindowCache):
        return WindowCache(fn(st.state), fn(st.u_buf), fn(st.loga_buf))
    return fn(st)


def recurrent_layers(model) -> list[LayerInfo]:
    """The layers whose MixerSpec declares a recurrent state, with its number of heads."""
    out = []
    for i, block in enumerate(model.layers):
        spec = mixer_spec(block.symbol)
        if spec.is_recurrent:
            out.append(LayerInfo(i, spec.state_heads(block.mixer)))
    return out


def per_head_rms(state: torch.Tensor, heads: int) -> torch.Tensor:
    """RMS of a [B, h, p, n] (SSD) or [B, d] (R) state per head -> [heads]."""
    view = state.detach().float().reshape(state.shape[0], heads, -1)
    return view.pow(2).mean(dim=(0, 2)).sqrt()


def _rows(st) -> int | None:
    """Batch rows of a recurrent state, or of a layer's (conv, recurrent) pair; None if empty."""
    if isinstance(st, tuple):
        return next((r for r in map(_rows, st) if r is not None), None)
    if st is None:
        return None
    return (st.state if isinstance(st, WindowCache) else st).shape[0]


class LengthGen:
    """Chooses the initial recurrent states of each training forward and records the final ones."""

    def __init__(self, lg_cfg, model, seed: int = 0):
        self.mode = "tbptt" if lg_cfg.tbptt else lg_cfg.state_init
        self.noise_std, self.momentum = lg_cfg.noise_std, lg_cfg.fit_momentum
        self.layers = recurrent_layers(model)
        self.model = model
        self.sigma: dict[int, torch.Tensor] = {}       # fitted σ per layer: [heads]
        self.prev: dict[int, tuple] | None = None      # last forward's detached final states
        self.gen = torch.Generator().manual_seed(seed + 7717)

    @property
    def needs_final_states(self) -> bool:
        return self.mode in ("fitted_noise", "passing", "tbptt")

    def _noise_like(self, info: LayerInfo, shape, device, dtype) -> torch.Tensor:
        z = torch.randn(shape, generator=self.gen, dtype=torch.float32).to(device=device, dtype=dtype)
        sigma = self.sigma.get(info.index) if self.mode == "fitted_noise" else None
        if sigma is None:
            return z * self.noise_std
        view = z.reshape(shape[0], info.heads, -1) * sigma.to(device=device, dtype=dtype)[None, :, None]
        return view.reshape(shape)

    def initial_states(self, batch) -> dict[int, tuple] | None:
        b, device = batch.tokens.shape[0], batch.tokens.device
        if self.mode in ("noise", "fitted_noise"):
            out = {}
            for info in self.layers:
                zero = self.model.layers[info.index].mixer.init_cache(b, device)[1]
                out[info.index] = (None, self._noise_like(info, zero.shape, device, zero.dtype))
            return out
        if self.prev is None:
            return None
        if self.mode == "passing":      # a different sequence: row r gets row r-1's final state
            return {i: (None, map_state(lambda t: t.roll(1, dims=0), st[1])) for i, st in self.prev.items()
                    if st[1] is not None and _rows(st[1]) == b}
        if self.mode == "tbptt":        # the same row, continued; zero where a new document starts
            keep = (batch.positions[:, 0] > 0)

            def mask(t):
                return t * keep.view(-1, *([1] * (t.ndim - 1))).to(t.dtype)
            return {i: (map_state(mask, st[0]), map_state(mask, st[1])) for i, st in self.prev.items()
                    if _rows(st) == b}
        return None

    def state_dict(self) -> dict:
        """What carries across steps, on the CPU: last final states, fitted σ, noise generator."""
        cpu = lambda t: t.detach().cpu()  # noqa: E731
        prev = None if self.prev is None else {i: tuple(map_state(cpu, s) for s in st) for i, st in self.prev.items()}
        return {"mode": self.mode, "prev": prev, "sigma": {i: cpu(v) for i, v in self.sigma.items()},
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict, device) -> None:
        if state.get("mode") != self.mode:
            raise ValueError(f"the checkpoint's lengthgen state is for mode {state.get('mode')!r}, this run uses "
                             f"{self.mode!r}; resume with the same [lengthgen] settings")
        move = lambda t: t.to(device)  # noqa: E731
        prev = state["prev"]
        self.prev = None if prev is None else {i: tuple(map_state(move, s) for s in st) for i, st in prev.items()}
        self.sigma = {i: move(v) for i, v in state["sigma"].items()}
        self.gen.set_state(state["generator"])

    def forward_kwargs(self, batch) -> dict:
        """Extra keyword arguments for the model's forward on this micro-batch."""
        return {"initial_states": self.initial_states(batch), "return_states": self.needs_final_states}

    def after_forward(self, out, batch):
        """Record the (detached) final states; returns the logits."""
        if not self.needs_final_states:
            return out
        logits, finals = out
        keep = {i.index for i in self.layers}
        self.prev = {i: tuple(map_state(torch.Tensor.detach, s) for s in st)
                     for i, st in finals.items() if i in keep}
        if self.mode == "fitted_noise":
            for info in self.layers:
                st = self.prev.get(info.index)
                if st is None or st[1] is None:
                    continue
                rms = per_head_rms(st[1].state if isinstance(st[1], WindowCache) else st[1], info.heads)
                old = self.sigma.get(info.index)
                self.sigma[info.index] = rms if old is None else self.momentum * old + (1 - self.momentum) * rms
        return logits


def build_length_gen(cfg, module, pstate) -> LengthGen | None:
    """The configured intervention for `module` (the model itself, not a DDP/FSDP wrapper), or
    None when [lengthgen] is all off (the default)."""
    lg = cfg.lengthgen
    if lg.state_init == "zero" and not lg.tbptt:
        return None
    from parallel.dims import LayoutError

    if lg.tbptt and lg.state_init != "zero":
        raise LayoutError("lengthgen.tbptt carries each row's own state; set lengthgen.state_init=zero with it")
    dims = pstate.dims
    if dims.sp > 1 or dims.pp > 1:
        raise LayoutError("lengthgen interventions need parallel.sp=1 and parallel.pp=1 (initial states are "
                          "per full sequence)")
    if lg.tbptt and cfg.data.source != "synthetic":
        raise LayoutError("lengthgen.tbptt needs data.source=synthetic (the row-stream loader)")
    if not recurrent_layers(module):
        raise LayoutError(f"lengthgen.state_init/tbptt act on M or R layers; model.pattern={cfg.model.pattern!r} "
                          "has none")
    return LengthGen(lg, module, cfg.train.seed + pstate.rank)
