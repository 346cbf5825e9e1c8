"""TD(0) targets for a recurrent value network: ``V(s_{t+1})`` computed with the whole history.

TorchRL's ``TD0Estimator.value_estimate`` (what ``IQLLoss`` / ``DiscreteIQLLoss`` call for the
Q-target ``r + gamma V(s_{t+1})``) runs the value network on ``step_mdp(batch)``: the sequence of
next-observations alone. For a recurrent value network on ``[B, T]`` data that sequence lacks the
first observation of each row (in the T-Maze: the hint, the only thing worth remembering), and it
needs ``("next", "is_init")``, which offline data usually does not store (a KeyError). This
estimator instead runs the value network once over each row's observations followed by the row's
last next-observation, ``[B, T + 1]``, and reads ``V(s_{t+1})`` at position ``t + 1``: the value
at every step has seen the row from its start, exactly as the actor and Q-network do.

Episodes may end inside a row (the next position then starts a new episode, ``is_init`` True, and
its value is masked by ``terminated``), but a *truncation* inside a row (``done`` and not
``terminated``) would need the real next-observation there: this raises.
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.modules import set_recurrent_mode
from torchrl.objectives.utils import hold_out_net
from torchrl.objectives.value import TD0Estimator


class RecurrentTD0Estimator(TD0Estimator):
    """:class:`~torchrl.objectives.value.TD0Estimator` whose next-state values come from one recurrent pass.

    Use it in any loss that calls ``value_estimator.value_estimate`` with a recurrent value network
    (``ELMURModule``, ``LSTMModule``, ``GRUModule`` inside), e.g.::

        loss = DiscreteIQLLoss(actor, qnet, vnet, action_space="categorical")
        loss.make_value_estimator(RecurrentTD0Estimator, gamma=0.99, value_network=loss.value_network)

    The batch must be ``[*B, T]`` with time last, each row starting with ``is_init`` True or with
    the value network's stored state (rows from
    :func:`~torchrl_elmur.data.make_offline_replay_buffer` start at episode starts). Same keyword
    arguments as ``TD0Estimator``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule, TensorDictSequential
        >>> from torchrl.modules import GRUModule, set_recurrent_mode
        >>> gru = GRUModule(input_size=1, hidden_size=8, in_key="observation", out_key="h")
        >>> vnet = TensorDictSequential(gru, TensorDictModule(torch.nn.Linear(8, 1), ["h"], ["state_value"]))
        >>> B, T = 2, 5
        >>> done = torch.zeros(B, T, 1, dtype=torch.bool)
        >>> data = TensorDict({"observation": torch.randn(B, T, 1), "is_init": torch.zeros(B, T, 1, dtype=torch.bool),
        ...                    "next": {"observation": torch.randn(B, T, 1), "reward": torch.ones(B, T, 1),
        ...                             "done": done, "terminated": done}}, [B, T])
        >>> data["is_init"][:, 0] = True
        >>> estimator = RecurrentTD0Estimator(gamma=0.9, value_network=vnet)
        >>> target = estimator.value_estimate(data)
        >>> seq = torch.cat([data["observation"], data["next", "observation"][:, -1:]], 1)  # the row, then its last next
        >>> with set_recurrent_mode(True):
        ...     values = vnet(TensorDict({"observation": seq, "is_init": torch.cat([data["is_init"], done[:, :1]], 1)}, [B, T + 1]))
        >>> torch.allclose(target, 1 + 0.9 * values["state_value"][:, 1:])
        True
    """

    def _next_value(self, tensordict: TensorDictBase, target_params: TensorDictBase | None, kwargs) -> torch.Tensor:
        net = self.value_network
        done = tensordict.get(("next", self.tensor_keys.done))
        terminated = tensordict.get(("next", self.tensor_keys.terminated), default=done)
        if tensordict.ndim == 0:
            raise ValueError("RecurrentTD0Estimator: expected a [*B, T] tensordict with time last, received a scalar one.")
        if bool((done & ~terminated)[..., :-1, :].any()):
            raise ValueError("RecurrentTD0Estimator: an episode is truncated inside a row; its next value would need the "
                             "real next-observation there. Sample rows that end at truncations.")
        keys = [key for key in net.in_keys if key in tensordict.keys(True)]  # value keys, is_init, stored states
        root = tensordict.select(*keys)
        last = root[..., -1:].clone()  # [*B, 1]: the row's last step ...
        next_last = tensordict.get("next")[..., -1:]
        for key in keys:  # ... with its next-observation
            if key != "is_init" and key in next_last.keys(True):
                last.set(key, next_last.get(key))
        if "is_init" in keys:
            last.set("is_init", done[..., -1:, :].clone())  # continue the row's episode (or start afresh after its end)
        sequence = torch.cat([root, last], -1)  # [*B, T + 1]
        context = hold_out_net(net) if target_params is None else target_params.to_module(net, preserve_module_state=False)
        with context, set_recurrent_mode(True):
            sequence = net(sequence)
        return sequence.get(self.tensor_keys.value)[..., 1:, :]
