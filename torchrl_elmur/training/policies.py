"""Behaviour-cloning actors for the benchmarks: encoder -> memory -> head, where only the memory differs.

``memory`` is one of :data:`MEMORIES`: ``"elmur"`` (:class:`~torchrl_elmur.ELMURModule` with a
given :class:`~torchrl_elmur.ELMURConfig`), ``"gru"`` / ``"lstm"`` (TorchRL's GRUModule /
LSTMModule of the same width) or ``"mlp"`` (no memory: the encoder's features go straight to the
head). Discrete actions: a Categorical over ``logits`` (greedy at evaluation). Continuous actions
in ``[-bound, bound]``: a deterministic ``bound * tanh`` head writing ``action``.
"""
from __future__ import annotations

from tensordict.nn import InteractionType
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torch.distributions import Categorical
from torchrl.modules import GRUModule, LSTMModule, ProbabilisticActor

from ..core import ELMURConfig
from ..modules import ELMURModule

MEMORIES = ("elmur", "gru", "lstm", "mlp")


def make_memory(memory: str, width: int, config: ELMURConfig | None = None) -> nn.Module | None:
    """The memory module reading ``embed`` and writing ``memory`` (``None`` for ``"mlp"``)."""
    keys = dict(in_key="embed", out_key="memory")
    if memory == "elmur":
        if config is None or config.token_size != width:
            raise ValueError(f"make_memory: 'elmur' needs an ELMURConfig with input_size {width}, received "
                             f"{None if config is None else config.token_size}.")
        return ELMURModule(config=config, **keys)
    if memory in ("gru", "lstm"):
        return {"gru": GRUModule, "lstm": LSTMModule}[memory](input_size=width, hidden_size=width, **keys)
    if memory == "mlp":
        return None
    raise ValueError(f"make_memory: memory={memory!r} is invalid: expected one of {MEMORIES}.")


def make_bc_actor(memory: str, obs_size: int, *, num_actions: int | None = None, action_dim: int | None = None,
                  action_bound: float = 1.0, width: int = 64, config: ELMURConfig | None = None) -> nn.Module:
    """``observation [*B, obs_size]`` -> Linear + GELU (``embed``) -> memory (``memory``) -> head.

    Give ``num_actions`` (discrete: writes ``logits`` and ``action``, int) or ``action_dim``
    (continuous: writes ``action`` in ``[-action_bound, action_bound]``). ELMUR's ``config`` must
    have ``input_size == d_model == width`` or ``input_size == width``.

    Examples:
        >>> actor = make_bc_actor("gru", 5, num_actions=3, width=8)
        >>> [type(m).__name__ for m in actor.module[0]]
        ['TensorDictModule', 'GRUModule', 'TensorDictModule']
    """
    if (num_actions is None) == (action_dim is None):
        raise ValueError(f"make_bc_actor: give exactly one of num_actions (discrete) and action_dim (continuous); "
                         f"received num_actions={num_actions}, action_dim={action_dim}.")
    mem = make_memory(memory, width, config)
    layers = [nn.Linear(obs_size, width), nn.GELU()]
    if mem is None:  # no memory: one more hidden layer, so that the MLP is not only shallower
        layers += [nn.Linear(width, width), nn.GELU()]
    encoder = Mod(nn.Sequential(*layers), ["observation"], ["embed"])
    features, out = ("embed", width) if mem is None else ("memory", config.d_model if memory == "elmur" else width)
    trunk = [encoder] if mem is None else [encoder, mem]
    if num_actions is not None:
        head = Mod(nn.Linear(out, num_actions), [features], ["logits"])
        return ProbabilisticActor(Seq(*trunk, head), in_keys=["logits"], out_keys=["action"],
                                  distribution_class=Categorical, default_interaction_type=InteractionType.DETERMINISTIC)
    scale = float(action_bound)
    head = Mod(nn.Sequential(nn.Linear(out, action_dim), nn.Tanh(), _Scale(scale)), [features], ["action"])
    return Seq(*trunk, head)


class _Scale(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * x
