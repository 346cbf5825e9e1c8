"""Next-values for recurrent networks on sampled slices: mark where each slice starts in ``("next", "is_init")``.

TorchRL's TD(0) users (``DQNLoss``, the ``TD0Estimator`` inside ``IQLLoss``...) compute next-values by
running the (target) value network on ``step_mdp(batch)``: the sequence of next-observations,
read in recurrent mode with ``("next", "is_init")`` as its ``is_init``. A SliceSampler marks slice
starts in the root ``is_init`` only, so on a batch of several slices (flat ``[B * T]`` as the DQN
tutorial samples it, or ``[B, T]`` rows that cross episodes) the next-sequence runs across
slices and episodes as one trajectory, from the wrong state. Setting
``("next", "is_init") |= is_init`` makes the network restart, at each slice start and each episode
start, from the stored ``("next", state)``: the real state after that step.

The recipe, in the training loop (a replay-buffer transform cannot do it: the buffer writes the
slice-start marks into the sample after its transforms have run)::

    batch = mark_next_slice_starts(rb.sample())
    loss_vals = loss(batch)  # DQNLoss (double or not), DiscreteIQLLoss, ...

Checked on torchrl 0.14.1 (``tests/test_dropin.py``, CartPole, flat batches of 8 slices of 8): next-Q
then equals the collection-time Q to 1e-5 with ELMURModule and LSTMModule; without it, it does not.
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey


def mark_next_slice_starts(tensordict: TensorDictBase, is_init_key: NestedKey = "is_init") -> TensorDictBase:
    """Set ``("next", is_init) |= is_init`` in place (creating it where absent) and return ``tensordict``.

    Examples:
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"is_init": torch.tensor([[True], [False], [True]]),
        ...                  "next": {"is_init": torch.tensor([[False], [False], [False]])}}, [3])
        >>> mark_next_slice_starts(td)["next", "is_init"].squeeze(-1).tolist()
        [True, False, True]
    """
    is_init = tensordict.get(is_init_key, None)
    if is_init is None:
        raise KeyError(f"mark_next_slice_starts: {is_init_key!r} not found (keys: {list(tensordict.keys(True, True))}); "
                       "store InitTracker's is_init with the data.")
    next_key = ("next", *(is_init_key if isinstance(is_init_key, tuple) else (is_init_key,)))
    previous = tensordict.get(next_key, None)
    if previous is not None and previous.shape != is_init.shape:
        raise ValueError(f"mark_next_slice_starts: {next_key} has shape {list(previous.shape)}, {is_init_key!r} "
                         f"{list(is_init.shape)}; expected the same.")
    tensordict.set(next_key, is_init.clone() if previous is None else previous | is_init)
    return tensordict
