"""ELMURModule inside real TorchRL training code: losses on collected gymnasium data, and a drop-in swap.

Everything here is real TorchRL: ``GymEnv`` -> ``Collector(auto_register_policy_transforms=True)``
(which adds ``InitTracker`` and the module's ``TensorDictPrimer``) -> data reshaped to ``[B, T]``
with time last -> a loss (which runs in recurrent mode) -> backward.

vmap handling. ELMURModule cannot run under ``torch.vmap``: vmapped over data it hits its own
data-dependent checks ("data-dependent control flow"); vmapped over parameters (the Q-net copies of
IQL) it fails with gradients in the time-gap cross-attention (CPU sdpa under vmap has no gradient
for ``attn_mask``). What each loss needs:

- ``BCLoss``, ``ClipPPOLoss``: no vmap, nothing to do.
- ``GAE``: vmaps the value net over ``[root, next]`` -> ``GAE(..., deactivate_vmap=True)``.
- ``IQLLoss``: vmaps the Q-nets -> ``IQLLoss(..., deactivate_vmap=True)``.
- ``DiscreteIQLLoss``: no constructor argument -> ``loss.deactivate_vmap = True; loss._make_vmap()``
  (the flag alone is not enough: the vmapped Q caller is cached at construction).

A failed real-vmap call leaves the network's buffers as functorch BatchedTensors (TorchRL's
``_vmap_func`` behaviour, seen with any module), so every test builds fresh networks.
"""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs import GymEnv
from torchrl.modules import (
    GRUModule,
    LSTMModule,
    NormalParamExtractor,
    OneHotCategorical,
    ProbabilisticActor,
    TanhNormal,
    set_recurrent_mode,
)
from torchrl.objectives import BCLoss, ClipPPOLoss, DiscreteIQLLoss, IQLLoss
from torchrl.objectives.value import GAE

from torchrl_elmur import ELMURModule

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

WIDTH = 16
SMALL = dict(hidden_size=WIDTH, num_heads=2, segment_len=3, memory_slots=2)  # 2 layers (default)
B, T = 2, 12  # batch rows x time steps of every loss batch (T spans 4 segments)
# vmapped Q-nets (params batched, data not) fail in the time-gap cross-attention: torch's CPU sdpa
# under vmap is "not differentiable with respect to argument 'attn_mask'" (the learned gap bias)
VMAP_GRAD_ERROR = "attn_mask"


# ---------------------------------------------------------------------------------------------- helpers
def elmur(prefix: str, input_size: int, in_key: str = "observation") -> ELMURModule:
    """A small ELMURModule whose state key is ``<prefix>_state`` and output ``<prefix>_embed``."""
    return ELMURModule(input_size=input_size, in_key=in_key, out_key=f"{prefix}_embed", state_key=f"{prefix}_state", **SMALL)


def head(prefix: str, width: int, out_keys: list[str], extra: nn.Module | None = None) -> TensorDictModule:
    """``<prefix>_embed`` -> Linear(WIDTH, width) [-> extra] -> out_keys."""
    layers = [nn.Linear(WIDTH, width)] + ([extra] if extra is not None else [])
    return TensorDictModule(nn.Sequential(*layers), [f"{prefix}_embed"], out_keys)


def make_env(name: str) -> GymEnv:
    torch.manual_seed(0)
    env = GymEnv(name)
    env.set_seed(0)
    return env


def discrete_actor(env: GymEnv) -> ProbabilisticActor:
    """ELMUR -> logits -> OneHotCategorical (CartPole's one-hot int64 action)."""
    net = TensorDictSequential(elmur("actor", 4), head("actor", 2, ["logits"]))
    return ProbabilisticActor(net, in_keys=["logits"], distribution_class=OneHotCategorical, spec=env.action_spec,
                              return_log_prob=True)


def tanh_actor(env: GymEnv) -> ProbabilisticActor:
    """ELMUR -> (loc, scale) -> TanhNormal on Pendulum's [-2, 2] action."""
    net = TensorDictSequential(elmur("actor", 3), head("actor", 2, ["loc", "scale"], NormalParamExtractor()))
    return ProbabilisticActor(net, in_keys=["loc", "scale"], distribution_class=TanhNormal,
                              distribution_kwargs=dict(low=-2.0, high=2.0), spec=env.action_spec, return_log_prob=True)


