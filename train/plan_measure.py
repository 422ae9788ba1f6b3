"""Measured memory on any device, CPU included: the peak of live tensor storage during a call.

CPU PyTorch keeps no allocator statistics (there is no torch.cpu.max_memory_allocated), so
`StorageTracker` watches every ATen op through a TorchDispatchMode: each output's storage is
recorded with a weak reference, and after every op the bytes of the storages still alive are
summed. The maximum of that sum is the peak of tensor memory created inside the `with` block:
activations saved for backward, logits, gradients, temporaries between ops. Storages that
existed before (parameters) are not counted, and neither are a kernel's private scratch buffers
nor the allocator's caching. The planner's activation estimate is tested against it
(tests/test_plan_memory.py) and benchmarks/memory_loss.py measures the chunked loss with it.
"""
from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class StorageTracker(TorchDispatchMode):
    """`with StorageTracker() as m: ...` then m.peak (bytes) and m.settle() (bytes still alive)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if storage.data_ptr() not in inputs:      # a view or in-place result allocates nothing
                    self.record(storage)
        self.update()
        return out

    def settle(self) -> int:
        """Bytes alive now (after the temporaries of the last op were freed)."""
        self.update()
        return self.current

    def record(self, storage) -> None:
        key = storage.data_ptr()
        if key and (key not in self.live or self.live[key][0].expired()):
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())

    def update(self) -> None:
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            del self.live[k]
        self.current = sum(n for _, n in self.live.values())
        self.peak = max(self.peak, self.current)
