"""`python -m kernels`: which implementation each op takes on this machine.

Prints the LONGWEAVE_KERNELS mode, the optional fused packages found, and for each op the path
the dispatcher picks for typical training inputs (bf16 on CUDA, fp32 on CPU). Nothing runs;
only the dispatchers are asked, so this is instant and safe on a login node.
"""
from __future__ import annotations

import argparse

import torch

from kernels.attention import select_attention_path
from kernels.conv1d import select_conv1d_path
from kernels.dispatch import has_module, kernel_mode
from kernels.rglru import select_scan_path
from kernels.ssd import select_ssd_path


def path_table(device: str, dtype: torch.dtype) -> list[tuple[str, str]]:
    """(case, path) rows, asked with tiny empty tensors on `device`."""
    q = torch.empty(1, 128, 8, 128, device=device, dtype=dtype)
    x = torch.empty(1, 128, 256, device=device, dtype=dtype)
    w = torch.empty(256, 4, device=device, dtype=dtype)
    xs = torch.empty(1, 128, 8, 64, device=device, dtype=dtype)
    xs_long = torch.empty(1, 1, 1, 64, device=device, dtype=dtype).expand(1, 65536, 32, 64)  # no memory
    return [
        ("attention: causal, no LSE (plain)", select_attention_path(q, 128, 0, 0, False, plain_causal=True)),
        ("attention: causal + doc masks / window", select_attention_path(q, 128, 0, 0, False)),
        ("attention: with LSE (sequence parallel)", select_attention_path(q, 128, 0, 0, True)),
        ("attention: LSE, query/key offsets", select_attention_path(q, 128, 128, 0, True)),
        ("ssd (Mamba-2 chunk scan), 128 tokens x 8 heads", select_ssd_path(xs, 64)),
        ("ssd (Mamba-2 chunk scan), 64K tokens x 32 heads", select_ssd_path(xs_long, 64)),
        ("linear scan (RG-LRU)", select_scan_path(x)),
        ("causal conv1d", select_conv1d_path(x, w, None, "silu")),
        ("causal conv1d + left context", select_conv1d_path(x, w, torch.empty(1, 3, 256), "silu")),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    print(f"LONGWEAVE_KERNELS mode: {kernel_mode()}")
    found = {m: has_module(m) for m in ("triton", "flash_attn", "mamba_ssm", "causal_conv1d")}
    print("optional packages: " + ", ".join(f"{m}={'yes' if ok else 'no'}" for m, ok in found.items()))
    print(f"device: {args.device}  dtype: {str(dtype).replace('torch.', '')}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible here; run without --device to see this machine's paths")
        return 2
    rows = path_table(args.device, dtype)
    width = max(len(c) for c, _ in rows)
    for case, path in rows:
        print(f"  {case:<{width}}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
