"""Pure functions that cut ``[N, T]`` recurrent-mode batches into independent trajectories.

A row of a recurrent-mode batch may hold several trajectories: a new one starts at ``t = 0``
and wherever ``is_init`` is True. Each trajectory is run on its own, padded to a common length.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class TrajectoryLayout(NamedTuple):
    """Where the trajectories of a ``[N, T]`` batch lie, in row-major (flat ``N * T``) indices.

    Fields: ``starts`` [S] flat index of each trajectory's first step, ``lengths`` [S],
    ``ends`` [S] flat index of each last step, ``gather`` [S, T_max] flat index of each padded
    step (padding repeats the last step), ``valid`` bool [S, T_max] (False on padding).
    """

    starts: Tensor
    lengths: Tensor
    ends: Tensor
    gather: Tensor
    valid: Tensor


def trajectory_layout(is_init: Tensor) -> TrajectoryLayout:
    """Cut every row of ``is_init [N, T]`` at ``t = 0`` and at each True.

    Examples:
        >>> is_init = torch.tensor([[True, False, False, True, False], [False, False, False, False, False]])
        >>> layout = trajectory_layout(is_init)
        >>> layout.starts.tolist(), layout.lengths.tolist(), layout.ends.tolist()
        ([0, 3, 5], [3, 2, 5], [2, 4, 9])
        >>> layout.gather.tolist()[1]  # padded with the trajectory's last step
        [3, 4, 4, 4, 4]
    """
    if is_init.ndim != 2 or is_init.dtype != torch.bool:
        raise ValueError(f"trajectory_layout: expected a bool [N, T] tensor, received {is_init.dtype} {list(is_init.shape)}.")
    n, t = is_init.shape
    first = is_init.clone()
    first[:, 0] = True
    starts = first.flatten().nonzero().squeeze(-1)  # [S]
    row_ends = torch.arange(1, n + 1, device=is_init.device) * t  # exclusive end of each row
    next_start = torch.cat([starts[1:], starts.new_tensor([n * t])])
    stops = torch.minimum(next_start, row_ends[starts // t])  # a trajectory never crosses a row
    lengths = stops - starts
    steps = torch.arange(int(lengths.max()), device=is_init.device)
    valid = steps[None] < lengths[:, None]
    gather = starts[:, None] + torch.minimum(steps[None], lengths[:, None] - 1)
    return TrajectoryLayout(starts, lengths, stops - 1, gather, valid)
