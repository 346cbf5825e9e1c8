"""Offline T-Maze data: oracle episodes, generated deterministically (no downloads)."""
from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.envs import Compose, InitTracker, TransformedEnv

from ..envs import TMazeEnv, TMazeOracle
from .storage import cached_dataset

KEEP = ["observation", "action", "is_init", ("next", "observation"), ("next", "reward"), ("next", "done"),
        ("next", "terminated"), ("next", "truncated")]


def collect_episodes(policy, corridor_lengths: torch.Tensor, seed: int = 0) -> TensorDict:
    """Roll ``policy`` once through one T-Maze episode per entry of ``corridor_lengths``.

    Returns a flat TensorDict ``[N]`` of transitions, episode after episode, with the keys of
    :data:`KEEP` plus ``episode`` (int64 id, 0..E-1) and ``corridor_length``.
    """
    lengths = torch.as_tensor(corridor_lengths, dtype=torch.int64)
    env = TMazeEnv(corridor_length=lengths, batch_size=[len(lengths)], seed=seed)
    env = TransformedEnv(env, Compose(InitTracker(), policy.make_tensordict_primer()))
    horizon = int(lengths.max()) + 2
    with torch.no_grad():
        rollout = env.rollout(horizon, policy, break_when_any_done=False)  # [E, horizon]
    rollout.set(("next", "truncated"), torch.zeros_like(rollout.get(("next", "done"))))
    rollout = rollout.select(*KEEP)
    keep = torch.arange(horizon)[None] < (lengths + 2)[:, None]  # each row's own episode
    rollout["episode"] = torch.arange(len(lengths))[:, None].expand(-1, horizon).clone()
    rollout["corridor_length"] = lengths[:, None].expand(-1, horizon).clone()
    return rollout[keep]


def make_tmaze_dataset(num_episodes: int = 2000, min_corridor: int = 1, max_corridor: int = 28, seed: int = 0,
                       cache: str | Path | None = None) -> TensorDict:
    """Oracle T-Maze episodes with corridor lengths uniform in ``[min_corridor, max_corridor]``.

    Deterministic for a given ``seed``. ``cache``: optional folder; loaded (memory-mapped) if it
    holds a build with the same arguments, else written after generation
    (:func:`~torchrl_elmur.data.storage.cached_dataset`).

    Returns:
        a flat TensorDict ``[N]`` (see :func:`collect_episodes`); episodes of at most
        ``max_corridor + 2`` steps.
    """
    if not 1 <= min_corridor <= max_corridor:
        raise ValueError(f"make_tmaze_dataset: need 1 <= min_corridor <= max_corridor, received {min_corridor}, {max_corridor}.")
    meta = dict(num_episodes=num_episodes, min_corridor=min_corridor, max_corridor=max_corridor, seed=seed)

    def build() -> TensorDict:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(min_corridor, max_corridor + 1, (num_episodes,), generator=g)
        return collect_episodes(TMazeOracle(), lengths, seed=seed)

    return cached_dataset(cache, meta, build)
