"""POPGym's 48 tasks as TorchRL envs: one observation vector, one flat action, float rewards.

POPGym (``pip install -e .[popgym]``) mixes observation spaces (Discrete, MultiDiscrete, a Tuple
for Autoencode, Box) and action spaces (Discrete, MultiDiscrete for Battleship and MineSweeper,
Box for the Pendulums). Two gymnasium wrappers give every task the same interface, so that one
policy shape (observation vector -> memory -> head) serves all of them:

- :class:`PopGymObservation`: the observation as one float32 vector (one-hot for every
  discrete part, Box values as they are), followed, for the tasks that need it
  (``obs_requires_prev_action``: Bandit, Battleship, Concentration, MineSweeper, Labyrinth), by
  the previous action (one-hot; zeros at reset).
- :class:`FlatDiscreteAction`: a MultiDiscrete action space as one Discrete space (row-major).

:func:`make_popgym_gym` builds the wrapped gymnasium env, :func:`make_popgym_env` the TorchRL env
(``GymWrapper``, categorical actions, with ``InitTracker``). Batched envs:
``make_popgym_env(task, num_envs=N)`` (a gymnasium vector env without autoreset), or a
``SerialEnv`` / ``ParallelEnv`` of :func:`make_popgym_env`; not ``GymEnv(..., num_envs=N)``, whose
gymnasium NEXT_STEP autoreset records corrupt transitions at episode ends.
"""
from __future__ import annotations

import difflib
import functools

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torchrl.envs import GymWrapper, InitTracker, TransformedEnv

DIFFICULTIES = ("Easy", "Medium", "Hard")


@functools.cache
def popgym_tasks() -> dict[str, type]:
    """``{task name: env class}`` for POPGym's 48 tasks, e.g. ``"RepeatFirstHard"``.

    Raises ImportError with the install command when popgym is missing.
    """
    try:
        from popgym.envs import ALL
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("POPGym is an optional extra: pip install -e '.[popgym]' (popgym[navigation]==1.0.7, "
                          f"cython). Import failed with: {err}") from err
    return {cls.__name__: cls for cls in ALL}


def canonical_name(task: str) -> str:
    """A class name from a POPGym gym id (``popgym-<Name>-v0``; the VelocityOnly ids spell ``Cartpole``);
    class names pass unchanged. Pure string work, no check.

    Examples:
        >>> canonical_name("popgym-VelocityOnlyCartpoleEasy-v0"), canonical_name("RepeatFirstHard")
        ('VelocityOnlyCartPoleEasy', 'RepeatFirstHard')
    """
    return task.removeprefix("popgym-").removesuffix("-v0").replace("Cartpole", "CartPole")


def task_name(task: str) -> str:
    """The task name of a POPGym class name or gymnasium id.

    Examples:
        >>> task_name("popgym-RepeatFirstHard-v0"), task_name("VelocityOnlyCartPoleEasy")
        ('RepeatFirstHard', 'VelocityOnlyCartPoleEasy')
        >>> task_name("popgym-VelocityOnlyCartpoleEasy-v0")
        'VelocityOnlyCartPoleEasy'
    """
    tasks = popgym_tasks()
    if not isinstance(task, str):
        raise TypeError(f"POPGym task: expected a task name or gym id (str), received {type(task).__name__} {task!r}.")
    name = canonical_name(task)
    if name not in tasks:
        close = difflib.get_close_matches(name, list(tasks), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"POPGym task: unknown task {task!r}.{hint} Valid names: {sorted(tasks)}.")
    return name


def _part_sizes(space: spaces.Space) -> list[int]:
    """One-hot widths of the discrete parts of ``space`` (a Box counts its flat size, unencoded)."""
    if isinstance(space, spaces.Discrete):
        return [int(space.n)]
    if isinstance(space, spaces.MultiDiscrete):
        return [int(n) for n in np.asarray(space.nvec).ravel()]
    if isinstance(space, spaces.Tuple):
        return [n for part in space.spaces for n in _part_sizes(part)]
    raise TypeError(f"PopGymObservation: unsupported space {space}.")


def encode(space: spaces.Space, value) -> np.ndarray:
    """``value`` of ``space`` as a float32 vector: one-hot per discrete part, Box values flattened.

    Examples:
        >>> encode(spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))), (1, 2)).tolist()
        [0.0, 1.0, 0.0, 0.0, 1.0]
        >>> encode(spaces.MultiDiscrete([2, 2]), np.array([0, 1])).tolist()
        [1.0, 0.0, 0.0, 1.0]
    """
    if isinstance(space, spaces.Box):
        return np.asarray(value, dtype=np.float32).ravel()
    if isinstance(space, spaces.Tuple):
        return np.concatenate([encode(part, v) for part, v in zip(space.spaces, value)])
    sizes = _part_sizes(space)
    out = np.zeros(sum(sizes), dtype=np.float32)
    offsets = np.cumsum([0, *sizes[:-1]])
    out[offsets + np.asarray(value, dtype=np.int64).ravel()] = 1.0
    return out


def encoded_size(space: spaces.Space) -> int:
    return int(np.prod(space.shape)) if isinstance(space, spaces.Box) else sum(_part_sizes(space))


