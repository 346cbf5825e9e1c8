"""Offline POPGym data: privileged-oracle episodes, seeded, stored on disk with a TorchRL storage.

Same offline format as the T-Maze data (:func:`~torchrl_elmur.data.make_tmaze_dataset`): one flat
TensorDict ``[N]`` of transitions, episode after episode, with ``observation``, ``action``,
``is_init`` (True at each episode's first step), ``("next", observation / reward / done /
terminated / truncated)`` and an int64 ``episode`` id. Observations and actions are those of
:func:`~torchrl_elmur.envs.make_popgym_gym` (the TorchRL env's), so a policy trained on the data
runs unchanged in :func:`~torchrl_elmur.envs.make_popgym_env`.

Episode ``i`` is played from ``reset(seed=seed + i)``; evaluation should use seeds from
:data:`EVAL_SEED` on (disjoint from any dataset of fewer than 10^6 episodes).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from tqdm import tqdm

from ..envs.popgym_env import FlatDiscreteAction, make_popgym_gym, task_name
from .storage import EVAL_SEED, cached_dataset

__all__ = ["EVAL_SEED", "make_popgym_dataset", "play_episodes"]

FORMAT_VERSION = 1  # bump when the stored format or the oracles change
Behaviour = Callable[[gym.Env], object]  # raw POPGym env -> action in its original action space


def _oracle() -> Behaviour:
    from ..envs.popgym_oracles import oracle_action

    return oracle_action


def _flat_action(env: gym.Env, action) -> np.ndarray:
    """An action of the raw env's space in the wrapped env's (flat) space."""
    if isinstance(env.env, FlatDiscreteAction):  # make_popgym_gym's wrapper order
        return env.env.reverse_action(action)
    if isinstance(env.action_space, gym.spaces.Discrete):
        return np.int64(int(np.asarray(action).item()))
    return np.asarray(action, dtype=np.float32).reshape(env.action_space.shape)


def play_episodes(task: str, num_episodes: int, seed: int = 0, behaviour: Behaviour | None = None,
                  progress: bool = True) -> TensorDict:
    """Play ``num_episodes`` episodes of ``task`` with ``behaviour`` (default: the task's oracle).

    Args:
        behaviour: ``behaviour(raw_env) -> action`` reading the unwrapped POPGym env (its hidden
            state), acting in its original action space (MultiDiscrete actions are flattened here).

    Returns:
        the flat TensorDict ``[N]`` of the module docstring.
    """
    behaviour = _oracle() if behaviour is None else behaviour
    env = make_popgym_gym(task)
    rows: dict[str, list] = {k: [] for k in ("observation", "action", "next_observation", "reward", "terminated",
                                             "truncated", "episode", "is_init")}
    for episode in tqdm(range(num_episodes), desc=f"{task_name(task)} episodes", disable=not progress,
                        dynamic_ncols=True, mininterval=1.0):
        obs, _ = env.reset(seed=seed + episode)
        first, done = True, False
        while not done:
            action = _flat_action(env, behaviour(env.unwrapped))
            next_obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            for key, value in (("observation", obs), ("action", action), ("next_observation", next_obs),
                               ("reward", reward), ("terminated", terminated), ("truncated", truncated),
                               ("episode", episode), ("is_init", first)):
                rows[key].append(value)
            obs, first = next_obs, False
    env.close()
    n = len(rows["reward"])

    def col(key, dtype):
        return torch.as_tensor(np.asarray(rows[key]), dtype=dtype)

    terminated, truncated = col("terminated", torch.bool)[:, None], col("truncated", torch.bool)[:, None]
    action_dtype = torch.int64 if np.issubdtype(np.asarray(rows["action"][0]).dtype, np.integer) else torch.float32
    return TensorDict({
        "observation": col("observation", torch.float32),
        "action": col("action", action_dtype),
        "is_init": col("is_init", torch.bool)[:, None],
        "episode": col("episode", torch.int64),
        "next": {"observation": col("next_observation", torch.float32), "reward": col("reward", torch.float32)[:, None],
                 "done": terminated | truncated, "terminated": terminated, "truncated": truncated},
    }, batch_size=[n])


def make_popgym_dataset(task: str, num_episodes: int = 1000, seed: int = 0, cache_dir: str | Path | None = "outputs/cache/popgym",
                        progress: bool = True) -> TensorDict:
    """Oracle episodes of a POPGym task, stored in a ``LazyMemmapStorage`` under ``cache_dir``.

    Built once per (task, episodes, seed, format); later calls load the memory-mapped copy.
    ``cache_dir=None``: build in memory, store nothing.

    Returns:
        the flat TensorDict ``[N]`` of the module docstring (memory-mapped when cached).

    Examples:
        >>> data = make_popgym_dataset("RepeatFirstEasy", num_episodes=2, cache_dir=None, progress=False)
        >>> data.batch_size, data["is_init"].sum().item(), data["episode"].unique().tolist()
        (torch.Size([102]), 2, [0, 1])
    """
    name = task_name(task)
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
        raise ValueError(f"make_popgym_dataset: num_episodes must be an int >= 1, received {num_episodes!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or seed + num_episodes > EVAL_SEED:
        raise ValueError(f"make_popgym_dataset: need 0 <= seed and seed + num_episodes <= {EVAL_SEED} (evaluation "
                         f"seeds start there), received seed={seed!r}, num_episodes={num_episodes}.")
    meta = {"task": name, "num_episodes": num_episodes, "seed": seed, "format": FORMAT_VERSION}
    folder = None if cache_dir is None else Path(cache_dir) / f"{name}_{num_episodes}_{seed}"
    return cached_dataset(folder, meta, lambda: play_episodes(name, num_episodes, seed, progress=progress))
