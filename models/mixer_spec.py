"""MixerSpec: everything the rest of the system needs to know about one kind of sublayer, and
the registry of them.

A mixer type is declared once, in a spec module beside its model file (models/attention_spec.py,
mlp_spec.py, mamba2_spec.py, griffin_spec.py), and registered under its pattern symbol. Nothing
else dispatches on pattern symbols or mixer classes: the model builder, the weight-decay groups,
the FLOP count (MFU and the pipeline cut), the layout validation, tensor parallelism and the
[lengthgen] state access all ask the spec (docs/adding-a-mixer.md).
`models` never imports `parallel`: a tensor-parallel plan is data — a TensorParallelPlan naming
column/row-parallel submodules, or the "module:function" name of a function in parallel/ that
shards the mixer — and parallel/tensor/plan.py interprets it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class TensorParallelPlan:
    """Megatron-style split by heads: `colwise` linears split their outputs, `rowwise` their inputs
    (one all-reduce of the output). The mixer must read head counts from its (local) weight shapes."""
    colwise: tuple[str, ...] = ()
    rowwise: tuple[str, ...] = ()


@dataclass(frozen=True)
class MixerSpec:
    symbol: str                                   # one character in model.pattern
    description: str                              # for pattern errors and docs
    module_class: type[nn.Module]
    build: Callable[..., nn.Module]               # (ModelConfig, layer_idx) -> the mixer
    config_fields: tuple[str, ...] = ()           # ModelConfig fields the mixer reads
    validate: Callable | None = None              # (ModelConfig) -> None, raises ValueError (one line)
    # forward FLOPs per token outside nn.Linear layers: (mixer, seq_len) -> float; None: linears only
    flops: Callable[[nn.Module, int], float] | None = None
    # tensor parallelism: a TensorParallelPlan, a "module:function" in parallel/, or None (unsupported)
    tp_plan: TensorParallelPlan | str | None = None
    # (ModelConfig, tp) -> the first reason the mixer cannot be split over tp ranks, or None
    tp_check: Callable | None = None
    # ctx.sp hooks the mixer calls (parallel/sequence/hooks.py); None: not sequence-parallel capable
    sp_hooks: tuple[str, ...] | None = ()
    no_decay: tuple[str, ...] = ()                # parameter leaf names kept out of weight decay
    # recurrent state access ([lengthgen], collapse watch): mixer -> heads of its state; None: stateless
    state_heads: Callable[[nn.Module], int] | None = None

    @property
    def is_recurrent(self) -> bool:
        return self.state_heads is not None


_REGISTRY: dict[str, MixerSpec] = {}
# the documented symbol order (* W M R -); any other models/*_spec.py is found and loaded after them
_BUILTINS = ("models.attention_spec", "models.mamba2_spec", "models.griffin_spec", "models.mlp_spec")
_loaded = False


def register(spec: MixerSpec) -> MixerSpec:
    """Add (or replace) the spec for spec.symbol; returns it."""
    _load_builtins()
    if len(spec.symbol) != 1 or spec.symbol in "()x \t\n" or spec.symbol.isdigit():
        raise ValueError(f"mixer symbol {spec.symbol!r} must be one character other than '(', ')', 'x' and digits")
    _REGISTRY[spec.symbol] = spec
    return spec


def unregister(symbol: str) -> None:
    """Remove a registered spec (tests that register a mixer of their own clean up with it)."""
    _REGISTRY.pop(symbol, None)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        import importlib

        _loaded = True
        for name in (*_BUILTINS, *_discovered()):      # each module registers its specs on import
            importlib.import_module(name)


def _discovered() -> list[str]:
    """Other `models/*_spec.py` modules: a new built-in mixer needs no line here."""
    import pkgutil

    import models

    found = (m.name for m in pkgutil.iter_modules(models.__path__, "models.") if m.name.endswith("_spec"))
    return sorted(name for name in found if name not in _BUILTINS and name != __name__)


def registered() -> dict[str, MixerSpec]:
    """Symbol -> spec, built-ins first in their documented order (* W M R -), then additions."""
    _load_builtins()
    return dict(_REGISTRY)


def mixer_spec(symbol: str) -> MixerSpec:
    specs = registered()
    if symbol not in specs:
        raise NotImplementedError(f"layer symbol {symbol!r} is not implemented; use {', '.join(map(repr, specs))} "
                                  "in model.pattern")
    return specs[symbol]


def specs_in(pattern_symbols) -> list[MixerSpec]:
    """The distinct specs a parsed pattern uses, in registry order."""
    used = set(pattern_symbols)
    return [s for sym, s in registered().items() if sym in used]


def divisible(value: int, what: str, key: str, tp: int) -> str | None:
    """The standard tensor-parallel divisibility message, or None when `value` splits over tp."""
    if value % tp:
        return f"{what} ({value}) is not divisible by parallel.tp={tp}; change {key} or parallel.tp"
    return None
