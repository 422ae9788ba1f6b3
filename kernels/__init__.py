"""Numerics: one folder per op (attention, ssd, rglru, conv1d), each with a plain reference,
a PyTorch path that runs everywhere, and fused paths when available. `kernels.dispatch`
chooses; LONGWEAVE_KERNELS=reference|torch|triton forces a path."""
