"""Point-to-point plumbing for the sequence-parallel group: batched async send/recv with byte
accounting.

Every exchange is one `dist.batch_isend_irecv` call (one NCCL group on GPU, so sends and
receives of a round progress together); it returns a handle whose `wait()` yields the
received buffers. Peers are sp-group ranks; they are translated to global ranks here so the
same code works inside a dp × sp mesh. Every rank posts its exchanges in the same logical
order (round by round), which is what keeps the message streams between each pair matched.
On GPU the NCCL transfers run on NCCL's own stream: posting waits for the producing kernels,
`wait()` makes the compute stream wait, and the compute issued in between overlaps them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class Pending:
    """Outstanding P2P work; `wait()` completes it and returns {key: received tensor}."""
    works: list = field(default_factory=list)
    received: dict = field(default_factory=dict)
    sending: list = field(default_factory=list)     # send buffers stay alive until completion

    def wait(self) -> dict:
        for w in self.works:
            w.wait()
        self.works, self.sending = [], []
        return self.received


class SPGroup:
    """The sequence-parallel process group of this rank, with P2P helpers and a byte counter."""

    def __init__(self, group=None):
        self.group = group if group is not None else dist.group.WORLD
        self.world = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)
        self.global_ranks = dist.get_process_group_ranks(self.group)
        self.bytes_sent = 0   # running total; the hooks attribute it to layers
        self.warm = False

    def warmup(self) -> None:
        """One collective on the whole group before any P2P (NCCL creates the communicator on
        first use and requires every rank in that first call; a rank may have no P2P work)."""
        if not self.warm:
            dist.barrier(group=self.group)
            self.warm = True

    def exchange(self, sends: list[tuple[int, torch.Tensor]],
                 recvs: list[tuple[int, object, torch.Tensor]]) -> Pending:
        """Post sends [(peer, tensor)] and receives [(peer, key, buffer)] together, asynchronously."""
        ops, sending = [], []
        for peer, tensor in sends:
            tensor = tensor.contiguous()
            sending.append(tensor)
            self.bytes_sent += tensor.numel() * tensor.element_size()
            ops.append(dist.P2POp(dist.isend, tensor, self.global_ranks[peer], self.group))
        received = {}
        for peer, key, buf in recvs:
            ops.append(dist.P2POp(dist.irecv, buf, self.global_ranks[peer], self.group))
            received[key] = buf
        works = dist.batch_isend_irecv(ops) if ops else []
        return Pending(works=list(works), received=received, sending=sending)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's tensor (same shape everywhere), in sp-rank order; no autograd."""
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(self.world)]
        self.bytes_sent += tensor.numel() * tensor.element_size() * (self.world - 1)
        dist.all_gather(out, tensor, group=self.group)
        return out

    def all_to_all(self, out: torch.Tensor, tensor: torch.Tensor) -> None:
        """out[i] = rank i's tensor[me] for every rank i (dim 0 has one slot per rank); blocking."""
        self.bytes_sent += tensor.numel() * tensor.element_size() * (self.world - 1) // self.world
        dist.all_to_all_single(out, tensor, group=self.group)
