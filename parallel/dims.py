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


def validate_layout(dims: ParallelDims, model_cfg, pcfg=None, batch_size: int | None = None) -> None:
    """Raise LayoutError if `model_cfg` cannot be split as `dims` asks (tp divisibility, pp depth)."""
    from models.mixer_spec import specs_in
    from models.pattern import parse_pattern

    symbols = parse_pattern(model_cfg.pattern)
    specs = specs_in(symbols)
    if dims.tp > 1:
        validate_tensor_parallel(dims.tp, model_cfg, specs)
    if dims.sp > 1:
        validate_sequence_parallel(specs)
        if pcfg is not None:
            validate_sp_mode(dims, model_cfg, pcfg, specs)
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


def validate_tensor_parallel(tp: int, model_cfg, specs) -> None:
    """The vocabulary and every mixer (its MixerSpec's tp_check) must split over tp ranks."""
    from models.mixer_spec import divisible

    problem = divisible(model_cfg.vocab_size, "the vocabulary size", "model.vocab_size", tp)
    for spec in specs:
        if problem is not None:
            break
        if spec.tp_plan is None:
            problem = f"the {spec.description} ({spec.symbol!r}) has no tensor-parallel plan; set parallel.tp=1"
        elif spec.tp_check is not None:
            problem = spec.tp_check(model_cfg, tp)
    if problem is not None:
        raise LayoutError(problem)


def validate_sequence_parallel(specs) -> None:
    """Every mixer must be sequence-parallel capable, through hooks SequenceParallelHooks has."""
    from parallel.sequence import SequenceParallelHooks

    for spec in specs:
        missing = None if spec.sp_hooks is None else [h for h in spec.sp_hooks if not hasattr(SequenceParallelHooks, h)]
        if spec.sp_hooks is None or missing:
            what = "is not sequence-parallel capable" if spec.sp_hooks is None else f"needs sp hooks {missing}"
            raise LayoutError(f"the {spec.description} ({spec.symbol!r}) {what}; set parallel.sp=1")


def validate_sp_mode(dims: ParallelDims, model_cfg, pcfg, specs) -> None:
    """parallel.sp_mode must be able to split each tensor-parallel rank's attention heads."""
    from parallel.sequence.heads import mode_problem

    attends = any(spec.sp_hooks is not None and "attention" in spec.sp_hooks for spec in specs)
    heads = model_cfg.n_heads // dims.tp if attends else None
    problem = mode_problem(getattr(pcfg, "sp_mode", "distattn"), dims.sp, getattr(pcfg, "sp_head_group", 1), heads)
    if problem is not None:
        raise LayoutError(problem)
