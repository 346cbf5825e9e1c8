"""Privileged oracles for POPGym's 48 tasks: the action an agent that sees the hidden state takes.

``oracle_action(env)`` takes a RAW POPGym env (an instance of a class in ``popgym.envs.ALL``,
e.g. ``gym_env.unwrapped``) and returns the action to take now, in the env's own action space
(``int`` for Discrete, an int64 ``np.ndarray`` for MultiDiscrete, a float32 ``np.ndarray`` for Box).
It reads the hidden state from the env's attributes (never ``info``, never observations) and keeps
no state of its own, so it can take over at any step of an episode::

    env = popgym.envs.repeat_first.RepeatFirstEasy()
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(oracle_action(env))

One small function per family (``FAMILIES``), dispatched by ``family_of``: the task name without its
Easy/Medium/Hard suffix. Returns of these oracles against random actions: ``benchmarks/popgym_oracles.py``.
Pure numpy, with the env adapter's spelling rule for names (``canonical_name``); popgym itself is
needed only to make the envs.
"""
from __future__ import annotations

import re
from collections import deque
from functools import cache

import numpy as np

from .popgym_env import canonical_name

FAMILIES = (
    "Autoencode", "RepeatPrevious", "RepeatFirst", "CountRecall",
    "PositionOnlyCartPole", "PositionOnlyPendulum", "VelocityOnlyCartPole",
    "NoisyPositionOnlyCartPole", "NoisyPositionOnlyPendulum", "MultiarmedBandit",
    "HigherLower", "Battleship", "Concentration", "MineSweeper", "LabyrinthExplore", "LabyrinthEscape",
)
_DIFFICULTY = re.compile(r"(Easy|Medium|Hard)$")


def family_of(task: str) -> str:
    """The family of a POPGym task, from its class name or its gym id.

    >>> family_of("RepeatFirstHard"), family_of("popgym-VelocityOnlyCartpoleEasy-v0")
    ('RepeatFirst', 'VelocityOnlyCartPole')
    >>> family_of("CartPole-v1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: family_of: 'CartPole-v1' is no POPGym task; expected ... one of Autoencode, RepeatPrevious, ...
    """
    family = _DIFFICULTY.sub("", canonical_name(task)) if isinstance(task, str) else None
    if family not in FAMILIES:
        raise ValueError(f"family_of: {task!r} is no POPGym task; expected <Family>[Easy|Medium|Hard] or "
                         f"popgym-<Family><Difficulty>-v0 with <Family> one of {', '.join(FAMILIES)}.")
    return family


# ---------------------------------------------------------------------------------------------
# Card games: the answer is in the deck. A Deck deals from the end of ``deck.idx`` (position
# ``len(deck) - 1`` is the next card) into ``deck[player]``, lists of card indices.

def _autoencode(env) -> int:
    """Reads ``mode`` and ``deck["system"]``: in PLAY mode the suit of the last card still held
    (the env pops it); in WATCH mode the action is ignored."""
    if env.mode.name != "PLAY":
        return 0
    return int(env.deck.suits_idx[env.deck["system"][-1]])


def _repeat_previous(env) -> int:
    """Reads ``deck["player"]`` (every card dealt) and ``k``: the suit of the card k back."""
    hand = env.deck["player"]
    return int(env.deck.suits_idx[hand[-env.k]]) if len(hand) >= env.k else 0


def _repeat_first(env) -> int:
    """Reads ``card``: the suit of the first card."""
    return int(env.card)


def _count_recall(env) -> int:
    """Reads ``counts`` and ``query``: how often the queried card has been dealt."""
    return int(env.counts[env.query])


def _higher_lower(env) -> int:
    """Reads ``deck["player"]`` (the shown card) and ``deck.idx`` (the next card): 0 says higher."""
    deck = env.deck
    if len(deck) == 0:
        return 0
    shown, upcoming = deck.ranks_idx[deck["player"][-1]], deck.ranks_idx[deck.idx[len(deck) - 1]]
    return 0 if upcoming > shown else 1


def _concentration(env) -> int:
    """Reads ``state`` (every position's value), ``deck["face_up_idx"]`` (matched positions) and
    ``deck["in_play_idx"]`` (the card turned this turn): turn the twin of that card, else any
    face-down card."""
    taken = set(env.deck["face_up_idx"]) | set(env.deck["in_play_idx"])
    down = [i for i in range(len(env.state)) if i not in taken]
    if env.deck["in_play_idx"]:
        value = env.state[env.deck["in_play_idx"][0]]
        down = [i for i in down if env.state[i] == value] or down
    return down[0] if down else 0


