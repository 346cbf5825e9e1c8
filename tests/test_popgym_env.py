"""POPGym's 48 tasks as TorchRL envs: specs, encodings, flat actions, batched envs, ELMUR through a Collector."""
import functools

import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import SerialEnv
from torchrl.envs.utils import check_env_specs
from torchrl.modules import ProbabilisticActor, set_recurrent_mode

pytest.importorskip("popgym")

from torchrl_elmur import ELMURModule  # noqa: E402
from torchrl_elmur.envs.popgym_env import (  # noqa: E402
    FlatDiscreteAction, make_popgym_env, make_popgym_gym, popgym_tasks, task_name,
)

TASKS = sorted(popgym_tasks())


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_there_are_48_tasks_in_16_families():
    families = {t.removesuffix(d) for t in TASKS for d in ("Easy", "Medium", "Hard") if t.endswith(d)}
    assert len(TASKS) == 48 and len(families) == 16


@pytest.mark.parametrize("task", TASKS)
def test_specs_and_an_elmur_policy_through_a_collector(task):
    """Every task: TorchRL's spec check, then a small ELMUR policy streamed by a Collector (the state
    carried step to step), and the collected outputs replayed exactly in recurrent mode."""
    env = make_popgym_env(task)
    check_env_specs(env, seed=0)
    obs_size = env.observation_spec["observation"].shape[-1]
    memory = ELMURModule(input_size=obs_size, hidden_size=8, num_layers=1, segment_len=3, in_key="observation",
                         out_key="embed")
    env.append_transform(memory.make_tensordict_primer())
    if env.action_spec.dtype == torch.int64:  # Discrete (flattened MultiDiscrete included)
        head = Mod(nn.Linear(8, env.action_spec.n), in_keys=["embed"], out_keys=["logits"])
        policy = ProbabilisticActor(Seq(memory, head), in_keys=["logits"], out_keys=["action"],
                                    distribution_class=torch.distributions.Categorical)
    else:  # the Pendulums: Box(-2, 2, (1,))
        policy = Seq(memory, Mod(nn.Sequential(nn.Linear(8, 1), nn.Tanh()), in_keys=["embed"], out_keys=["action"]))
    collector = Collector(env, policy, frames_per_batch=12, total_frames=12)
    collector.set_seed(0)
    try:
        data = next(iter(collector))
    finally:
        collector.shutdown()
    assert data["observation"].shape == (12, obs_size) and data["observation"].dtype == torch.float32
    assert ("next", "recurrent_state", "memory") in data.keys(True)
    with torch.no_grad(), set_recurrent_mode(True):
        replayed = memory(data.select("observation", "is_init", "recurrent_state").unsqueeze(0))
    torch.testing.assert_close(replayed["embed"][0], data["embed"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("task, size", [("AutoencodeEasy", 2 + 4), ("CountRecallHard", 13 + 13), ("HigherLowerEasy", 13),
                                        ("BattleshipEasy", 2 + 64), ("MineSweeperEasy", 3 + 16),
                                        ("ConcentrationEasy", 52 * 3 + 52), ("LabyrinthEscapeEasy", 10 * 5 + 4),
                                        ("MultiarmedBanditHard", 2 + 30), ("PositionOnlyPendulumEasy", 2 + 0)])
def test_observation_encoding_sizes(task, size):
    """One-hot per discrete part (Autoencode's Tuple included), plus the previous action one-hot where
    the task needs it (Bandit, Battleship, Concentration, MineSweeper, Labyrinth)."""
    env = make_popgym_gym(task)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (size,) and obs.shape == (size,)


def test_autoencode_observation_is_the_tuple_one_hot():
    env = make_popgym_gym("AutoencodeEasy")
    obs, _ = env.reset(seed=1)
    assert obs.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]  # (mode 1, suit 3) as two one-hots


def test_multidiscrete_actions_are_flattened_row_major():
    """Battleship's MultiDiscrete([8, 8]) action as Discrete(64): flat action 8 * r + c fires at (r, c)."""
    env = make_popgym_gym("BattleshipEasy")
    env.reset(seed=0)
    assert isinstance(env.env, FlatDiscreteAction) and env.action_space.n == 64
    obs, *_ = env.step(np.int64(8 * 3 + 5))
    assert env.unwrapped.guesses[3, 5] and env.unwrapped.guesses.sum() == 1
    assert obs[2 + 8 * 3 + 5] == 1.0  # the previous action, one-hot, in the next observation
    for bad in (np.array([3, 5]), np.int64(64), 2.5):
        with pytest.raises(ValueError, match=r"action must be one int in \[0, 64\)"):
            env.step(bad)


def test_unknown_task_ids_are_refused_with_suggestions():
    with pytest.raises(ValueError, match=r"unknown task 'RepeatFirstHrad'. Did you mean \['RepeatFirstHard'"):
        task_name("RepeatFirstHrad")
    with pytest.raises(ValueError, match="unknown task 'CartPole-v1'"):
        make_popgym_env("CartPole-v1")
    with pytest.raises(TypeError, match="expected a task name or gym id"):
        task_name(3)
    assert task_name("popgym-VelocityOnlyCartpoleHard-v0") == "VelocityOnlyCartPoleHard"


def test_batched_envs_reset_each_row_at_its_own_episode_end():
    """A SerialEnv of 3 RepeatPrevious envs (51-step episodes) rolled 120 steps: every row's
    episodes end with done and the step after starts a new one (is_init), with no corrupted
    transition at the boundary (gymnasium's NEXT_STEP autoreset would record one)."""
    env = SerialEnv(3, functools.partial(make_popgym_env, "RepeatPreviousEasy"))
    env.set_seed(0)
    data = env.rollout(120, break_when_any_done=False)
    env.close()
    done = data["next", "done"].squeeze(-1)
    is_init = data["is_init"].squeeze(-1)
    assert done.sum(1).tolist() == [2, 2, 2]  # steps 51 and 102 of every row
    assert torch.equal(is_init[:, 1:], done[:, :-1]) and is_init[:, 0].all()
    # the first k = 4 steps of each episode cannot be answered yet: reward 0, also right after a reset
    reward = data["next", "reward"].squeeze(-1)
    starts = is_init.nonzero()
    for row, t in starts.tolist():
        assert (reward[row, t:t + 3] == 0).all() and reward[row, t + 3] != 0


def test_vector_env_resets_each_row_at_its_own_episode_end():
    """The same check on make_popgym_env(num_envs=3): a gymnasium vector env without autoreset,
    reset by TorchRL where done; sub-env i is seeded s + i."""
    env = make_popgym_env("RepeatPreviousEasy", num_envs=3)
    env.set_seed(0)
    data = env.rollout(120, break_when_any_done=False)
    done, is_init = data["next", "done"].squeeze(-1), data["is_init"].squeeze(-1)
    assert done.sum(1).tolist() == [2, 2, 2] and torch.equal(is_init[:, 1:], done[:, :-1])
    single = make_popgym_env("RepeatPreviousEasy")
    single.set_seed(1)
    torch.testing.assert_close(single.reset()["observation"], data["observation"][1, 0])
    with pytest.raises(ValueError, match="num_envs must be None or an int >= 1, received 0"):
        make_popgym_env("RepeatPreviousEasy", num_envs=0)
