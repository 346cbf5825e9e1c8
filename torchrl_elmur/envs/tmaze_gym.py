"""The passive T-Maze as a gymnasium env (``gymnasium.make("torchrl_elmur/TMaze-v0", corridor_length=c)``)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from . import tmaze_rules as rules


class TMazeGymEnv(gym.Env):
    """Passive T-Maze (rules in :mod:`tmaze_rules`), one episode at a time.

    ``reset(seed=s)`` starts stream ``s``; each later reset starts its next episode, so that it
    matches row ``i`` of :class:`~torchrl_elmur.envs.TMazeEnv` seeded ``s - i``.
    Observation ``Box(-1, 1, (4,), float32)``, action ``Discrete(4)``.
    """

    metadata = {"render_modes": []}

    def __init__(self, corridor_length: int = 10) -> None:
        if int(corridor_length) < 1:
            raise ValueError(f"TMazeGymEnv: corridor_length must be >= 1, received {corridor_length}.")
        self.corridor_length = int(corridor_length)
        self.observation_space = spaces.Box(-1.0, 1.0, (rules.OBS_DIM,), np.float32)
        self.action_space = spaces.Discrete(rules.NUM_ACTIONS)
        self._stream, self._episode = 0, -1
        self._state = None

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._stream, self._episode = int(seed), -1
        self._episode += 1
        key = rules.episode_key(torch.tensor(self._stream), torch.tensor(self._episode))
        goal = rules.hint_from_key(key)
        self._state = dict(x=torch.tensor(0), t=torch.tensor(0), goal=goal, key=key)
        obs = rules.reset_observation(key, goal, torch.tensor(self.corridor_length))
        return obs.numpy(), {"goal": int(goal)}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("TMazeGymEnv.step called before reset.")
        s = self._state
        x, t, obs, reward, done = rules.step(s["x"], s["t"], s["goal"], s["key"], torch.tensor(int(action)),
                                             torch.tensor(self.corridor_length))
        s["x"], s["t"] = x, t
        return obs.numpy(), float(reward), bool(done), False, {"goal": int(s["goal"])}
