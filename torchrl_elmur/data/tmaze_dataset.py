"""Offline T-Maze data: oracle episodes, generated deterministically (no downloads)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import TensorDictReplayBuffer, TensorStorage
from torchrl.envs import Compose, InitTracker, TransformedEnv

from ..envs import TMazeEnv, TMazeOracle
from .episode_sampler import EpisodeStartSampler

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


def cached_dataset(cache: str | Path | None, meta: dict, build: Callable[[], TensorDict]) -> TensorDict:
    """``build()``, or the copy saved in ``cache`` when it was made with the same ``meta``
    (the generator's arguments); a new build is saved there. ``cache=None``: always build."""
    if cache is not None and Path(cache).exists():
        saved = torch.load(cache, weights_only=False)
        if saved["meta"] == meta:
            return saved["data"]
    data = build()
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"meta": meta, "data": data}, cache)
    return data


def make_tmaze_dataset(num_episodes: int = 2000, min_corridor: int = 1, max_corridor: int = 28, seed: int = 0,
                       cache: str | Path | None = None) -> TensorDict:
    """Oracle T-Maze episodes with corridor lengths uniform in ``[min_corridor, max_corridor]``.

    Deterministic for a given ``seed``. ``cache``: optional file; loaded if it exists (and was made
    with the same arguments), else written after generation.

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


def make_offline_replay_buffer(data: TensorDict, batch_size: int, seq_len: int, seed: int | None = None) -> TensorDictReplayBuffer:
    """A replay buffer over ``data`` that samples ``[batch_size * seq_len]`` episode-aligned
    transitions; ``rb.sample().reshape(batch_size, seq_len)`` gives ``[B, T]``."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return TensorDictReplayBuffer(
        storage=TensorStorage(data), sampler=EpisodeStartSampler(seq_len, generator=generator),
        batch_size=batch_size * seq_len,
    )
