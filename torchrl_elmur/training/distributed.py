"""Data-parallel training under ``torchrun``: one process group, one DDP wrapper, one way to shard a batch.

Launch any training script of the project with ``torchrun --nproc_per_node=N script.py ...``;
without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op and the
script runs as one process. What each rank does:

- samples the same global batch as a single process would (same seed, same replay buffer) and
  trains on its shard of rows (:func:`shard_rows`, rows ``rank, rank + N, ...``), so N ranks with
  B/N rows each take the same optimizer steps as one process with B rows (DDP averages the
  gradients; exact up to float summation order when the loss is a mean over rows, the batch
  divides by N, and no dropout or batch statistics, e.g. a mixture-of-experts balance loss,
  couple the rows);
- rank 0 alone logs, shows progress, probes, evaluates and saves (:attr:`DistributedContext.is_main`).

One difference remains with optimizers that keep momentum (Adam, AdamW): a parameter that no
row of a step reaches (ELMUR's write path under ``train_bc(chunk_len=K)``, whose chunks
never read their own write) has gradient ``None`` in one process, and the optimizer skips it,
but DDP fills it with zeros, and the optimizer's momentum keeps moving it. Whole-window updates
(the default), or SGD, take the same steps.

Backends: ``gloo`` on CPU, ``nccl`` when each rank has a CUDA device (``LOCAL_RANK``). Every
collective has a time-out (``ELMUR_DDP_TIMEOUT`` seconds, default 600), so a rank that died
makes the others fail with an error instead of waiting for ever.
"""
from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from tensordict import TensorDict, TensorDictBase
from torch import nn

TIMEOUT_ENV = "ELMUR_DDP_TIMEOUT"
T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` (``0`` of ``1`` without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the rank that logs, evaluates and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``); a single process gets ``DistributedContext()``.

    Args:
        device: ``"cpu"`` or ``"cuda"``; ``None``: CUDA (device ``LOCAL_RANK``) when available.

    Raises:
        RuntimeError: a ``torchrun`` environment that is incomplete (names the missing variables).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=torch.device(device or "cpu"))
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"init_distributed: WORLD_SIZE={world_size} but {missing} are not set: launch with "
                           "torchrun --nproc_per_node=N (it sets them all).")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    return DistributedContext(rank, world_size, local_rank, target)


def wrap_ddp(module: nn.Module, ctx: DistributedContext, *, find_unused_parameters: bool = True) -> nn.Module:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` when ``ctx`` is distributed
    (e.g. a TorchRL loss module holding the actor: its ``forward(tensordict)`` runs unchanged and
    the backward averages gradients over ranks); ``module`` itself otherwise.

    ``find_unused_parameters=True`` by default: an ELMUR loss does not always reach every
    parameter (the write path gets no gradient from a chunk in which no segment's write is read
    again, e.g. truncated back-propagation by segments; unrouted experts of a mixture of experts).
    """
    if not ctx.distributed:
        return module
    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return _TensorDictDDP(_AsDict(module), device_ids=device_ids, find_unused_parameters=find_unused_parameters)


class _AsDict(nn.Module):
    """Returns a TensorDict output as a dict: DDP looks for the output tensors (to find the
    parameters a backward will reach) in tensors, lists and dicts, not in TensorDicts."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        return out.to_dict() if isinstance(out, TensorDictBase) else out


class _TensorDictDDP(nn.parallel.DistributedDataParallel):
    """DDP whose forward gives back the TensorDict the wrapped module returned."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        return TensorDict(out, batch_size=[]) if isinstance(out, dict) else out


def rows_per_rank(rows: int, ctx: DistributedContext) -> int:
    """How many of a global batch's ``rows`` each rank trains on.

    Raises:
        ValueError: ``rows`` not divisible by the world size (ranks would weigh rows unequally).
    """
    if rows % ctx.world_size:
        raise ValueError(f"a batch of {rows} rows does not divide over {ctx.world_size} torchrun processes; choose a "
                         f"batch that is a multiple of the number of processes.")
    return rows // ctx.world_size


def shard_rows(batch: TensorDictBase, ctx: DistributedContext) -> TensorDictBase:
    """This rank's rows of a global batch ``[B, ...]``: ``batch[rank::world_size]`` (see :func:`rows_per_rank`)."""
    if not ctx.distributed:
        return batch
    rows_per_rank(batch.shape[0], ctx)
    return batch[ctx.rank::ctx.world_size]


def barrier(ctx: DistributedContext) -> None:
    if ctx.distributed:
        dist.barrier()


def main_first(ctx: DistributedContext, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 first, then, after a barrier, on the other ranks: e.g. rank 0 builds a
    cached dataset and the others load it instead of building it at the same time."""
    out = fn() if ctx.is_main else None
    barrier(ctx)
    return out if ctx.is_main else fn()


def shutdown(ctx: DistributedContext) -> None:
    """Leave the process group (call once at the end of a script, on every rank). Ranks meet at a
    barrier first: a rank that left the group while another was still tearing its own down made
    that one hang in ``destroy_process_group`` on this machine (gloo)."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        # Let gloo's worker thread free the barrier's work first: it needs the GIL for that, and
        # the main thread holds the GIL while ~ProcessGroupGloo joins that thread (when the last
        # DDP reducer referencing the group is freed, just after this function). Seen on this
        # machine as a rank that never exits (py-spy: Reducer dealloc -> ~ProcessGroupGloo ->
        # thread::join; the worker in ~AsyncBarrierWork -> decref_pyobject -> gil_scoped_acquire).
        time.sleep(0.2)
        dist.destroy_process_group()
