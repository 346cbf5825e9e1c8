"""The LRU memory update rule, as pure functions (no modules, no state).

Slot times are *stamps*: 0 marks an empty slot, a written slot stores ``1 + t_end`` where
``t_end`` is the episode step of the last step of the segment that wrote it. Shapes use
``...`` for any leading batch dims, ``M`` for slots and ``D`` for the slot width.
"""
from __future__ import annotations

import torch
from torch import Tensor


def lru_slot(memory_time: Tensor) -> Tensor:
    """Index of the slot the LRU rule writes next: the first empty slot if any, else the least
    recently written one (smallest stamp, ties to the lowest index).

    Empty slots have stamp 0, the smallest possible, so one ``argmin`` covers both cases.

    Args:
        memory_time: int64 stamps ``[..., M]``.

    Returns:
        int64 indices ``[...]``.

    Examples:
        >>> lru_slot(torch.tensor([[0, 0], [5, 0], [5, 3], [4, 4]]))
        tensor([0, 1, 1, 0])
    """
    return torch.argmin(memory_time, dim=-1)


def _blend_factor(empty: Tensor, blend: float, rule: str, like: Tensor) -> Tensor:
    lam = torch.full_like(like, float(blend))
    if rule == "paper":  # an empty slot takes the candidate outright (alpha = 1)
        return torch.where(empty, torch.ones_like(lam), lam)
    return lam  # "official": blend with lambda even into an empty slot


def lru_commit(
    memory: Tensor, memory_time: Tensor, candidate: Tensor, stamp: Tensor, blend: float, rule: str = "paper"
) -> tuple[Tensor, Tensor]:
    """Commit one segment's write: exactly one slot changes (or all, for ``replace_all``).

    Args:
        memory: slot vectors the write saw ``[..., M, D]`` (the initial vector in empty slots).
        memory_time: int64 stamps ``[..., M]`` (0 = empty).
        candidate: write outputs ``[..., M, D]``; row ``j`` is the candidate for slot ``j``.
        stamp: int64 ``[...]``, the new stamp ``1 + t_end`` of the segment being committed.
        blend: lambda in [0, 1].
        rule: ``"paper"`` (alpha = 1 into an empty slot, lambda otherwise), ``"official"``
            (alpha = lambda always) or ``"replace_all"`` (every slot takes its candidate: the
            "no LRU" ablation).

    Returns:
        ``(memory, memory_time)`` after the commit, same shapes. Slots still empty after the
        commit hold zeros, so that an all-zeros state always means "fresh episode".

    Examples:
        >>> mem, time = torch.zeros(2, 1), torch.tensor([0, 0])
        >>> mem, time = lru_commit(mem, time, torch.tensor([[1.0], [2.0]]), torch.tensor(10), 0.5)
        >>> mem.flatten().tolist(), time.tolist()  # first empty slot replaced outright
        ([1.0, 0.0], [10, 0])
        >>> mem, time = lru_commit(mem, time, torch.tensor([[3.0], [4.0]]), torch.tensor(20), 0.5)
        >>> mem.flatten().tolist(), time.tolist()
        ([1.0, 4.0], [10, 20])
        >>> mem, time = lru_commit(mem, time, torch.tensor([[5.0], [6.0]]), torch.tensor(30), 0.5)
        >>> mem.flatten().tolist(), time.tolist()  # oldest slot 0 blended: 0.5 * 5 + 0.5 * 1
        ([3.0, 4.0], [30, 20])
    """
    if rule == "replace_all":
        return candidate, stamp.unsqueeze(-1).expand_as(memory_time).clone()
    if rule not in ("paper", "official"):
        raise ValueError(f"lru_commit: rule={rule!r} is invalid: expected 'paper', 'official' or 'replace_all'.")
    slot = lru_slot(memory_time)  # [...]
    chosen = torch.nn.functional.one_hot(slot, memory_time.shape[-1]).bool()  # [..., M]
    alpha = _blend_factor(memory_time == 0, blend, rule, memory_time.to(memory.dtype))  # [..., M]
    alpha = torch.where(chosen, alpha, torch.zeros_like(alpha)).unsqueeze(-1)  # 0 leaves a slot as it is
    new_time = torch.where(chosen, stamp.unsqueeze(-1).expand_as(memory_time), memory_time)
    new_memory = alpha * candidate + (1 - alpha) * memory
    new_memory = torch.where((new_time == 0).unsqueeze(-1), torch.zeros_like(new_memory), new_memory)
    return new_memory, new_time