def value_net(prefix: str, input_size: int, out_key: str, width: int = 1) -> TensorDictSequential:
    return TensorDictSequential(elmur(prefix, input_size), head(prefix, width, [out_key]))


def collect(env: GymEnv, policy) -> TensorDictBase:
    """B * T consecutive steps from one env, reshaped to ``[B, T]`` (time last).

    Row 1 starts mid-episode: its t = 0 carries the state the collector stored there."""
    collector = Collector(env, policy, frames_per_batch=B * T, total_frames=B * T, auto_register_policy_transforms=True)
    data = next(iter(collector))
    collector.shutdown()
    return data.reshape(B, T)


def elmur_modules(net: nn.Module) -> list[ELMURModule]:
    return [m for m in net.modules() if isinstance(m, ELMURModule)]


def qkv_grads(loss, network: str) -> list[torch.Tensor]:
    """Gradients of the first ELMUR layer's self-attention qkv weight of one of the loss's networks
    (``actor_network``, ``qvalue_network``, ...); expanded Q-net copies are read from the loss."""
    return [p.grad for name, p in loss.named_parameters()
            if name.startswith(f"{network}_params.") and name.endswith("backbone.layers.0.self_attn.qkv.weight")]


def backward_and_check(loss, losses, networks: list[str]) -> None:
    """All losses finite; their sum backpropagates into every named network's ELMUR weights."""
    for key, value in losses.items():
        assert torch.isfinite(value).all(), f"{key} = {value}"
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    for network in networks:
        grads = qkv_grads(loss, network)
        assert grads, f"no ELMUR qkv weight found in {network}"
        for g in grads:
            assert g is not None, f"no gradient reached {network}'s ELMUR weights"
            assert torch.isfinite(g).all() and g.abs().sum() > 0, f"{network}: gradient {g}"


# ---------------------------------------------------------------------------------------------- BCLoss
class TestBCLoss:
    def test_stochastic_actor_trains_on_collected_pendulum(self):
        """BCLoss(-log pi(a_expert|s)) with an ELMUR TanhNormal actor is finite and trains the ELMUR weights."""
        env = make_env("Pendulum-v1")
        actor = tanh_actor(env)
        data = collect(env, actor)
        loss = BCLoss(actor)
        out = loss(data.clone())
        backward_and_check(loss, out, ["actor_network"])

    def test_two_actor_calls_agree_with_one_recurrent_pass(self):
        """BCLoss runs the actor twice (forward, then get_dist); ELMUR gives the same NLL as one recurrent pass."""
        env = make_env("Pendulum-v1")
        actor = tanh_actor(env)
        data = collect(env, actor)
        module = elmur_modules(actor)[0]
        calls = []
        module.register_forward_hook(lambda *_: calls.append(1))
        bc = BCLoss(actor)(data.clone())["loss_bc"]
        assert len(calls) == 2
        with set_recurrent_mode(True), torch.no_grad():
            expected = -actor.get_dist(data.clone()).log_prob(data["action"]).mean()
        torch.testing.assert_close(bc.detach(), expected)

    def test_rerun_does_not_touch_its_inputs(self):
        """Re-running the ELMUR actor on its own output is idempotent and leaves its input keys unchanged."""
        env = make_env("Pendulum-v1")
        actor = tanh_actor(env)
        data = collect(env, actor)
        net = actor.module[0]  # ELMUR -> loc, scale
        module = elmur_modules(actor)[0]
        inputs = data.select(*module.in_keys).clone()
        with set_recurrent_mode(True), torch.no_grad():
            once = net(data.clone())
            twice = net(once.clone())
        for key in module.in_keys:
            torch.testing.assert_close(once[key], inputs[key], rtol=0, atol=0)
        for key in ["loc", "scale", *module.out_keys]:
            torch.testing.assert_close(twice[key], once[key], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- DiscreteIQLLoss
def discrete_iql_nets(env: GymEnv):
    """ELMUR actor, Q-net and value net, each with its own state keys (prefixes actor/qvalue/value)."""
    return discrete_actor(env), value_net("qvalue", 4, "state_action_value", 2), value_net("value", 4, "state_value")


class TestDiscreteIQLLoss:
    def test_trains_with_vmap_deactivated_after_construction(self):
        """DiscreteIQLLoss with three ELMUR nets trains once vmap is swapped for a loop after construction."""
        env = make_env("CartPole-v1")
        actor, qnet, vnet = discrete_iql_nets(env)
        keys = [set(m.state_keys) for net in (actor, qnet, vnet) for m in elmur_modules(net)]
        assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])  # own state keys
        data = collect(env, actor)
        loss = DiscreteIQLLoss(actor, qnet, vnet, action_space="one-hot")
        loss.deactivate_vmap = True  # no constructor argument in DiscreteIQLLoss
        loss._make_vmap()  # rebuild the cached (vmapped) Q caller as a plain loop
        out = loss(data.clone())
        backward_and_check(loss, out, ["actor_network", "qvalue_network", "value_network"])

    def test_raises_without_vmap_handling(self):
        """Without the handling the vmapped ELMUR Q-net raises (sdpa under vmap: no grad w.r.t. the time-gap bias)."""
        env = make_env("CartPole-v1")
        actor, qnet, vnet = discrete_iql_nets(env)
        data = collect(env, actor)
        loss = DiscreteIQLLoss(actor, qnet, vnet, action_space="one-hot")
        with pytest.raises(RuntimeError, match=VMAP_GRAD_ERROR):
            loss(data.clone())

    def test_flag_alone_is_not_enough(self):
        """Setting loss.deactivate_vmap without loss._make_vmap() still vmaps the Q-net and raises."""
        env = make_env("CartPole-v1")
        actor, qnet, vnet = discrete_iql_nets(env)
        data = collect(env, actor)
        loss = DiscreteIQLLoss(actor, qnet, vnet, action_space="one-hot")
        loss.deactivate_vmap = True
        with pytest.raises(RuntimeError, match=VMAP_GRAD_ERROR):
            loss(data.clone())


