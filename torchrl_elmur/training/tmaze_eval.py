"""Evaluate a TorchRL policy on the batched T-Maze: streaming, one environment step at a time."""
from __future__ import annotations

import torch
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import Compose, InitTracker, TransformedEnv
from torchrl.envs.utils import step_mdp
from torchrl.modules.utils import get_primers_from_module
from tqdm import tqdm

from ..envs import TMazeEnv


@torch.no_grad()
def tmaze_success_rate(policy: TensorDictModuleBase, corridor_length: int, episodes: int = 100, seed: int = 10_000,
                       device: str | torch.device = "cpu", progress: bool | None = None) -> float:
    """Success rate of ``policy`` over ``episodes`` T-Maze episodes of one corridor length.

    Both goal sides occur equally often (``goal_sides="balanced"``, ``episodes`` even). The
    policy's recurrent state is registered with its primers (``get_primers_from_module``) and
    carried by ``step_mdp``; a plain reset/step loop is used rather than ``env.rollout``, which
    would keep every step's (large) state in memory. Cost: ``corridor_length + 2`` policy steps
    on a batch of ``episodes``, whatever the memory module.

    Args:
        policy: reads ``observation`` (and its state keys, ``is_init``), writes ``action``
            (int in {0, 1, 2, 3}); put it in eval mode and deterministic interaction first.
        progress: show a tqdm bar (default: for corridors of 1000 steps or more).
    """
    if episodes < 2 or episodes % 2:
        raise ValueError(f"tmaze_success_rate: episodes must be even and >= 2, received {episodes}.")
    primers = get_primers_from_module(policy)
    env = TMazeEnv(corridor_length, batch_size=[episodes], goal_sides="balanced", seed=seed, device=device)
    env = TransformedEnv(env, Compose(InitTracker(), primers) if primers is not None else InitTracker())
    td = env.reset()
    reward = torch.zeros(episodes, device=device)
    show = corridor_length >= 1000 if progress is None else progress
    for _ in tqdm(range(corridor_length + 2), desc=f"  eval c={corridor_length}", leave=False, dynamic_ncols=True,
                  disable=not show, mininterval=2.0):
        td = env.step(policy(td))
        reward += td["next", "reward"].squeeze(-1)
        td = step_mdp(td)
    return (reward > 0.5).float().mean().item()
