"""Behaviour-cloning actors for the benchmarks: encoder -> memory -> head, where only the memory differs.

``memory`` is one of :data:`MEMORIES`: ``"elmur"`` (:class:`~torchrl_elmur.ELMURModule` with a
given :class:`~torchrl_elmur.ELMURConfig`), ``"gru"`` / ``"lstm"`` (TorchRL's GRUModule /
LSTMModule of the same width) or ``"mlp"`` (no memory: the encoder's features go straight to the
head). Discrete actions: a Categorical over ``logits`` (greedy at evaluation). Continuous actions
in ``[-bound, bound]``: a deterministic ``bound * tanh`` head writing ``action``.
"""
from __future__ import annotations

from collections.abc import Sequence

from tensordict.nn import InteractionType
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torch.distributions import Categorical
from torchrl.modules import GRUModule, LSTMModule, ProbabilisticActor, ValueOperator

from ..core import ELMURConfig
from ..modules import ELMURModule

MEMORIES = ("elmur", "gru", "lstm", "mlp")


def make_memory(memory: str, width: int, config: ELMURConfig | None = None, *, in_key: str = "embed",
                out_key: str = "memory", state_key: str | None = None, state_layout: str = "tokens") -> nn.Module | None:
    """The memory module reading ``in_key`` and writing ``out_key`` (``None`` for ``"mlp"``).

    ``state_key``: its recurrent state key (``None``: the module's default, ``"recurrent_state"``;
    an LSTM keeps ``<state_key>_h`` and ``<state_key>_c``). Actor and critic need distinct keys.
    ``state_layout``: ELMUR's stored state (``"tokens"`` or ``"cache"``, see ELMURModule).
    """
    if memory == "elmur":
        if config is None or config.token_size != width:
            raise ValueError(f"make_memory: 'elmur' needs an ELMURConfig with input_size {width}, received "
                             f"{None if config is None else config.token_size}.")
        keys = {} if state_key is None else {"state_key": state_key}
        return ELMURModule(config=config, in_key=in_key, out_key=out_key, state_layout=state_layout, **keys)
    if memory in ("gru", "lstm"):
        cls = {"gru": GRUModule, "lstm": LSTMModule}[memory]
        if state_key is None:
            return cls(input_size=width, hidden_size=width, in_key=in_key, out_key=out_key)
        states = [state_key] if memory == "gru" else [f"{state_key}_h", f"{state_key}_c"]
        return cls(input_size=width, hidden_size=width, in_keys=[in_key, *states, "is_init"],
                   out_keys=[out_key, *[("next", k) for k in states]])
    if memory == "mlp":
        return None
    raise ValueError(f"make_memory: memory={memory!r} is invalid: expected one of {MEMORIES}.")


def make_trunk(memory: str, obs_size: int, *, width: int = 64, config: ELMURConfig | None = None,
               prefix: str | None = None, state_layout: str = "tokens", encoder: nn.Module | None = None,
               in_keys: Sequence[str] = ("observation",)) -> tuple[list[nn.Module], str, int]:
    """``observation [*B, obs_size]`` -> Linear + GELU -> memory: returns ``(modules, features key, width)``,
    the modules to put in a ``TensorDictSequential`` before a head.

    Keys: ``embed`` and ``memory`` (``<prefix>_embed``, ``<prefix>_memory`` and state key
    ``<prefix>_rs`` with a ``prefix``). ``"mlp"``: a second Linear + GELU instead of a memory, so
    that the memoryless trunk is not only shallower.

    ``encoder``: instead of the Linear + GELU, a module reading ``in_keys`` (e.g. a
    :class:`~torchrl_elmur.modules.PixelEncoder` on ``("pixels",)`` or ``("pixels", "proprio")``)
    and returning ``[*B, width]`` features; ``obs_size`` is then unused.
    """
    names = ("embed", "memory", None) if prefix is None else (f"{prefix}_embed", f"{prefix}_memory", f"{prefix}_rs")
    mem = make_memory(memory, width, config, in_key=names[0], out_key=names[1], state_key=names[2],
                      state_layout=state_layout)
    extra = [nn.Linear(width, width), nn.GELU()] if mem is None else []  # the memoryless trunk's second layer
    if encoder is None:
        modules = [Mod(nn.Sequential(nn.Linear(obs_size, width), nn.GELU(), *extra), list(in_keys), [names[0]])]
    else:
        modules = [Mod(encoder, list(in_keys), [names[0]])] + ([Mod(nn.Sequential(*extra), [names[0]], [names[0]])] if extra else [])
    if mem is None:
        return modules, names[0], width
    return [*modules, mem], names[1], config.d_model if memory == "elmur" else width


