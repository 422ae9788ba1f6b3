"""Throughput, MFU and memory figures, and the TensorBoard writer.

MFU = achieved model FLOPs/s per device / the device's peak dense bf16 FLOPs/s. Peak figures
are the vendors' dense (no sparsity) tensor-core numbers; on CPU there is no MFU.
"""
from __future__ import annotations

import resource
from pathlib import Path

import torch

# Dense bf16 peak FLOP/s by device-name substring (first match wins; order matters).
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
]


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of `device`, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS:
        if key in name:
            return value
    return None


def max_memory_gb(device: torch.device) -> float:
    """Peak memory: allocator peak on CUDA, the process's max resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class TensorBoardLogger:
    """Rank-0 TensorBoard writer under <run>/tb (a no-op elsewhere or when disabled)."""

    def __init__(self, run_dir: str | Path, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer:
            for k, v in values.items():
                if v is not None:
                    self.writer.add_scalar(k, v, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer:
            self.writer.add_text(tag, text, step)

    def image(self, tag: str, img_hwc, step: int) -> None:
        if self.writer:
            self.writer.add_image(tag, img_hwc, step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer:
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


class StepLog:
    """Rank-0 `<run>/metrics.jsonl`: one JSON line per step with exact floats (loss, lr, grad norm).

    Unlike TensorBoard it is plain text that scripts and tests can read (`launch status` shows the
    last line; preemption tests compare losses bit for bit). Appended across restarts; after a
    resume from an earlier checkpoint a step may appear twice, and the last line for it wins.
    """

    def __init__(self, run_dir: str | Path, enabled: bool):
        self.fh = None
        if enabled:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.fh = open(Path(run_dir) / "metrics.jsonl", "a")

    def write(self, step: int, **values) -> None:
        if self.fh:
            import json
            import time

            self.fh.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh:
            self.fh.close()
            self.fh = None


def read_step_log(run_dir: str | Path) -> dict[int, dict]:
    """step -> the last record written for it (see StepLog)."""
    import json

    path = Path(run_dir) / "metrics.jsonl"
    records: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue   # a line cut short by a kill
            records[int(rec["step"])] = rec
    return records