# ---------------------------------------------------------------------------------------------
# Grid games: fire at / click the first good cell.

def _first_cell(mask: np.ndarray) -> np.ndarray:
    cells = np.argwhere(mask)
    return (cells[0] if len(cells) else np.zeros(mask.ndim)).astype(np.int64)


def _battleship(env) -> np.ndarray:
    """Reads ``board`` (ships) and ``guesses``: an unguessed ship cell."""
    return _first_cell((env.board == 1) & (env.guesses == 0))


def _minesweeper(env) -> np.ndarray:
    """Reads ``hidden_grid`` (0 clear, 1 mine, 2 viewed): a clear cell."""
    return _first_cell(env.hidden_grid == 0)


def _multiarmed_bandit(env) -> int:
    """Reads ``bandits`` (payout probabilities): the best arm."""
    return int(np.argmax(env.bandits))


# ---------------------------------------------------------------------------------------------
# Control: CartPole by bang-bang LQR; Pendulum by energy swing-up and LQR catch, its first torque
# chosen by rollouts. Both read the simulator's full ``state`` (observations hide half of it).

def _dlqr(A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray, iters: int = 3000) -> np.ndarray:
    """Gain K of the infinite-horizon discrete LQR (u = -K s), by iterating the Riccati equation."""
    P = Q
    for _ in range(iters):
        K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        P = Q + A.T @ P @ (A - B @ K)
    return K[0]


@cache
def _cartpole_gain(gravity: float, masscart: float, masspole: float, length: float, tau: float) -> np.ndarray:
    """gymnasium's CartPole linearised at the top (theta = 0), Euler-discretised with step tau."""
    mass = masscart + masspole
    d = length * (4.0 / 3.0 - masspole / mass)  # theta'' = (g theta - F / mass) / d
    A = np.eye(4) + tau * np.array([[0, 1, 0, 0], [0, 0, -masspole * length * gravity / (mass * d), 0],
                                    [0, 0, 0, 1], [0, 0, gravity / d, 0]])
    B = tau * np.array([[0], [1 / mass + masspole * length / (mass * mass * d)], [0], [-1 / (mass * d)]])
    return _dlqr(A, B, np.diag([1.0, 1.0, 10.0, 1.0]), np.eye(1))


def _cartpole(env) -> int:
    """Reads ``state`` (x, x', theta, theta') and the physics constants: push (1 right, 0 left) the
    way the LQR force points."""
    gain = _cartpole_gain(env.gravity, env.masscart, env.masspole, env.length, env.tau)
    return int(-gain @ np.asarray(env.state, dtype=np.float64) > 0)


def _wrap(theta):
    return (theta + np.pi) % (2 * np.pi) - np.pi


@cache
def _pendulum_gain(a: float, b: float, dt: float) -> np.ndarray:
    """gymnasium's Pendulum (theta'' = a sin(theta) + b u, semi-implicit Euler) linearised at the top."""
    A = np.array([[1 + a * dt * dt, dt], [a * dt, 1]])
    B = np.array([[b * dt * dt], [b * dt]])
    return _dlqr(A, B, np.diag([1.0, 0.1]), np.array([[0.001]]))


def _pendulum_base(theta, speed, a, b, dt, u_max):
    """Energy pumping (full torque along the speed while below the top's energy, against it above),
    LQR once near the top; vectorised over numpy arrays."""
    theta = _wrap(theta)
    k = _pendulum_gain(a, b, dt)
    lqr = -(k[0] * theta + k[1] * speed)
    energy = 0.5 * speed ** 2 + a * (np.cos(theta) - 1)  # 0 at rest at the top
    pump = u_max * np.where(energy * speed <= 0, 1.0, -1.0)
    return np.where((np.cos(theta) > 0.8) & (np.abs(lqr) < 3 * u_max), np.clip(lqr, -u_max, u_max), pump)


