"""Data-parallel training under ``torchrun`` (gloo on CPU, NCCL on CUDA), the same code path as one process.

    torchrun --nproc_per_node 4 -m core.train nvs --data DIR --out RUN --batch 32 ...

``--batch`` is the global batch. Every process draws the same global batch (same seeds) and trains on
its own contiguous share of the rows; after ``backward`` the gradients are averaged across processes
in flat buckets (``all_reduce_grads``), so a step equals a one-process step on the whole batch up to
float summation order. One explicit all-reduce rather than wrapping in ``DistributedDataParallel``:
the NVS image embedder and the tokenizer's frozen stages run outside one ``forward``, and coarse NVS
steps leave parameters unused, which DDP's reducer needs told about; a reduce after ``backward``
is exact for all three trainers. Rank 0 alone logs, evaluates and writes checkpoints; every rank
stops at the same step (``agree_to_stop``), so none waits forever in a collective.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job; rank 0 of 1 when not launched by torchrun."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_divisible(self, n: int, what: str = "--batch", unit: int = 1) -> None:
        """A global count this job can split evenly (``unit``: rows that must stay on one process)."""
        if n % (self.world * unit):
            raise ValueError(f"{what} {n} cannot be split over {self.world} processes"
                             + (f" in groups of {unit}" if unit > 1 else "")
                             + f": use a multiple of {self.world * unit}")

    def shard(self, n: int) -> slice:
        """This process's contiguous share of ``n`` rows (``check_divisible`` first)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def all_reduce_grads(self, params) -> None:
        """Average the gradients of ``params`` over processes. A parameter no process used keeps
        ``grad=None`` (AdamW then skips it, as one process would); one that some used gets zeros
        elsewhere."""
        if not self.enabled:
            return
        import torch.distributed as dist
        params = [p for p in params if p.requires_grad]
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
        dist.all_reduce(used)
        grads = []
        for p, u in zip(params, used.tolist()):
            if u > 0:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        for bucket in _buckets(grads):
            flat = torch._utils._flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat /= self.world
            for g, r in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                g.copy_(r)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place sum over processes (e.g. code hits)."""
        if self.enabled:
            import torch.distributed as dist
            dist.all_reduce(t)
        return t

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's ``t`` (same shape everywhere) stacked along dim 0 in rank order: the
        global batch's rows, as one process would hold them."""
        if not self.enabled:
            return t
        import torch.distributed as dist
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, 0)

    def mean(self, value: float) -> float:
        """A scalar averaged over processes (for logs)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        return float(self.sum_(t)[0]) / self.world

    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist
            dist.broadcast(t, src)
        return t

    def agree_to_stop(self, stop: bool) -> bool:
        """True on every process when any process wants to stop (time limit, SIGTERM)."""
        if not self.enabled:
            return stop
        return bool(self.sum_(torch.tensor([float(stop)]))[0] > 0)

    def barrier(self) -> None:
        """Wait for every process (e.g. while rank 0 alone fills a cache the others then read)."""
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def _buckets(tensors, max_bytes: int = 25 << 20):
    """Consecutive groups of same-dtype, same-device tensors of at most ~``max_bytes`` each."""
    bucket, size = [], 0
    for t in tensors:
        b = t.numel() * t.element_size()
        if bucket and (size + b > max_bytes or t.dtype != bucket[0].dtype or t.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += b
    if bucket:
        yield bucket


def init_distributed(device: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun job described by the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``...), or return a one-process ``Distributed``. On CUDA each process takes the GPU
    of its local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if world <= 1:
        return Distributed(), dev
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Distributed(rank, world, local), dev