# ---------------------------------------------------------------------------------------------- IQLLoss
def iql_nets(env: GymEnv):
    """ELMUR TanhNormal actor, Q(s, a) = ELMUR on cat(observation, action), V(s) = ELMUR."""
    cat = TensorDictModule(lambda obs, act: torch.cat([obs, act], -1), ["observation", "action"], ["obs_action"])
    qnet = TensorDictSequential(cat, elmur("qvalue", 4, in_key="obs_action"), head("qvalue", 1, ["state_action_value"]))
    return tanh_actor(env), qnet, value_net("value", 3, "state_value")


class TestIQLLoss:
    def test_trains_with_deactivate_vmap(self):
        """IQLLoss(deactivate_vmap=True) with three ELMUR nets on Pendulum is finite and trains all three."""
        env = make_env("Pendulum-v1")
        actor, qnet, vnet = iql_nets(env)
        data = collect(env, actor)
        loss = IQLLoss(actor, qnet, vnet, deactivate_vmap=True)
        out = loss(data.clone())
        backward_and_check(loss, out, ["actor_network", "qvalue_network", "value_network"])

    def test_raises_with_vmap(self):
        """IQLLoss with its default vmap over the ELMUR Q-nets raises."""
        env = make_env("Pendulum-v1")
        actor, qnet, vnet = iql_nets(env)
        data = collect(env, actor)
        with pytest.raises(RuntimeError, match=VMAP_GRAD_ERROR):
            IQLLoss(actor, qnet, vnet)(data.clone())


