"""POPGym offline data: the T-Maze offline format, flat actions, seeded episodes, the on-disk cache."""
import numpy as np
import pytest
import torch

pytest.importorskip("popgym")

from torchrl_elmur.data import make_offline_replay_buffer  # noqa: E402
from torchrl_elmur.data import popgym_dataset  # noqa: E402
from torchrl_elmur.data.popgym_dataset import EVAL_SEED, make_popgym_dataset, play_episodes  # noqa: E402


def first_action(env):
    """A deterministic behaviour in the raw env's action space."""
    space = env.action_space
    return np.zeros(space.shape, np.int64) if space.shape else 0


def random_behaviour(seed):
    rng = np.random.default_rng(seed)
    return lambda env: rng.integers(env.action_space.nvec) if hasattr(env.action_space, "nvec") else int(
        rng.integers(env.action_space.n))


def test_offline_format_and_episode_boundaries():
    data = play_episodes("RepeatPreviousEasy", 3, seed=5, behaviour=random_behaviour(0), progress=False)
    assert data.batch_size == (3 * 51,)  # RepeatPreviousEasy: 51 steps per episode
    assert set(data.keys(True, True)) >= {"observation", "action", "is_init", "episode", ("next", "observation"),
                                          ("next", "reward"), ("next", "done"), ("next", "terminated"), ("next", "truncated")}
    is_init, done = data["is_init"].squeeze(-1), data["next", "done"].squeeze(-1)
    assert is_init.nonzero().squeeze(-1).tolist() == [0, 51, 102] and done.nonzero().squeeze(-1).tolist() == [50, 101, 152]
    assert data["episode"].tolist() == [0] * 51 + [1] * 51 + [2] * 51
    inside = ~done[:-1]  # within an episode the next observation is the following step's observation
    torch.testing.assert_close(data["next", "observation"][:-1][inside], data["observation"][1:][inside])
    assert data["action"].dtype == torch.int64 and data["observation"].dtype == torch.float32


def test_episodes_are_seeded():
    a = play_episodes("LabyrinthEscapeEasy", 2, seed=3, behaviour=first_action, progress=False)
    b = play_episodes("LabyrinthEscapeEasy", 2, seed=3, behaviour=first_action, progress=False)
    c = play_episodes("LabyrinthEscapeEasy", 2, seed=4, behaviour=first_action, progress=False)
    assert torch.equal(a["observation"], b["observation"])
    assert a.batch_size != c.batch_size or not torch.equal(a["observation"], c["observation"])


def test_multidiscrete_behaviour_is_stored_as_the_flat_action():
    data = play_episodes("BattleshipEasy", 1, behaviour=lambda env: np.array([3, 5]), progress=False)
    assert (data["action"] == 8 * 3 + 5).all()


def test_continuous_actions():
    data = play_episodes("PositionOnlyPendulumEasy", 1, behaviour=lambda env: np.array([0.5], np.float32), progress=False)
    assert data["action"].shape == (200, 1) and data["action"].dtype == torch.float32


def test_cache_builds_once_and_loads_from_disk(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(popgym_dataset, "_oracle", lambda: (lambda env: calls.append(1) or first_action(env)))
    first = make_popgym_dataset("MineSweeperEasy", num_episodes=3, seed=2, cache_dir=tmp_path, progress=False)
    n_calls = len(calls)
    again = make_popgym_dataset("popgym-MineSweeperEasy-v0", num_episodes=3, seed=2, cache_dir=tmp_path, progress=False)
    assert len(calls) == n_calls > 0  # loaded, not played again
    assert torch.equal(first["observation"], again["observation"]) and torch.equal(first["action"], again["action"])
    assert (tmp_path / "MineSweeperEasy_3_2" / "meta.json").exists()
    make_popgym_dataset("MineSweeperEasy", num_episodes=3, seed=7, cache_dir=tmp_path, progress=False)
    assert len(calls) > n_calls  # another seed: built
    buffer = make_offline_replay_buffer(again, batch_size=2, seq_len=5, seed=0)
    sample = buffer.sample().reshape(2, 5)
    assert sample["is_init"][:, 0].all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_episodes must be an int >= 1, received 0"):
        make_popgym_dataset("RepeatFirstEasy", num_episodes=0, cache_dir=None)
    with pytest.raises(ValueError, match=f"seed \\+ num_episodes <= {EVAL_SEED}"):
        make_popgym_dataset("RepeatFirstEasy", num_episodes=10, seed=EVAL_SEED - 5, cache_dir=None)
    with pytest.raises(ValueError, match="unknown task 'RepeatFirstHardest'"):
        make_popgym_dataset("RepeatFirstHardest", num_episodes=1, cache_dir=None)
