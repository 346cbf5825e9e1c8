"""The POPGym oracles beat uniform random actions on every family (a few seeded episodes each)."""
import numpy as np
import pytest

pytest.importorskip("popgym")
from popgym.envs import ALL  # noqa: E402

from torchrl_elmur.envs.popgym_oracles import FAMILIES, NO_ORACLE, family_of, oracle_action  # noqa: E402

TASKS = {cls.__name__: cls for cls in ALL}  # Labyrinth's 6 are missing without mazelib
EPISODES = 3
# The oracle's mean return over EPISODES seeded episodes must reach this (1.0 is the maximum of
# every task; the bandit pays by chance, HigherLower's pushes pay 0, Pendulum must swing up first).
LEVEL = {"MultiarmedBandit": 0.5, "HigherLower": 0.85, "PositionOnlyPendulum": 0.85,
         "NoisyPositionOnlyPendulum": 0.85, "LabyrinthExplore": 0.9, "LabyrinthEscape": 0.9}
CASES = [f + "Easy" for f in FAMILIES] + [f + "Hard" for f in ("RepeatFirst", "CountRecall", "LabyrinthEscape",
                                                              "MineSweeper")]


def episode(env, policy, seed: int) -> tuple[float, bool]:
    """(return, terminated) of one episode; Labyrinth's mazes need the seed at every reset."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    total, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):
        _, reward, terminated, truncated, _ = env.step(policy(env))
        total += float(reward)  # some rewards are Python ints or np.float64
    return total, terminated


def checked_oracle(env):
    action = oracle_action(env)
    assert env.action_space.contains(action), (type(env).__name__, action)
    return action


def make(task: str):
    if task not in TASKS:
        pytest.skip(f"{task} is not in popgym.envs.ALL here (Labyrinth needs mazelib)")
    return TASKS[task]()


@pytest.mark.parametrize("task", CASES)
def test_oracle_beats_random(task):
    env = make(task)
    oracle = np.mean([episode(env, checked_oracle, seed)[0] for seed in range(EPISODES)])
    random = np.mean([episode(env, lambda e: e.action_space.sample(), seed)[0] for seed in range(EPISODES)])
    assert oracle >= random + 0.3, (task, oracle, random)
    assert oracle >= LEVEL.get(family_of(task), 0.95), (task, oracle, random)


@pytest.mark.parametrize("task", ["AutoencodeEasy", "ConcentrationHard", "LabyrinthExploreEasy", "LabyrinthEscapeEasy"])
def test_oracle_takes_over_mid_episode(task):
    """No state of its own: after 5 random steps the oracle still finishes the task."""
    env = make(task)
    steps = iter(range(10**6))
    _, terminated = episode(env, lambda e: e.action_space.sample() if next(steps) < 5 else oracle_action(e), seed=1)
    assert terminated


def test_oracle_reads_through_wrappers_and_rejects_other_envs():
    from gymnasium.wrappers import TimeLimit

    env = TimeLimit(make("RepeatFirstEasy"), 10)
    env.reset(seed=0)
    assert oracle_action(env) == env.unwrapped.card
    with pytest.raises(ValueError, match="no POPGym env"):
        oracle_action(object())


def test_family_of_names_every_task():
    for cls, spec in ALL.items():
        assert family_of(cls.__name__) == family_of(spec["id"]) in FAMILIES
    assert {family_of(cls.__name__) for cls in ALL} <= set(FAMILIES)
    assert family_of("popgym-VelocityOnlyCartpoleHard-v0") == "VelocityOnlyCartPole"
    assert family_of("MineSweeper") == "MineSweeper"
    assert len(FAMILIES) == 16 and NO_ORACLE == {}


@pytest.mark.parametrize("bad", ["CartPole-v1", "RepeatFirstExtreme", "popgym-Foo-v0", "", None])
def test_family_of_rejects_other_names(bad):
    with pytest.raises(ValueError) as error:
        family_of(bad)
    assert repr(bad) in str(error.value) and "LabyrinthEscape" in str(error.value)