# ---------------------------------------------------------------------------------------------- ClipPPOLoss + GAE
class TestClipPPOLoss:
    def test_gae_and_ppo_train_actor_and_critic(self):
        """GAE (recurrent, no vmap) then ClipPPOLoss on [B, T] CartPole data trains ELMUR actor and critic."""
        env = make_env("CartPole-v1")
        actor, critic = discrete_actor(env), value_net("critic", 4, "state_value")
        data = collect(env, actor)
        with set_recurrent_mode(True):
            data = GAE(gamma=0.99, lmbda=0.95, value_network=critic, deactivate_vmap=True)(data)
        assert data["advantage"].shape == (B, T, 1) and torch.isfinite(data["advantage"]).all()
        loss = ClipPPOLoss(actor, critic)
        out = loss(data)
        # fresh on-policy data: recurrent replay of the reshaped batch reproduces the collector's log-probs
        assert abs(out["kl_approx"].item()) < 1e-5 and out["clip_fraction"].item() == 0
        backward_and_check(loss, out, ["actor_network", "critic_network"])

    def test_gae_with_vmap_raises(self):
        """GAE's default vmap over the [root, next] stack cannot run the ELMUR critic (data-dependent control flow)."""
        env = make_env("CartPole-v1")
        actor, critic = discrete_actor(env), value_net("critic", 4, "state_value")
        data = collect(env, actor)
        with set_recurrent_mode(True), pytest.raises(RuntimeError, match="data-dependent control flow"):
            GAE(gamma=0.99, lmbda=0.95, value_network=critic)(data)


# ---------------------------------------------------------------------------------------------- drop-in swap
def run_pipeline(memory_cls, frames: int = 128, batch: int = 4, time: int = 12) -> dict:
    """CartPole -> Collector -> SliceSampler replay -> BCLoss (recurrent) -> backward -> Adam step.

    The memory is built with the one call GRUModule/LSTMModule/ELMURModule share; nothing below
    names a state key."""
    env = make_env("CartPole-v1")
    memory = memory_cls(input_size=4, hidden_size=16, in_key="observation", out_key="embed")
    net = TensorDictSequential(memory, TensorDictModule(nn.Linear(16, 2), ["embed"], ["logits"]))
    policy = ProbabilisticActor(net, in_keys=["logits"], distribution_class=OneHotCategorical, spec=env.action_spec)

    collector = Collector(env, policy, frames_per_batch=frames, total_frames=frames, auto_register_policy_transforms=True)
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(frames), batch_size=batch * time,
                                    sampler=SliceSampler(slice_len=time, traj_key=("collector", "traj_ids")))
    for data in collector:
        buffer.extend(data)
    collector.shutdown()
    sample = buffer.sample().reshape(batch, time)

    with set_recurrent_mode(True), torch.no_grad():
        replayed = net(sample.clone())["logits"]
    sample["action"] = sample["action"].float()  # int one-hot would send BCLoss to its cross-entropy branch
    loss = BCLoss(policy)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in memory.parameters()]
    value = loss(sample)["loss_bc"]
    value.backward()
    optim.step()
    return dict(loss=value.detach(), sample=sample, replayed=replayed, memory=memory,
                moved=any(bool((p != b).any()) for p, b in zip(memory.parameters(), before)))


class TestDropInSwap:
    @pytest.mark.parametrize("memory_cls", [GRUModule, LSTMModule, ELMURModule], ids=lambda c: c.__name__)
    def test_same_pipeline_runs(self, memory_cls):
        """The same collector/replay/BC pipeline runs for GRU, LSTM and ELMUR: finite loss, memory weights move."""
        out = run_pipeline(memory_cls)
        assert torch.isfinite(out["loss"])
        assert out["moved"]
        sample, memory = out["sample"], out["memory"]
        state_keys = memory.in_keys[1:-1]  # GRU: recurrent_state; LSTM: _h, _c; ELMUR: recurrent_state (a TensorDict)
        assert all(key in sample.keys(True) for key in state_keys)  # the collector carried them
        assert sample["is_init"][:, 0].all()  # SliceSampler marks every slice start
        # replaying mid-episode slices from their stored states reproduces the collected logits
        torch.testing.assert_close(out["replayed"], sample["logits"], rtol=1e-4, atol=1e-5)

    def test_state_keys_differ_between_classes(self):
        """GRU, LSTM and ELMUR default state keys differ; only the value key and is_init are shared."""
        keys = [set(cls(input_size=4, hidden_size=16, in_key="observation", out_key="embed").in_keys)
                for cls in (GRUModule, LSTMModule, ELMURModule)]
        assert keys[0] & keys[1] & keys[2] == {"observation", "is_init"}
        assert {"recurrent_state"} < keys[0] and {"recurrent_state_h", "recurrent_state_c"} < keys[1]
