"""Behaviour-cloning actors for the benchmarks: encoder -> memory -> head, where only the memory differs.

``memory`` is one of :data:`MEMORIES`: ``"elmur"`` (:class:`~torchrl_elmur.ELMURModule` with a
given :class:`~torchrl_elmur.ELMURConfig`), ``"gru"`` / ``"lstm"`` (TorchRL's GRUModule /
LSTMModule of the same width) or ``"mlp"`` (no memory: the encoder's features go straight to the
head). Discrete actions: a Categorical over ``logits`` (greedy at evaluation). Continuous actions
in ``[-bound, bound]``: a deterministic ``bound * tanh`` head writing ``action``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from tensordict.nn import InteractionType
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torch.distributions import Categorical
from torchrl.modules import GRUModule, LSTMModule, ProbabilisticActor, ValueOperator

from ..core import ELMURConfig
from ..modules import ELMURModule, Standardize
from .checkpoint import record_build

MEMORIES = ("elmur", "gru", "lstm", "mlp")


def make_memory(memory: str, width: int, config: ELMURConfig | None = None, *, input_size: int | None = None,
                num_layers: int = 1, in_key: str = "embed", out_key: str = "memory", state_key: str | None = None,
                state_layout: str = "tokens") -> nn.Module | None:
    """The memory module reading ``in_key [*B, input_size]`` and writing ``out_key [*B, width]``
    (``None`` for ``"mlp"``): the one place the package, its tutorials and benchmarks build one.

    ``memory``: one of :data:`MEMORIES`. ``"elmur"``: an :class:`~torchrl_elmur.ELMURModule` of
    ``config`` (required; its ``input_size`` must be ``input_size`` and its ``d_model`` sets the
    output width). ``"gru"`` / ``"lstm"``: TorchRL's GRUModule / LSTMModule with ``hidden_size=width``
    and ``num_layers`` layers. ``input_size``: default ``width``.
    ``state_key``: its recurrent state key (``None``: the module's default, ``"recurrent_state"``
    for ELMUR; an LSTM keeps ``<state_key>_h`` and ``<state_key>_c``). Actor and critic need distinct keys.
    ``state_layout``: ELMUR's stored state (``"tokens"`` or ``"cache"``, see ELMURModule).

    Examples:
        >>> make_memory("lstm", 8, input_size=3, num_layers=2, state_key="actor").in_keys
        ['embed', 'actor_h', 'actor_c', 'is_init']
        >>> make_memory("elmur", 8, input_size=3)
        Traceback (most recent call last):
        ...
        ValueError: make_memory: 'elmur' needs an ELMURConfig with input_size 3, received None.
    """
    input_size = width if input_size is None else input_size
    if memory == "elmur":
        if config is None or config.token_size != input_size:
            raise ValueError(f"make_memory: 'elmur' needs an ELMURConfig with input_size {input_size}, received "
                             f"{None if config is None else config.token_size}.")
        keys = {} if state_key is None else {"state_key": state_key}
        return ELMURModule(config=config, in_key=in_key, out_key=out_key, state_layout=state_layout, **keys)
    if memory in ("gru", "lstm"):
        cls = {"gru": GRUModule, "lstm": LSTMModule}[memory]
        sizes = dict(input_size=input_size, hidden_size=width, num_layers=num_layers)
        if state_key is None:
            return cls(**sizes, in_key=in_key, out_key=out_key)
        states = [state_key] if memory == "gru" else [f"{state_key}_h", f"{state_key}_c"]
        return cls(**sizes, in_keys=[in_key, *states, "is_init"], out_keys=[out_key, *[("next", k) for k in states]])
    if memory == "mlp":
        return None
    raise ValueError(f"make_memory: memory={memory!r} is invalid: expected one of {MEMORIES}.")


def _keys(prefix: str | None) -> tuple[str, str, str | None]:
    """(features key, memory output key, state key) of a trunk."""
    return ("embed", "memory", None) if prefix is None else (f"{prefix}_embed", f"{prefix}_memory", f"{prefix}_rs")


def _encoder(memory: str, obs_size: int, width: int, embed: str, encoder: nn.Module | None,
             in_keys: Sequence[str], standardize: bool = False) -> list[nn.Module]:
    extra = [nn.Linear(width, width), nn.GELU()] if memory == "mlp" else []  # the memoryless trunk's second layer
    if encoder is None:
        norm = [Standardize(obs_size)] if standardize else []
        return [Mod(nn.Sequential(*norm, nn.Linear(obs_size, width), nn.GELU(), *extra), list(in_keys), [embed])]
    return [Mod(encoder, list(in_keys), [embed])] + ([Mod(nn.Sequential(*extra), [embed], [embed])] if extra else [])


def _out_width(memory: str, width: int, config: ELMURConfig | None) -> int:
    return config.d_model if memory == "elmur" and config is not None else width


def make_trunk(memory: str, obs_size: int, *, width: int = 64, config: ELMURConfig | None = None,
               prefix: str | None = None, state_layout: str = "tokens", encoder: nn.Module | None = None,
               in_keys: Sequence[str] = ("observation",)) -> tuple[list[nn.Module], str, int]:
    """``observation [*B, obs_size]`` -> Linear + GELU -> memory: returns ``(modules, features key, width)``,
    the modules to put in a ``TensorDictSequential`` before a head (or to share between two heads).

    Keys: ``embed`` and ``memory`` (``<prefix>_embed``, ``<prefix>_memory`` and state key
    ``<prefix>_rs`` with a ``prefix``). ``"mlp"``: a second Linear + GELU instead of a memory, so
    that the memoryless trunk is not only shallower.

    ``encoder``: instead of the Linear + GELU, a module reading ``in_keys`` (e.g. a
    :class:`~torchrl_elmur.modules.PixelEncoder` on ``("pixels",)`` or ``("pixels", "proprio")``)
    and returning ``[*B, width]`` features; ``obs_size`` is then unused.

    Creation order (it fixes a seed's initial weights): the memory, then the encoder, as the online
    PPO results were measured; :func:`make_network` creates encoder, head, then memory.
    """
    embed, out, state = _keys(prefix)
    mem = make_memory(memory, width, config, in_key=embed, out_key=out, state_key=state, state_layout=state_layout)
    modules = _encoder(memory, obs_size, width, embed, encoder, in_keys)
    if mem is None:
        return modules, embed, width
    return [*modules, mem], out, _out_width(memory, width, config)


def make_network(memory: str, obs_size: int, head: Callable[[int], nn.Module], out_key: str, *, width: int = 64,
                 config: ELMURConfig | None = None, prefix: str | None = None, state_layout: str = "tokens",
                 encoder: nn.Module | None = None, in_keys: Sequence[str] = ("observation",),
                 standardize: bool = False) -> Seq:
    """One recurrent network: ``observation [*B, obs_size]`` -> Linear + GELU -> memory -> ``head(features
    width)`` writing ``out_key``: a BC actor's body, an IQL Q- or value network. Keys, ``encoder``,
    ``"mlp"``: as :func:`make_trunk`. ``standardize``: a :class:`~torchrl_elmur.modules.Standardize`
    before the Linear (the identity until :func:`fit_standardize` sets it from data).

    Creation order (it fixes a seed's initial weights): encoder, head, memory, as the T-Maze BC and
    IQL tutorials' results were measured.

    Examples:
        >>> net = make_network("gru", 5, lambda d: nn.Linear(d, 1), "state_value", width=8, prefix="value")
        >>> net.in_keys, net.out_keys[-1]
        (['observation', 'value_rs', 'is_init'], 'state_value')
    """
    embed, out, state = _keys(prefix)
    modules = _encoder(memory, obs_size, width, embed, encoder, in_keys, standardize)
    features = embed if memory == "mlp" else out
    head_module = Mod(head(_out_width(memory, width, config)), [features], [out_key])
    mem = make_memory(memory, width, config, in_key=embed, out_key=out, state_key=state, state_layout=state_layout)
    return Seq(*modules, *([] if mem is None else [mem]), head_module)


def make_bc_actor(memory: str, obs_size: int, *, num_actions: int | None = None, action_dim: int | None = None,
                  action_bound: float = 1.0, width: int = 64, config: ELMURConfig | None = None, prefix: str | None = None,
                  encoder: nn.Module | None = None, in_keys: Sequence[str] = ("observation",),
                  standardize: bool = False) -> nn.Module:
    """``observation [*B, obs_size]`` -> Linear + GELU (``embed``) -> memory (``memory``) -> head
    (:func:`make_network`).

    Give ``num_actions`` (discrete: writes ``logits`` and ``action``, int; greedy by default) or
    ``action_dim`` (continuous: writes ``action`` in ``[-action_bound, action_bound]``, a
    deterministic ``bound * tanh`` head). ELMUR's ``config`` must have ``input_size == width``.
    ``prefix``, ``encoder`` / ``in_keys``: see :func:`make_trunk` (pixels: a ``PixelEncoder``);
    ``standardize``: see :func:`make_network`.
    Without an ``encoder`` the actor records this call:
    :func:`~torchrl_elmur.training.checkpoint.save_policy` saves it, ``load_policy`` rebuilds it.

    Examples:
        >>> actor = make_bc_actor("gru", 5, num_actions=3, width=8)
        >>> [type(m).__name__ for m in actor.module[0]]
        ['TensorDictModule', 'GRUModule', 'TensorDictModule']
    """
    if (num_actions is None) == (action_dim is None):
        raise ValueError(f"make_bc_actor: give exactly one of num_actions (discrete) and action_dim (continuous); "
                         f"received num_actions={num_actions}, action_dim={action_dim}.")
    kw = dict(width=width, config=config, prefix=prefix, encoder=encoder, in_keys=in_keys, standardize=standardize)
    if num_actions is not None:
        net = make_network(memory, obs_size, lambda d: nn.Linear(d, num_actions), "logits", **kw)
        actor = ProbabilisticActor(net, in_keys=["logits"], out_keys=["action"], distribution_class=Categorical,
                                   default_interaction_type=InteractionType.DETERMINISTIC)
    else:
        scale = float(action_bound)
        actor = make_network(memory, obs_size, lambda d: nn.Sequential(nn.Linear(d, action_dim), nn.Tanh(), _Scale(scale)),
                             "action", **kw)
    if encoder is None:  # a module argument is not recorded: such an actor is saved as a state_dict
        record_build(actor, "make_bc_actor", (memory, obs_size),
                     dict(num_actions=num_actions, action_dim=action_dim, action_bound=action_bound, width=width,
                          config=config, prefix=prefix, in_keys=list(in_keys), standardize=standardize))
    return actor


def fit_standardize(module: nn.Module, observations) -> nn.Module:
    """Set every :class:`~torchrl_elmur.modules.Standardize` in ``module`` (built with
    ``standardize=True``) from ``observations`` ``[N, obs_size]`` (e.g. a dataset's observation key):
    per-feature mean and standard deviation. Returns ``module``; an error if it has none.

    Examples:
        >>> import torch
        >>> actor = make_bc_actor("mlp", 2, action_dim=1, width=4, standardize=True)
        >>> norm = fit_standardize(actor, torch.tensor([[0.0, 1.0], [2.0, 3.0]])).module[0].module[0]
        >>> norm.loc.tolist(), norm.scale.tolist()
        ([1.0, 2.0], [1.0, 1.0])
    """
    norms = [m for m in module.modules() if isinstance(m, Standardize)]
    if not norms:
        raise ValueError("fit_standardize: the module has no Standardize (build it with standardize=True).")
    for norm in norms:
        norm.fit(observations)
    return module


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
    return record_build((actor, critic), "make_actor_critic", (memory, obs_size, num_actions),
                        dict(width=width, config=config, state_layout=state_layout, shared_trunk=shared_trunk))


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
