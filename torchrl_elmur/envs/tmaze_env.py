"""The passive T-Maze as a batched, torch-native TorchRL env (every episode advances in one op)."""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from . import tmaze_rules as rules


class TMazeEnv(EnvBase):
    """Passive T-Maze, ``batch_size`` episodes at once, all with corridor length ``corridor_length``.

    Observation ``[*B, 4]`` float32 ``[y, hint, flag, noise]``; action ``[*B]`` int64 in
    {0 right, 1 up, 2 left, 3 down} (``Categorical(4)``); reward ``[*B, 1]``; an episode is
    ``corridor_length + 2`` steps and ends ``terminated``. Rules: :mod:`tmaze_rules`.

    Args:
        corridor_length: c >= 1 (an int, or a ``[*B]`` int tensor for per-episode lengths).
        batch_size: number of parallel episodes (default ``[1]``).
        seed: row ``i`` draws hints and noise from stream ``seed + i``, exactly as a gymnasium
            ``TMaze-v0`` env seeded ``seed + i`` does.
        goal_sides: ``"random"`` (hashed per episode) or ``"balanced"`` (row ``i`` has goal +1 if
            ``i`` is even, -1 if odd: both sides equally often, for evaluation).
        device: torch device.

    Examples:
        >>> env = TMazeEnv(corridor_length=3, batch_size=[2], goal_sides="balanced")
        >>> td = env.reset()
        >>> td["observation"][:, 1].tolist()  # the hint, only at reset
        [1.0, -1.0]
        >>> env.rollout(10).shape  # episodes of c + 2 = 5 steps
        torch.Size([2, 5])
    """

    def __init__(self, corridor_length: int | torch.Tensor = 10, batch_size=(1,), seed: int = 0,
                 goal_sides: str = "random", device=None) -> None:
        batch_size = torch.Size([batch_size] if isinstance(batch_size, int) else batch_size)
        super().__init__(device=device, batch_size=batch_size)
        if goal_sides not in ("random", "balanced"):
            raise ValueError(f"TMazeEnv: goal_sides={goal_sides!r} is invalid: expected 'random' or 'balanced'.")
        lengths = torch.as_tensor(corridor_length, dtype=torch.int64, device=self.device).expand(batch_size).clone()
        if bool((lengths < 1).any()):
            raise ValueError(f"TMazeEnv: corridor_length must be >= 1, received {corridor_length}.")
        self.corridor_length = lengths
        self.goal_sides = goal_sides
        n = batch_size.numel()
        self._stream = (torch.arange(n, device=self.device) + seed).reshape(batch_size)
        self._balanced_goal = (1 - 2 * (torch.arange(n, device=self.device) % 2)).reshape(batch_size)
        self._episode = torch.full(batch_size, -1, dtype=torch.int64, device=self.device)
        self._x = torch.zeros(batch_size, dtype=torch.int64, device=self.device)
        self._t = torch.zeros_like(self._x)
        self._goal = torch.ones_like(self._x)
        self._key = torch.zeros_like(self._x)
        self.observation_spec = Composite(
            observation=Unbounded((*batch_size, rules.OBS_DIM), dtype=torch.float32, device=self.device),
            shape=batch_size, device=self.device)
        self.action_spec = Categorical(rules.NUM_ACTIONS, shape=batch_size, dtype=torch.int64, device=self.device)
        self.reward_spec = Unbounded((*batch_size, 1), dtype=torch.float32, device=self.device)

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            n = self.batch_size.numel()
            self._stream = (torch.arange(n, device=self.device) + seed).reshape(self.batch_size)
            self._episode.fill_(-1)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict.get("_reset").reshape(self.batch_size)
        self._episode = torch.where(mask, self._episode + 1, self._episode)
        key = rules.episode_key(self._stream, self._episode)
        goal = self._balanced_goal if self.goal_sides == "balanced" else rules.hint_from_key(key)
        self._key = torch.where(mask, key, self._key)
        self._goal = torch.where(mask, goal, self._goal)
        self._x = torch.where(mask, 0, self._x)
        self._t = torch.where(mask, 0, self._t)
        obs = rules.reset_observation(self._key, self._goal, self.corridor_length)
        done = torch.zeros((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        return TensorDict({"observation": obs, "done": done, "terminated": done.clone()}, self.batch_size, device=self.device)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action").reshape(self.batch_size).to(torch.int64)
        self._x, self._t, obs, reward, done = rules.step(self._x, self._t, self._goal, self._key, action, self.corridor_length)
        done = done.unsqueeze(-1)
        return TensorDict(
            {"observation": obs, "reward": reward.unsqueeze(-1), "done": done, "terminated": done.clone()},
            self.batch_size, device=self.device,
        )

    @property
    def goal(self) -> torch.Tensor:
        """The goal side of the current episodes (+1 up / -1 down), for tests and analysis."""
        return self._goal.clone()
