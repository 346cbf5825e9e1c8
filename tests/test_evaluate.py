"""first_episode_returns: one episode per env of a batched env, streamed; envs that finish early are reset."""
import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torchrl.modules import ProbabilisticActor

pytest.importorskip("popgym")

from torchrl_elmur import ELMURModule  # noqa: E402
from torchrl_elmur.envs import make_popgym_env, make_popgym_gym  # noqa: E402
from torchrl_elmur.training.evaluate import first_episode_returns  # noqa: E402


class Constant(nn.Module):
    def forward(self, observation):
        return torch.zeros(observation.shape[:-1], dtype=torch.int64)


def test_returns_equal_the_gymnasium_episodes_with_the_same_seeds():
    """A constant policy on 4 seeded MineSweeper envs (episodes of different lengths) scores what the
    same episodes score played one by one in gymnasium."""
    env = make_popgym_env("MineSweeperEasy", num_envs=4)
    env.set_seed(100)
    returns = first_episode_returns(Mod(Constant(), ["observation"], ["action"]), env, max_steps=50)
    expected = []
    for i in range(4):
        gym_env = make_popgym_gym("MineSweeperEasy")
        gym_env.reset(seed=100 + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = gym_env.step(np.int64(0))
            total, done = total + reward, terminated or truncated
        expected.append(total)
    torch.testing.assert_close(returns, torch.tensor(expected), rtol=0, atol=1e-6)


def test_recurrent_policy_with_episodes_ending_at_different_steps():
    torch.manual_seed(0)
    memory = ELMURModule(input_size=19, hidden_size=8, num_layers=1, segment_len=3, in_key="observation", out_key="embed")
    actor = ProbabilisticActor(Seq(memory, Mod(nn.Linear(8, 16), ["embed"], ["logits"])), in_keys=["logits"],
                               out_keys=["action"], distribution_class=torch.distributions.Categorical)
    env = make_popgym_env("MineSweeperEasy", num_envs=6)
    env.set_seed(0)
    returns = first_episode_returns(actor, env, max_steps=20)
    assert returns.shape == (6,) and actor.training and memory.state_layout == "tokens"
    with pytest.raises(RuntimeError, match=r"had not finished an episode after max_steps=2"):
        first_episode_returns(actor, env, max_steps=2)
