"""A pipeline rank's share of a LanguageModel, with the parameter names of the whole model.

`PipelineModel` keeps, from the full LanguageModel, only the blocks of this rank's stages
(in a LayerDict keyed by the *global* layer index, so `layers.7.mixer.wq.weight` is named as
on one process and checkpoints reshard across pp), the embedding on the first stage, and
the final norm and head on the last one. With tied embeddings the last stage also keeps the
embedding (its weight is the head); the two copies get the same summed gradient (an
all-reduce between first and last stage, as in Megatron) and so stay identical.
`StageChunk` is one pipeline stage (a contiguous range of blocks) as torch.distributed
.pipelining runs it: tokens in on the first stage, hidden states between stages, logits out
of the last. Positions and doc ids are not sent between stages: every pp rank loads the same
batch, so each chunk reads them from `meta[mb_index]`, the index the stage sets before each
micro-batch's forward (see runner.IndexedStage).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.context import MixerContext
from models.lm import no_weight_decay_names, scale_embedding, soft_cap


class LayerDict(nn.ModuleDict):
    """A ModuleDict that iterates over its blocks (like the ModuleList it replaces)."""

    def __iter__(self):
        return iter(self.values())


class OutputHead(nn.Module):
    """The last stage's final norm and vocabulary projection as one module, so that FSDP2 can
    gather their weights around one forward (with tied embeddings `proj` is the embedding,
    whose weight is the head). Held outside PipelineModel's registered children: parameter
    names stay `norm.weight`, `lm_head.weight` / `embed.weight` as on one process."""

    def __init__(self, owner: PipelineModel, norm: nn.Module, proj: nn.Module):
        super().__init__()
        self.norm, self.proj = norm, proj
        self._owner = [owner]          # head_weight(): the local vocab shard under tensor parallel

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        owner = self._owner[0]
        return soft_cap(nn.functional.linear(self.norm(h), owner.head_weight()), owner.cfg)


class PipelineModel(nn.Module):
    def __init__(self, full: nn.Module, layer_ids: list[int], first: bool, last: bool):
        super().__init__()
        self.cfg = full.cfg
        self.symbols = full.symbols
        tied = full.lm_head is None
        self.embed = full.embed if (first or (last and tied)) else None
        self.layers = LayerDict({str(i): full.layers[i] for i in layer_ids})
        self.norm = full.norm if last else None
        self.lm_head = full.lm_head if last else None
        self.has_first, self.has_last, self.tied = first, last, tied
        self._output = [OutputHead(self, self.norm, self.embed if tied else self.lm_head)] if last else []

    @property
    def output_head(self) -> OutputHead:
        return self._output[0]

    def no_weight_decay_names(self) -> set[str]:
        return no_weight_decay_names(self)

    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight


class StageChunk(nn.Module):
    """Blocks [start, stop) of `owner`; embeds on the first stage, norm + head on the last."""

    def __init__(self, owner: PipelineModel, start: int, stop: int, first: bool, last: bool):
        super().__init__()
        self._owner = [owner]                     # a list: not registered as a submodule
        self.ids = [str(i) for i in range(start, stop)]
        self.first, self.last = first, last
        self.meta: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.mb_index = 0
        self.sp: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self._owner[0]
        positions, doc_ids = self.meta[self.mb_index]
        ctx = MixerContext(positions=positions, doc_ids=doc_ids, sp=self.sp)
        h = scale_embedding(owner.embed(x), owner.cfg) if self.first else x
        for i in self.ids:
            h = owner.layers[i](h, ctx)
        if self.last:
            h = owner.output_head(h)
        return h
