"""Non-finite steps: a NaN/inf loss or gradient norm is caught before the optimizer step.

Every rank votes (its local loss sum, the global grad norm) in one all-reduce, so all ranks take
the same decision at the same step:
- train.on_nonfinite = "stop": the run ends with NonFiniteError (one line, exit 2) before the
  update; the weights and every checkpoint on disk stay finite;
- "skip": the step's update is dropped (gradients zeroed, optimizer untouched), the count goes
  to TensorBoard (train/nonfinite_skipped) and the run stops after train.max_nonfinite skipped
  steps in a row.
With parallel.engine=deepspeed the engine applies its update inside its own step, before this
check runs, so there the guard can only stop the run (DeepSpeed skips overflowing fp16 steps itself).
"""
from __future__ import annotations

import math

import torch

from parallel.distributed import all_reduce
from train.errors import RunError


class NonFiniteError(RunError):
    """The loss or gradient norm stayed non-finite (one line, exit 2)."""


class NonFiniteGuard:
    def __init__(self, policy: str, max_in_row: int):
        self.policy = policy
        self.max_in_row = max_in_row
        self.in_row = 0
        self.skipped = 0          # total skipped steps in this run (TensorBoard)

    def skip_step(self, step: int, loss_sum: torch.Tensor, grad_norm) -> bool:
        """True when this step's update must be dropped; raises NonFiniteError when the run must stop.
        `step` is the number of the step being taken (1-based)."""
        local_bad = not math.isfinite(float(loss_sum)) or not math.isfinite(float(grad_norm))
        bad = all_reduce(torch.tensor([float(local_bad)], dtype=torch.float64)).item() > 0
        if not bad:
            self.in_row = 0
            return False
        self.in_row += 1
        self.skipped += 1
        if self.policy == "stop":
            raise NonFiniteError(f"the loss or gradient norm is not finite at step {step} (grad norm "
                                 f"{float(grad_norm)}); the step was not applied and no checkpoint is written; "
                                 "lower optim.lr, check the data, or set train.on_nonfinite=skip")
        if self.in_row >= self.max_in_row:
            raise NonFiniteError(f"{self.in_row} non-finite steps in a row (up to step {step}); stopping before "
                                 "any of them is applied; lower optim.lr or check the data (train.max_nonfinite)")
        return True
