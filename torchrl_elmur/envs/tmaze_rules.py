"""Passive T-Maze rules, as pure torch functions shared by the gymnasium and the batched env.

The task (``../shared/ELMUR.md`` section 6): a corridor of length ``c`` between the start cell
(x = 0) and the junction (x = c + 1); an episode is ``c + 2`` actions. Actions: 0 right, 1 up,
2 left, 3 down. The agent sees ``[y, hint, flag, noise]``: ``y`` its vertical position (0 in the
corridor), ``hint`` the goal side (+1 up / -1 down) only in the reset observation and 0 after,
``flag`` 1 at the junction, ``noise`` uniform in {-1, 0, 1} at every step. In the corridor, right
moves forward, left moves back (not past the start), up/down stay. The last action ends the
episode; the reward is 1 iff the agent is at the junction and moves to the goal side.

Randomness is a counter-based hash of ``(seed, episode index, step)``, so that a batched env row
``i`` seeded ``s`` and a gymnasium env seeded ``s + i`` see the very same hints and noise,
and any step of a 10^6-step episode costs the same.
"""
from __future__ import annotations

import torch
from torch import Tensor

RIGHT, UP, LEFT, DOWN = 0, 1, 2, 3
NUM_ACTIONS = 4
OBS_DIM = 4  # [y, hint, flag, noise]

_M32 = 2**32
_GOLDEN = 2654435761  # odd constant < 2^32: t * _GOLDEN stays far below 2^63 for t <= 10^9


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (int64 tensors with values in [0, 2^32); no overflow).

    Examples:
        >>> mix32(torch.tensor([0, 1, 2])).tolist()
        [0, 824515495, 1722258072]
    """
    x = ((x ^ (x >> 16)) * 73244475) % _M32
    x = ((x ^ (x >> 16)) * 73244475) % _M32
    return x ^ (x >> 16)


def episode_key(seed: Tensor, episode: Tensor) -> Tensor:
    """Key of one episode of one env stream (int64, same shape as the inputs)."""
    return mix32((mix32(seed % _M32) + episode) % _M32)


def hint_from_key(key: Tensor) -> Tensor:
    """Goal side of an episode: +1 (up) or -1 (down), int64."""
    return 2 * (mix32((key + 0x5BD1E995) % _M32) % 2) - 1


def noise_at(key: Tensor, t: Tensor) -> Tensor:
    """Observation noise at step ``t`` of an episode: -1, 0 or 1 (int64)."""
    return mix32((key + (t + 1) * _GOLDEN) % _M32) % 3 - 1


def observation(y: Tensor, hint: Tensor, flag: Tensor, noise: Tensor) -> Tensor:
    """Stack the four observation entries into ``[..., 4]`` float32."""
    return torch.stack([y, hint, flag, noise], -1).to(torch.float32)


def reset_observation(key: Tensor, goal: Tensor, corridor_length: Tensor) -> Tensor:
    """Observation at step 0: ``[0, goal, 0, noise]`` (the junction is never at x = 0)."""
    zero = torch.zeros_like(goal)
    return observation(zero, goal, zero, noise_at(key, zero))


def step(x: Tensor, t: Tensor, goal: Tensor, key: Tensor, action: Tensor, corridor_length: Tensor):
    """One step of every episode (all int64 tensors of the same shape).

    Returns:
        ``(x, t, observation [..., 4], reward float32, done bool)`` after the action.
    """
    junction = corridor_length + 1
    last = t == corridor_length + 1  # the (c + 2)-th action
    turning = (action == UP) | (action == DOWN)
    at_junction = x == junction
    new_x = torch.where(action == RIGHT, torch.minimum(x + 1, junction), x)
    new_x = torch.where(action == LEFT, (x - 1).clamp(min=0), new_x)
    side = torch.where(action == UP, 1, -1)
    moved_out = last & at_junction & turning
    reward = (moved_out & (side == goal)).to(torch.float32)
    y = torch.where(moved_out, side, torch.zeros_like(side))
    new_t = t + 1
    flag = (new_x == junction) & ~moved_out  # at the junction, not yet turned
    obs = observation(y, torch.zeros_like(x), flag.to(torch.int64), noise_at(key, new_t))
    return new_x, new_t, obs, reward, last


def oracle_action(observation: Tensor, goal: Tensor) -> Tensor:
    """The oracle: right until the junction flag, then to the goal side (int64 ``[...]``).

    Args:
        observation: ``[..., 4]``; goal: the hinted side ``[...]`` (+1/-1) seen at reset.
    """
    at_junction = observation[..., 2] > 0.5
    turn = torch.where(goal > 0, UP, DOWN)
    return torch.where(at_junction, turn, torch.full_like(turn, RIGHT))
