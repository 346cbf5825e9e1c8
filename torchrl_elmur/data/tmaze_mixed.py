"""Mixed-quality offline T-Maze data: oracle episodes among wrong turns and wandering, for offline RL.

Three behaviour policies (small TorchRL policies, like :class:`~torchrl_elmur.envs.TMazeOracle`)
play the T-Maze and the env scores them:

=============  ==========================================================  ==================
behaviour      what it does                                                 return
=============  ==========================================================  ==================
``oracle``     right to the junction, then to the hinted side               always 1
``wrong_turn`` right to the junction, then to the *other* side              always 0
``wander``     in the corridor a uniformly random action with probability  1 only if it never
               ``wander_noise`` (else right), at the junction a random     strays and guesses
               side                                                         right (rare)
=============  ==========================================================  ==================

Default fractions: 30% oracle, 50% wrong turns, 20% wandering. At the junction the data turn to
the wrong side 5 times for every 3 correct turns, so a copy of the data (behaviour cloning) turns
the wrong way, while the reward tells an offline RL method which turn pays.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase

from ..envs import TMazeOracle
from ..envs.tmaze_rules import DOWN, NUM_ACTIONS, UP
from .storage import cached_dataset
from .tmaze_dataset import collect_episodes

BEHAVIOURS = ("oracle", "wrong_turn", "wander")  # the int in the dataset's "behaviour" key indexes this
DEFAULT_FRACTIONS = {"oracle": 0.3, "wrong_turn": 0.5, "wander": 0.2}


class TMazeBehaviour(TMazeOracle):
    """A T-Maze behaviour policy: the oracle with a chosen turn and, optionally, random corridor moves.

    Keeps the oracle's keys (reads ``observation``, ``oracle_hint``, ``is_init``; writes ``action``
    and ``("next", "oracle_hint")``) and its :meth:`make_tensordict_primer`.

    Args:
        turn: at the junction, ``"correct"`` (the hinted side, as the oracle), ``"wrong"`` (the
            other side) or ``"random"`` (up or down with equal probability).
        corridor_noise: probability of a uniformly random action (any of the 4) at each corridor
            step instead of moving right. Any such step that is not "right" makes the episode miss
            the junction at its last step (return 0).
        seed: seed of the policy's own random draws.

    Examples:
        >>> from torchrl.envs import Compose, InitTracker, TransformedEnv
        >>> from torchrl_elmur.envs import TMazeEnv
        >>> policy = TMazeBehaviour(turn="wrong")
        >>> env = TransformedEnv(TMazeEnv(3, batch_size=[2]), Compose(InitTracker(), policy.make_tensordict_primer()))
        >>> env.rollout(10, policy)["next", "reward"].sum().item()  # always the wrong side
        0.0
    """

    def __init__(self, turn: str = "correct", corridor_noise: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        if turn not in ("correct", "wrong", "random"):
            raise ValueError(f"TMazeBehaviour: turn={turn!r} is invalid: expected 'correct', 'wrong' or 'random'.")
        if not 0.0 <= corridor_noise <= 1.0:
            raise ValueError(f"TMazeBehaviour: corridor_noise={corridor_noise} is invalid: expected [0, 1].")
        self.turn = turn
        self.corridor_noise = corridor_noise
        self.generator = torch.Generator().manual_seed(seed)

    def _rand(self, shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = super().forward(tensordict)  # oracle action, hint kept in ("next", "oracle_hint")
        action = tensordict.get("action")
        hint = tensordict.get(("next", "oracle_hint")).squeeze(-1)
        at_junction = tensordict.get("observation")[..., 2] > 0.5
        if self.turn != "correct":
            side = hint if self.turn == "wrong" else torch.where(self._rand(hint.shape) < 0.5, 1.0, -1.0).to(hint)
            turn = torch.where(side > 0, DOWN, UP) if self.turn == "wrong" else torch.where(side > 0, UP, DOWN)
            action = torch.where(at_junction, turn.to(action), action)
        if self.corridor_noise > 0:
            stray = (self._rand(action.shape) < self.corridor_noise) & ~at_junction
            random_action = torch.randint(NUM_ACTIONS, action.shape, generator=self.generator).to(action)
            action = torch.where(stray, random_action, action)
        tensordict.set("action", action)
        return tensordict


def behaviour_policies(wander_noise: float = 0.5, seed: int = 0) -> dict[str, TMazeOracle]:
    """The policy behind each entry of :data:`BEHAVIOURS`."""
    return {
        "oracle": TMazeOracle(),
        "wrong_turn": TMazeBehaviour(turn="wrong"),
        "wander": TMazeBehaviour(turn="random", corridor_noise=wander_noise, seed=seed),
    }


def episode_counts(num_episodes: int, fractions: dict[str, float]) -> dict[str, int]:
    """Episodes per behaviour: ``round(fraction * num_episodes)``, the remainder going to the last one.

    Examples:
        >>> episode_counts(10, DEFAULT_FRACTIONS)
        {'oracle': 3, 'wrong_turn': 5, 'wander': 2}
    """
    unknown = set(fractions) - set(BEHAVIOURS)
    if unknown:
        raise ValueError(f"episode_counts: unknown behaviour(s) {sorted(unknown)}: expected some of {BEHAVIOURS}.")
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"episode_counts: fractions must be >= 0 and sum to 1, received {fractions}.")
    names = [b for b in BEHAVIOURS if fractions.get(b, 0.0) > 0]
    counts = {b: int(round(fractions[b] * num_episodes)) for b in names[:-1]}
    counts[names[-1]] = num_episodes - sum(counts.values())
    if counts[names[-1]] < 0:
        raise ValueError(f"episode_counts: fractions {fractions} do not split {num_episodes} episodes.")
    return {b: counts.get(b, 0) for b in BEHAVIOURS}


def make_tmaze_mixed_dataset(num_episodes: int = 2000, fractions: dict[str, float] | None = None,
                             wander_noise: float = 0.5, min_corridor: int = 1, max_corridor: int = 28, seed: int = 0,
                             cache: str | Path | None = None) -> TensorDict:
    """Mixed-quality T-Maze episodes (module docstring): oracle, wrong turns and wandering.

    Same format as :func:`~torchrl_elmur.data.make_tmaze_dataset` (a flat TensorDict ``[N]``,
    episode after episode, ``is_init`` at each episode's first step, ``("next", ...)`` entries,
    ``episode`` ids 0..E-1 in storage order; :func:`~torchrl_elmur.data.make_offline_replay_buffer`
    samples it), plus ``behaviour`` (int64, index into :data:`BEHAVIOURS`) for analysis. Rewards
    come from the env. The behaviours are shuffled across storage order; every episode has its
    own env stream (hint and noise), whatever its behaviour. Deterministic for a given ``seed``.

    Args:
        num_episodes: E, the number of episodes.
        fractions: share of each behaviour (keys from :data:`BEHAVIOURS`, summing to 1; default
            :data:`DEFAULT_FRACTIONS`); counts from :func:`episode_counts`.
        wander_noise: the wanderer's probability of a random action at each corridor step.
        min_corridor, max_corridor: corridor lengths uniform in this range (episodes of at most
            ``max_corridor + 2`` steps).
        seed: seed of the corridor lengths, the env streams, the shuffle and the wanderer.
        cache: optional folder; loaded (memory-mapped) if it holds a build with the same arguments, else
            written after generation.

    Examples:
        >>> data = make_tmaze_mixed_dataset(10, max_corridor=4)
        >>> data["behaviour"][data["is_init"].squeeze(-1)].bincount().tolist()  # 3 oracle, 5 wrong, 2 wander
        [3, 5, 2]
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if not 1 <= min_corridor <= max_corridor:
        raise ValueError(f"make_tmaze_mixed_dataset: need 1 <= min_corridor <= max_corridor, received {min_corridor}, {max_corridor}.")
    counts = episode_counts(num_episodes, fractions)
    meta = dict(num_episodes=num_episodes, fractions=fractions, wander_noise=wander_noise, min_corridor=min_corridor,
                max_corridor=max_corridor, seed=seed)

    def build() -> TensorDict:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(min_corridor, max_corridor + 1, (num_episodes,), generator=g)
        policies = behaviour_policies(wander_noise, seed=seed)
        parts, offset = [], 0
        for index, name in enumerate(BEHAVIOURS):
            n = counts[name]
            if n == 0:
                continue
            # episodes offset..offset+n-1 play env streams seed+offset.. (disjoint across behaviours)
            part = collect_episodes(policies[name], lengths[offset:offset + n], seed=seed + offset)
            part["episode"] = part["episode"] + offset
            part["behaviour"] = torch.full_like(part["episode"], index)
            parts.append(part)
            offset += n
        data = torch.cat(parts, 0)
        rank = torch.empty(num_episodes, dtype=torch.int64)
        rank[torch.randperm(num_episodes, generator=g)] = torch.arange(num_episodes)  # shuffled storage position
        new_episode = rank[data["episode"]]
        order = torch.sort(new_episode, stable=True).indices  # stable: steps stay in order within an episode
        data = data[order]
        data["episode"] = new_episode[order]
        return data

    return cached_dataset(cache, meta, build)