def make_bc_actor(memory: str, obs_size: int, *, num_actions: int | None = None, action_dim: int | None = None,
                  action_bound: float = 1.0, width: int = 64, config: ELMURConfig | None = None,
                  encoder: nn.Module | None = None, in_keys: Sequence[str] = ("observation",)) -> nn.Module:
    """``observation [*B, obs_size]`` -> Linear + GELU (``embed``) -> memory (``memory``) -> head.

    Give ``num_actions`` (discrete: writes ``logits`` and ``action``, int) or ``action_dim``
    (continuous: writes ``action`` in ``[-action_bound, action_bound]``). ELMUR's ``config`` must
    have ``input_size == d_model == width`` or ``input_size == width``. ``encoder`` / ``in_keys``:
    see :func:`make_trunk` (pixels: a ``PixelEncoder``).

    Examples:
        >>> actor = make_bc_actor("gru", 5, num_actions=3, width=8)
        >>> [type(m).__name__ for m in actor.module[0]]
        ['TensorDictModule', 'GRUModule', 'TensorDictModule']
    """
    if (num_actions is None) == (action_dim is None):
        raise ValueError(f"make_bc_actor: give exactly one of num_actions (discrete) and action_dim (continuous); "
                         f"received num_actions={num_actions}, action_dim={action_dim}.")
    trunk, features, out = make_trunk(memory, obs_size, width=width, config=config, encoder=encoder, in_keys=in_keys)
    if num_actions is not None:
        head = Mod(nn.Linear(out, num_actions), [features], ["logits"])
        return ProbabilisticActor(Seq(*trunk, head), in_keys=["logits"], out_keys=["action"],
                                  distribution_class=Categorical, default_interaction_type=InteractionType.DETERMINISTIC)
    scale = float(action_bound)
    head = Mod(nn.Sequential(nn.Linear(out, action_dim), nn.Tanh(), _Scale(scale)), [features], ["action"])
    return Seq(*trunk, head)


def make_actor_critic(memory: str, obs_size: int, num_actions: int, *, width: int = 64,
                      config: ELMURConfig | None = None, state_layout: str = "tokens",
                      shared_trunk: bool = False) -> tuple[ProbabilisticActor, Seq]:
    """A recurrent PPO actor and critic (discrete actions).

    actor: ``observation`` -> trunk -> ``logits`` -> Categorical ``action`` with
    ``action_log_prob`` (sampled by default, greedy under ``ExplorationType.DETERMINISTIC``).
    critic: ``observation`` -> trunk -> ``state_value [*B, 1]``. Each has its own trunk and state
    key (``actor_rs``, ``critic_rs``), or with ``shared_trunk`` both use one trunk (the same
    modules, state key ``shared_rs``), as CleanRL's ``ppo_trxl`` and TorchRL's PPO examples share a
    common module: a collector running :func:`rollout_policy` then steps one memory per env step.
    Only the memory differs between ``memory`` kinds (:data:`MEMORIES`); the heads start small
    (gain 0.01 for the logits, as in common PPO practice) so the first policy is close to uniform.

    Examples:
        >>> actor, critic = make_actor_critic("gru", 4, 3, width=8)
        >>> actor.in_keys, critic.out_keys[-1]
        (['observation', 'actor_rs', 'is_init'], 'state_value')
        >>> actor, critic = make_actor_critic("gru", 4, 3, width=8, shared_trunk=True)
        >>> critic.in_keys, actor.module[0][1] is critic[1]
        (['observation', 'shared_rs', 'is_init'], True)
    """
    kw = dict(width=width, config=config, state_layout=state_layout)
    actor_trunk, actor_features, out = make_trunk(memory, obs_size, prefix="shared" if shared_trunk else "actor", **kw)
    if shared_trunk:
        critic_trunk, critic_features = actor_trunk, actor_features
    else:
        critic_trunk, critic_features, _ = make_trunk(memory, obs_size, prefix="critic", **kw)
    logits = nn.Linear(out, num_actions)
    nn.init.orthogonal_(logits.weight, gain=0.01)
    nn.init.zeros_(logits.bias)
    actor = ProbabilisticActor(Seq(*actor_trunk, Mod(logits, [actor_features], ["logits"])),
                               in_keys=["logits"], out_keys=["action"], distribution_class=Categorical,
                               return_log_prob=True, default_interaction_type=InteractionType.RANDOM)
    critic = Seq(*critic_trunk, ValueOperator(nn.Linear(out, 1), in_keys=[critic_features]))
    return actor, critic


def rollout_policy(actor: ProbabilisticActor, critic: Seq) -> Seq:
    """What a collector runs for :func:`make_actor_critic`'s pair: the actor, then the critic, so
    that both states and ``state_value`` are recorded; a trunk they share runs once (the critic's
    head reads the features the actor's trunk wrote).

    Examples:
        >>> actor, critic = make_actor_critic("gru", 4, 3, width=8, shared_trunk=True)
        >>> [type(m).__name__ for m in rollout_policy(actor, critic)[1]]
        ['ValueOperator']
    """
    actor_modules, critic_modules = list(actor.module[0]), list(critic)
    shared = 0
    while shared < min(len(actor_modules), len(critic_modules)) and actor_modules[shared] is critic_modules[shared]:
        shared += 1
    return Seq(actor, Seq(*critic_modules[shared:])) if shared else Seq(actor, critic)


class _Scale(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * x
