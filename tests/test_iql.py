"""IQL with ELMUR actor and critics: recurrent TD(0) targets, continuous IQLLoss training, discrete IQL on T-Maze data.

The networks are small ELMURModules, each with its own state keys (``state_key``); every loss
runs them in recurrent mode on ``[B, T]`` batches. vmap is off (``deactivate_vmap=True`` for
``IQLLoss``; flag + ``_make_vmap()`` for ``DiscreteIQLLoss``, see tests/test_module_losses.py).
"""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torch.distributions import Categorical
from torchrl.collectors import Collector
from torchrl.envs import GymEnv
from torchrl.modules import NormalParamExtractor, ProbabilisticActor, TanhNormal, set_recurrent_mode
from torchrl.objectives import DiscreteIQLLoss, IQLLoss, SoftUpdate
from torchrl.objectives.value import TD0Estimator

from torchrl_elmur import ELMURModule
from torchrl_elmur.data import make_offline_replay_buffer, make_tmaze_mixed_dataset
from torchrl_elmur.objectives import RecurrentTD0Estimator

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

WIDTH = 16
SMALL = dict(hidden_size=WIDTH, num_heads=2, segment_len=3, memory_slots=2)  # T below spans several segments


def network(prefix: str, input_size: int, out_keys: list[str], width: int, extra: nn.Module | None = None,
            in_key: str = "observation") -> TensorDictSequential:
    """in_key -> ELMUR (state key <prefix>_state) -> Linear(WIDTH, width) [-> extra] -> out_keys."""
    memory = ELMURModule(input_size=input_size, in_key=in_key, out_key=f"{prefix}_embed", state_key=f"{prefix}_state", **SMALL)
    layers = [nn.Linear(WIDTH, width)] + ([extra] if extra is not None else [])
    return TensorDictSequential(memory, TensorDictModule(nn.Sequential(*layers), [f"{prefix}_embed"], out_keys))


def elmur_qkv(net: nn.Module) -> list[torch.Tensor]:
    return [p for name, p in net.named_parameters() if name.endswith("backbone.layers.0.self_attn.qkv.weight")]


# ---------------------------------------------------------------------------------------------- RecurrentTD0Estimator
class TestRecurrentTD0Estimator:
    def episodes(self, B=2, T=9, seed=0):
        """[B, T] rows, each a single episode from its start; the last step is not terminal."""
        g = torch.Generator().manual_seed(seed)
        obs = torch.randn(B, T + 1, 3, generator=g)  # obs[:, t + 1] is the next observation of step t
        is_init = torch.zeros(B, T, 1, dtype=torch.bool)
        is_init[:, 0] = True
        done = torch.zeros(B, T, 1, dtype=torch.bool)
        return obs, TensorDict({"observation": obs[:, :-1], "is_init": is_init,
                                "next": {"observation": obs[:, 1:], "reward": torch.rand(B, T, 1, generator=g),
                                         "done": done, "terminated": done.clone()}}, [B, T])

    def test_next_values_see_the_whole_row(self):
        """V(s_{t+1}) equals V at position t + 1 of one recurrent pass over the episode's observations."""
        torch.manual_seed(0)
        vnet = network("value", 3, ["state_value"], 1).eval()
        obs, data = self.episodes()
        target = RecurrentTD0Estimator(gamma=0.9, value_network=vnet).value_estimate(data.clone())
        with set_recurrent_mode(True), torch.no_grad():
            full = vnet(TensorDict({"observation": obs, "is_init": torch.cat([data["is_init"], data["next", "done"][:, :1]], 1)},
                                   [2, 10]))["state_value"]
        torch.testing.assert_close(target, data["next", "reward"] + 0.9 * full[:, 1:])

    def test_torchrl_td0_drops_each_rows_first_observation(self):
        """Why the estimator exists: TorchRL's TD(0) runs a recurrent V on the next-observations alone."""
        torch.manual_seed(0)
        vnet = network("value", 3, ["state_value"], 1).eval()
        obs, data = self.episodes()
        with pytest.raises(KeyError, match="is_init"):  # offline data store no ("next", "is_init")
            TD0Estimator(gamma=0.9, value_network=vnet).value_estimate(data.clone())
        with_next_init = data.clone()
        with_next_init["next", "is_init"] = torch.zeros_like(data["is_init"])
        with set_recurrent_mode(True):
            plain = TD0Estimator(gamma=0.9, value_network=vnet).value_estimate(with_next_init)
        ours = RecurrentTD0Estimator(gamma=0.9, value_network=vnet).value_estimate(data.clone())
        assert not torch.allclose(plain, ours)  # TorchRL's values start from obs[1], without obs[0]

    def test_episode_ends_inside_a_row_are_masked(self):
        """A terminal step inside a row gets target r (the next position starts another episode)."""
        torch.manual_seed(0)
        vnet = network("value", 3, ["state_value"], 1).eval()
        _, data = self.episodes()
        data["next", "done"][:, 3] = True
        data["next", "terminated"][:, 3] = True
        data["is_init"][:, 4] = True
        target = RecurrentTD0Estimator(gamma=0.9, value_network=vnet).value_estimate(data.clone())
        torch.testing.assert_close(target[:, 3], data["next", "reward"][:, 3])

    def test_truncation_inside_a_row_raises(self):
        vnet = network("value", 3, ["state_value"], 1)
        _, data = self.episodes()
        data["next", "done"][:, 3] = True  # done, not terminated
        with pytest.raises(ValueError, match="truncated inside a row"):
            RecurrentTD0Estimator(gamma=0.9, value_network=vnet).value_estimate(data)


