"""Pipeline parallelism: stages cut on layer boundaries (balanced by FLOPs), torch.distributed.pipelining schedules."""
from parallel.pipeline.runner import SCHEDULES, PipelineRunner

__all__ = ["PipelineRunner", "SCHEDULES"]
