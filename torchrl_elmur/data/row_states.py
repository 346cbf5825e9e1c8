"""On-policy rows that keep their recurrent states only where recurrent mode reads them.

A collector records every recurrent state key at every step (and ``("next", key)`` too): for
ELMUR that is its whole layer memory and current segment per step. Replaying a row ``[T]`` in
recurrent mode reads a stored state only where a trajectory starts: at ``t = 0`` (the state the
row began with) and where ``is_init`` is True (an episode start: the fresh, all-zeros state that
the primer wrote). :class:`RowStartStates` keeps the state at ``t = 0`` and rebuilds the rest as
zeros when a minibatch of rows is taken, so the replay is the same and the stored batch holds
one state per row instead of ``2 T``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from ..modules.state_keys import recurrent_state_keys

__all__ = ["RowStartStates", "recurrent_state_keys"]


class RowStartStates:
    """A batch of rows ``[N, T]`` (time last, as a collector's batch reshaped to rows) that stores
    each recurrent state key only at ``t = 0``.

    ``rows[index]`` returns the rows ``[b, T]`` with every state key back in place: the stored
    start state at ``t = 0`` and zeros (a fresh state) elsewhere, which is all that recurrent mode
    reads (``t = 0`` and ``is_init`` positions). ``("next", key)`` entries are dropped: a loss
    that runs the module in recurrent mode writes them again.

    Args:
        batch: ``[N, T]`` with ``is_init`` and the state keys (e.g. from a collector).
        state_keys: the keys to keep at row starts only (:func:`recurrent_state_keys`).

    Raises:
        ValueError: a batch that is not ``[N, T]``, or whose ``is_init`` is True inside a row
            where the stored state is not all zeros (then zeros would not replay it).
        KeyError: a state key the batch does not hold.
    """

    def __init__(self, batch: TensorDictBase, state_keys: Sequence[NestedKey]) -> None:
        if batch.batch_dims != 2:
            raise ValueError(f"RowStartStates: expected a batch of rows [N, T], received batch size {list(batch.batch_size)}.")
        state_keys = list(state_keys)
        missing = [k for k in state_keys if k not in batch.keys(include_nested=True)]
        if missing:
            raise KeyError(f"RowStartStates: state keys {missing} not found in the batch (keys: {list(batch.keys())}).")
        is_init = batch.get("is_init").reshape(batch.shape)
        inner = is_init.clone()
        inner[:, 0] = False
        for key in state_keys:  # the zeros rebuilt at inner episode starts must be what was stored there
            stored = batch.get(key)[inner]
            if stored.numel() and any(bool(t.any()) for t in _leaves(stored)):
                raise ValueError(f"RowStartStates: {key!r} is not all zeros where is_init is True inside a row, so it "
                                 "cannot be rebuilt as a fresh state; keep the full batch instead.")
        self.rows = batch.exclude(*state_keys, *[("next", k) for k in state_keys])
        self.starts = batch[:, 0].select(*state_keys).clone()  # [N]

    def __len__(self) -> int:
        return self.rows.shape[0]

    def bytes(self) -> int:
        """Bytes held: the rows without state plus one state per row."""
        return self.rows.bytes() + self.starts.bytes()

    def __getitem__(self, index) -> TensorDictBase:
        """Rows ``[b, T]`` (``index`` selects rows) with their states rebuilt."""
        rows = self.rows[index].copy()
        starts = self.starts[index]
        if rows.batch_dims != 2:
            raise IndexError(f"RowStartStates: index {index!r} must select rows (a slice, list or tensor of row ids), "
                             f"received one that gives batch size {list(rows.batch_size)}.")
        states = torch.zeros_like(starts.unsqueeze(1).expand(rows.shape))  # [b, T]: fresh everywhere ...
        states[:, 0] = starts  # ... but where each row starts
        return rows.update(states)


def _leaves(td) -> list[torch.Tensor]:
    if isinstance(td, torch.Tensor):
        return [td]
    return list(td.values(include_nested=True, leaves_only=True))