# ---------------------------------------------------------------------------------------------- IQLLoss, continuous
def pendulum_batch(actor, B: int = 2, T: int = 12):
    torch.manual_seed(0)
    env = GymEnv("Pendulum-v1")
    env.set_seed(0)
    collector = Collector(env, actor, frames_per_batch=B * T, total_frames=B * T, auto_register_policy_transforms=True)
    data = next(iter(collector))
    collector.shutdown()
    return data.reshape(B, T)  # row 1 starts mid-episode from the actor's stored state


class TestContinuousIQL:
    def test_optimizer_steps_train_all_three_elmur_networks(self):
        """IQLLoss with an ELMUR TanhNormal actor, ELMUR Q(s, a) and ELMUR V(s) on collected Pendulum data:
        a few Adam steps with SoftUpdate targets; losses and gradients stay finite, the ELMUR weights move."""
        torch.manual_seed(0)
        actor = ProbabilisticActor(network("actor", 3, ["loc", "scale"], 2, NormalParamExtractor()), in_keys=["loc", "scale"],
                                   distribution_class=TanhNormal, distribution_kwargs=dict(low=-2.0, high=2.0),
                                   return_log_prob=True)
        cat = TensorDictModule(lambda obs, act: torch.cat([obs, act], -1), ["observation", "action"], ["obs_action"])
        qnet = TensorDictSequential(cat, network("qvalue", 4, ["state_action_value"], 1, in_key="obs_action"))
        vnet = network("value", 3, ["state_value"], 1)
        data = pendulum_batch(actor)
        loss = IQLLoss(actor, qnet, vnet, deactivate_vmap=True, expectile=0.7, temperature=3.0)
        loss.make_value_estimator(RecurrentTD0Estimator, gamma=0.99, value_network=loss.value_network)
        updater = SoftUpdate(loss, tau=0.1)
        optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
        networks = {"actor": loss.actor_network_params, "qvalue": loss.qvalue_network_params, "value": loss.value_network_params}
        before = {k: [p.detach().clone() for p in v.parameters()] for k, v in networks.items()}
        target_before = loss.target_qvalue_network_params.clone()
        for _ in range(3):
            out = loss(data.clone())
            for key in ("loss_actor", "loss_qvalue", "loss_value"):
                assert torch.isfinite(out[key]), f"{key} = {out[key]}"
            optimizer.zero_grad()
            (out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]).backward()
            for name in networks:
                grads = [p.grad for n, p in loss.named_parameters()
                         if n.startswith(f"{name}_network_params.") and n.endswith("backbone.layers.0.self_attn.qkv.weight")]
                assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), name
            optimizer.step()
            updater.step()
        for name, params in networks.items():
            assert any(not torch.equal(p, b) for p, b in zip(params.parameters(), before[name])), f"{name} did not move"
        assert (loss.target_qvalue_network_params != target_before).any()  # targets follow
        assert elmur_qkv(actor)[0].data_ptr() == loss.actor_network_params.get(
            ("module", "0", "module", "0", "backbone", "layers", "0", "self_attn", "qkv", "weight")).data_ptr()


# ---------------------------------------------------------------------------------------------- DiscreteIQLLoss, T-Maze
class TestDiscreteIQLOnMixedTMaze:
    def test_loss_on_offline_batches(self):
        """DiscreteIQLLoss (categorical actions) on [B, T] mixed T-Maze batches: finite, all three ELMUR nets get gradients."""
        torch.manual_seed(0)
        data = make_tmaze_mixed_dataset(20, max_corridor=6)
        batch = make_offline_replay_buffer(data, 3, 12, seed=0).sample().reshape(3, 12)
        actor = ProbabilisticActor(network("actor", 4, ["logits"], 4), in_keys=["logits"], distribution_class=Categorical)
        loss = DiscreteIQLLoss(actor, network("qvalue", 4, ["state_action_value"], 4), network("value", 4, ["state_value"], 1),
                               action_space="categorical", expectile=0.7, temperature=3.0)
        loss.deactivate_vmap = True
        loss._make_vmap()
        loss.make_value_estimator(RecurrentTD0Estimator, gamma=0.99, value_network=loss.value_network)
        out = loss(batch)
        total = out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]
        assert torch.isfinite(total)
        total.backward()
        for name in ("actor", "qvalue", "value"):
            grads = [p.grad for n, p in loss.named_parameters()
                     if n.startswith(f"{name}_network_params.") and n.endswith("self_attn.qkv.weight")]
            assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name
