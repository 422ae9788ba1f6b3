"""ParallelDims: the (dp, pp, tp, sp) layout of a run and its DeviceMesh.

world = dp · pp · tp · sp. Mesh dimension order, outermost first, is (pp, dp, sp, tp): tensor
parallel ranks are adjacent (same node, fastest links), pipeline stages furthest apart.
`validate_layout` rejects, before any process group work, layouts the model cannot be split
into (one line each, saying which setting to change).
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


def _symbols(pattern: str) -> list[str]:
    from models.pattern import parse_pattern

    return parse_pattern(pattern)


def validate_layout(dims: ParallelDims, model_cfg, pcfg=None, batch_size: int | None = None) -> None:
    """Raise LayoutError if `model_cfg` cannot be split as `dims` asks (tp divisibility, pp depth)."""
    symbols = _symbols(model_cfg.pattern)
    tp = dims.tp
    if tp > 1:
        def need(value: int, what: str, key: str) -> None:
            if value % tp:
                raise LayoutError(f"{what} ({value}) is not divisible by parallel.tp={tp}; "
                                  f"change {key} or parallel.tp")
        need(model_cfg.vocab_size, "the vocabulary size", "model.vocab_size")
        if any(s in "*W" for s in symbols):
            need(model_cfg.n_heads, "the number of attention heads", "model.n_heads")
            kv = model_cfg.kv_heads
            if kv % tp and tp % kv:
                raise LayoutError(f"model.n_kv_heads={kv} must divide or be divisible by parallel.tp={tp} "
                                  "(kv heads are split, or replicated when fewer than tp)")
        if "-" in symbols:
            need(model_cfg.mlp_hidden_size, "the MLP hidden size", "model.mlp_hidden")
        if "M" in symbols:
            d_inner = model_cfg.ssm_expand * model_cfg.d_model
            need(d_inner // model_cfg.ssm_headdim, "the number of Mamba-2 heads", "model.ssm_headdim")
            g = model_cfg.ssm_ngroups
            if g % tp and g != 1:
                raise LayoutError(f"model.ssm_ngroups={g} must be 1 or divisible by parallel.tp={tp} "
                                  "(groups are split over tp ranks, or one group is replicated)")
        if "R" in symbols:
            width = model_cfg.lru_width or model_cfg.d_model
            need(width, "the Griffin recurrent width", "model.lru_width")
            need(model_cfg.lru_heads or model_cfg.n_heads, "the Griffin gate blocks", "model.lru_heads")
    if dims.pp > 1:
        chunks = dims.pp * (2 if pcfg is not None and pcfg.pp_schedule == "interleaved_1f1b" else 1)
        if len(symbols) < chunks:
            raise LayoutError(f"the model has {len(symbols)} layers, fewer than the {chunks} pipeline stages "
                              "parallel.pp asks for; lower parallel.pp or add layers")
        if pcfg is not None and batch_size is not None:
            mb = pcfg.pp_microbatches
            if mb < 1 or batch_size % mb:
                raise LayoutError(f"data.batch_size={batch_size} is not divisible by parallel.pp_microbatches={mb}; "
                                  "make the batch a multiple of the micro-batch count")
            if pcfg.pp_schedule != "gpipe" and mb < dims.pp:
                raise LayoutError(f"parallel.pp_schedule={pcfg.pp_schedule!r} needs parallel.pp_microbatches >= "
                                  f"parallel.pp={dims.pp} (got {mb}); raise the micro-batch count")
