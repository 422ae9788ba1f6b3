"""Swap a module's weights for local views during its forward, keeping parameter names.

Model code reads weights as attributes (`self.dt_bias`, `linear.weight`). A forward pre-hook
puts a view (a tensor-parallel shard's local tensor, or selected rows of a replicated weight)
in the module's instance __dict__, which Python finds before nn.Module's parameter lookup; a
forward hook removes it. Parameters stay registered under their single-process names, so
state dicts and checkpoints do not depend on the layout, and autograd carries gradients from
the view back to the parameter.
"""
from __future__ import annotations

from torch import nn


def local_views(module: nn.Module, views: dict, owner: nn.Module | None = None) -> None:
    """During owner's forward (default: module's), module.<name> reads views[name](parameter)
    instead of the parameter (owner: for submodules used through a method, not called)."""
    def pre(_mod, args):
        for name, fn in views.items():
            module.__dict__[name] = fn(module._parameters[name])

    def post(_mod, args, out):
        for name in views:
            module.__dict__.pop(name, None)

    (owner or module).register_forward_pre_hook(pre)
    (owner or module).register_forward_hook(post)