def _pendulum(env, candidates: int = 9, horizon: int = 40) -> np.ndarray:
    """Reads ``state`` (theta, theta') and the physics constants: the first torque (of a grid) that
    minimises the cost of the next ``horizon`` steps when the base controller takes over after it."""
    a, b, dt, u_max = 1.5 * env.g / env.l, 3.0 / (env.m * env.l ** 2), env.dt, env.max_torque
    horizon = max(0, min(horizon, env.max_episode_length - env.num_steps - 1))  # steps left after this one
    first = np.linspace(-u_max, u_max, candidates)
    theta, speed = (np.full(candidates, float(v)) for v in env.state)
    total = np.zeros(candidates)
    for t in range(horizon + 1):
        u = first if t == 0 else _pendulum_base(theta, speed, a, b, dt, u_max)
        total += _wrap(theta) ** 2 + 0.1 * speed ** 2 + 0.001 * u ** 2  # gymnasium's cost
        speed = np.clip(speed + (a * np.sin(theta) + b * u) * dt, -env.max_speed, env.max_speed)
        theta = theta + speed * dt
    return np.array([first[np.argmin(total)]], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Labyrinths: ``maze.grid`` (1 wall), ``position`` (y, x); actions left, right, up, down.

_MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0))


def _bfs(grid: np.ndarray, start: tuple[int, int]) -> tuple[dict, dict]:
    """Shortest paths from start: {cell: distance} and {cell: the action of its path's first step}."""
    dist, first = {start: 0}, {start: None}
    queue = deque([start])
    while queue:
        y, x = cell = queue.popleft()
        for action, (dy, dx) in enumerate(_MOVES):
            nxt = (y + dy, x + dx)
            if 0 <= nxt[0] < grid.shape[0] and 0 <= nxt[1] < grid.shape[1] and grid[nxt] != 1 and nxt not in dist:
                dist[nxt] = dist[cell] + 1
                first[nxt] = action if cell == start else first[cell]
                queue.append(nxt)
    return dist, first


def _labyrinth_escape(env) -> int:
    """Reads ``maze.grid``, ``maze.end`` (the goal) and ``position``: a shortest path's first step."""
    _, first = _bfs(env.maze.grid, tuple(map(int, env.position)))
    action = first.get(tuple(map(int, env.maze.end)))
    return 0 if action is None else action


def _labyrinth_explore(env) -> int:
    """Reads ``maze.grid``, ``explored`` and ``position``. The maze is a tree, so the shortest tour of
    the unexplored cells ends at the farthest one: finish every other branch (each is entered once
    and left once) before stepping towards it."""
    dist, first = _bfs(env.maze.grid, tuple(map(int, env.position)))
    targets = [cell for cell in dist if env.explored[cell] == 0]
    if not targets:
        return 0
    last = first[max(targets, key=lambda cell: (dist[cell], cell))]
    others = sorted({first[cell] for cell in targets} - {last})
    return others[0] if others else last


_ORACLES = {
    "Autoencode": _autoencode,
    "RepeatPrevious": _repeat_previous,
    "RepeatFirst": _repeat_first,
    "CountRecall": _count_recall,
    "PositionOnlyCartPole": _cartpole,
    "VelocityOnlyCartPole": _cartpole,
    "NoisyPositionOnlyCartPole": _cartpole,
    "PositionOnlyPendulum": _pendulum,
    "NoisyPositionOnlyPendulum": _pendulum,
    "MultiarmedBandit": _multiarmed_bandit,
    "HigherLower": _higher_lower,
    "Battleship": _battleship,
    "Concentration": _concentration,
    "MineSweeper": _minesweeper,
    "LabyrinthExplore": _labyrinth_explore,
    "LabyrinthEscape": _labyrinth_escape,
}
NO_ORACLE: dict[str, str] = {family: "no oracle written" for family in FAMILIES if family not in _ORACLES}


@cache
def _class_oracle(env_class: type):
    """The oracle of an env class, or of the nearest base class that names a family (once per class:
    ``oracle_action`` runs at every step of data generation)."""
    for cls in env_class.__mro__:
        try:
            return _ORACLES[family_of(cls.__name__)]
        except ValueError:
            continue
    raise ValueError(f"oracle_action: {env_class.__name__} is no POPGym env (no class of popgym.envs.ALL "
                     f"among its bases); pass the raw env, e.g. gym_env.unwrapped.")


def oracle_action(env):
    """The oracle's action for a raw POPGym env now (``env.unwrapped`` is taken if there is one)."""
    env = getattr(env, "unwrapped", env)
    return _class_oracle(type(env))(env)
