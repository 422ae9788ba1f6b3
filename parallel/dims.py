"""ParallelDims: the (dp, pp, tp, sp) layout of a run and its DeviceMesh.

world = dp · pp · tp · sp. Mesh dimension order, outermost first, is (pp, dp, sp, tp): tensor
parallel ranks are adjacent (same node, fastest links), pipeline stages furthest apart.
"""
from __future__ import annotations

from dataclasses import dataclass


class LayoutError(ValueError):
    """A parallel layout that cannot work (one line, with the fix)."""


@dataclass(frozen=True)
class ParallelDims:
    dp: int = 1
    pp: int = 1
    tp: int = 1
    sp: int = 1

    @classmethod
    def from_config(cls, pcfg, world: int) -> ParallelDims:
        for name in ("tp", "pp", "sp"):
            if getattr(pcfg, name) < 1:
                raise LayoutError(f"parallel.{name}={getattr(pcfg, name)} must be >= 1")
        inner = pcfg.tp * pcfg.pp * pcfg.sp
        dp = pcfg.dp if pcfg.dp > 0 else world // inner
        dims = cls(dp=dp, pp=pcfg.pp, tp=pcfg.tp, sp=pcfg.sp)
        if dims.world != world or dp < 1:
            raise LayoutError(
                f"parallel layout dp={pcfg.dp} pp={pcfg.pp} tp={pcfg.tp} sp={pcfg.sp} needs "
                f"{max(1, dp) * inner} processes but the world size is {world}; "
                "set parallel.dp=-1 or change the process count"
            )
        return dims

    @property
    def world(self) -> int:
        return self.dp * self.pp * self.tp * self.sp

    @property
    def model_parallel(self) -> int:
        """Devices that share one model replica's work (tokens/s per device divides by this)."""
        return self.pp * self.tp * self.sp

    def build_mesh(self, device_type: str):
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(device_type, (self.pp, self.dp, self.sp, self.tp),
                                mesh_dim_names=("pp", "dp", "sp", "tp"))