class FlatDiscreteAction(gym.ActionWrapper):
    """A MultiDiscrete action space as one ``Discrete(prod(nvec))`` (row-major: the last part varies fastest).

    Examples:
        >>> FlatDiscreteAction.unflatten(np.array([3, 4]), 7).tolist(), FlatDiscreteAction.flatten(np.array([3, 4]), [1, 3])
        ([1, 3], 7)
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, spaces.MultiDiscrete):
            raise TypeError(f"FlatDiscreteAction: expected a MultiDiscrete action space, received {env.action_space}.")
        self.nvec = np.asarray(env.action_space.nvec, dtype=np.int64)
        self.action_space = spaces.Discrete(int(np.prod(self.nvec)))

    @staticmethod
    def unflatten(nvec: np.ndarray, action: int) -> np.ndarray:
        return np.array(np.unravel_index(int(action), tuple(nvec)), dtype=np.int64)

    @staticmethod
    def flatten(nvec: np.ndarray, action) -> int:
        return int(np.ravel_multi_index(tuple(np.asarray(action, dtype=np.int64)), tuple(nvec)))

    def action(self, action) -> np.ndarray:
        value = np.asarray(action)
        if value.size != 1 or not np.issubdtype(value.dtype, np.integer) or not 0 <= int(value.item()) < self.action_space.n:
            raise ValueError(f"FlatDiscreteAction: action must be one int in [0, {self.action_space.n}), "
                             f"received {action!r}.")
        return self.unflatten(self.nvec, int(value.item()))

    def reverse_action(self, action) -> np.int64:
        """An action of the wrapped MultiDiscrete space as this wrapper's flat action."""
        return np.int64(self.flatten(self.nvec, action))


class PopGymObservation(gym.Wrapper):
    """Observation as one float32 vector, with the previous action appended where the task needs it.

    Args:
        env: a POPGym env, its action space already flat (Discrete or Box).
        previous_action: append the previous action (one-hot for Discrete, values for Box; zeros
            at reset). Default: the task's ``obs_requires_prev_action``.

    Rewards come back as Python floats (POPGym returns ints and numpy floats for some tasks).
    """

    def __init__(self, env: gym.Env, previous_action: bool | None = None) -> None:
        super().__init__(env)
        raw = env.unwrapped.observation_space
        if isinstance(env.action_space, spaces.MultiDiscrete):
            raise TypeError("PopGymObservation: wrap MultiDiscrete actions in FlatDiscreteAction first.")
        if previous_action is None:
            previous_action = bool(getattr(env.unwrapped, "obs_requires_prev_action", False))
        self.previous_action = previous_action
        self._raw_space = raw
        self._action_size = encoded_size(env.action_space) if previous_action else 0
        size = encoded_size(raw) + self._action_size
        low = -np.inf if isinstance(raw, spaces.Box) else 0.0
        self.observation_space = spaces.Box(low, np.inf if isinstance(raw, spaces.Box) else 1.0, (size,), np.float32)

    def _observe(self, obs, action) -> np.ndarray:
        parts = [encode(self._raw_space, obs)]
        if self.previous_action:
            parts.append(np.zeros(self._action_size, np.float32) if action is None else encode(self.env.action_space, action))
        return np.concatenate(parts).astype(np.float32)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._observe(obs, None), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(obs, action), float(reward), bool(terminated), bool(truncated), info


def make_popgym_gym(task: str, previous_action: bool | None = None) -> gym.Env:
    """The gymnasium env of a POPGym task (name or gym id) with this project's interface:
    ``Box`` float32 observation vector, ``Discrete`` (or the Pendulums' ``Box``) action.

    Examples:
        >>> env = make_popgym_gym("popgym-BattleshipEasy-v0")
        >>> env.observation_space.shape, env.action_space   # hit/miss one-hot + previous action one-hot (64)
        ((66,), Discrete(64))
        >>> obs, _ = env.reset(seed=0)
        >>> obs.dtype, float(obs.sum())
        (dtype('float32'), 1.0)
    """
    env: gym.Env = popgym_tasks()[task_name(task)]()
    if isinstance(env.action_space, spaces.MultiDiscrete):
        env = FlatDiscreteAction(env)
    return PopGymObservation(env, previous_action)


def make_popgym_env(task: str, *, num_envs: int | None = None, previous_action: bool | None = None, device="cpu",
                    init_tracker: bool = True):
    """A POPGym task as a TorchRL env: ``GymWrapper`` of :func:`make_popgym_gym` with categorical
    (integer) actions, and ``InitTracker`` (``init_tracker=True``) for recurrent policies.

    Keys: ``observation`` float32 ``[*B, F]``, ``action`` int64 ``[*B]`` (or float32 ``[*B, 1]`` for
    the Pendulums), ``("next", "reward")`` ``[*B, 1]``, ``done/terminated/truncated``, ``is_init``.
    Add a recurrent module's primer with ``env.append_transform(module.make_tensordict_primer())``.

    Args:
        num_envs: ``None``: one env (batch size ``[]``); ``N``: a gymnasium ``SyncVectorEnv`` of N
            with autoreset disabled (TorchRL resets the done ones, e.g. in ``step_and_maybe_reset``
            and collectors; gymnasium's default NEXT_STEP autoreset would record corrupt
            transitions). ``env.set_seed(s)`` seeds sub-env ``i`` with ``s + i``.

    Examples:
        >>> env = make_popgym_env("RepeatPreviousEasy")
        >>> env.observation_spec["observation"].shape, env.action_spec.n
        (torch.Size([4]), 4)
        >>> make_popgym_env("RepeatPreviousEasy", num_envs=3).rollout(2)["observation"].shape
        torch.Size([3, 2, 4])
    """
    if num_envs is None:
        env = GymWrapper(make_popgym_gym(task, previous_action), categorical_action_encoding=True, device=device)
    else:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"make_popgym_env: num_envs must be None or an int >= 1, received {num_envs!r}.")
        name = task_name(task)
        vector = SyncVectorEnv([functools.partial(make_popgym_gym, name, previous_action) for _ in range(num_envs)],
                               autoreset_mode=AutoresetMode.DISABLED)
        env = GymWrapper(vector, categorical_action_encoding=True, device=device)
    return TransformedEnv(env, InitTracker()) if init_tracker else env
