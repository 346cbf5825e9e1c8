"""POPGym: episode returns of the privileged oracles (torchrl_elmur.envs.popgym_oracles) against uniform random actions.

For every task of ``popgym.envs.ALL`` (48: 16 families x Easy/Medium/Hard) or those of ``--tasks``,
``--episodes`` episodes of each policy on the raw env (made from its class; no wrappers), episode i
reset with seed ``--seed + i`` (the random policy's action space is seeded the same), and per
policy the mean and std of the episode return and the mean episode length. Returns lie in about
[-1, 1]; 1 is the best possible on most tasks. An upper reference for a memory agent, and a check
that a task's reward is what we think it is.

    python benchmarks/popgym_oracles.py                                # all 48 tasks, 20 episodes
    python benchmarks/popgym_oracles.py --tasks RepeatFirst MineSweeperHard --episodes 5

``--tasks`` takes class names (RepeatFirstHard), gym ids (popgym-RepeatFirstHard-v0) or family
names (RepeatFirst: its three tasks). Prints a table, writes ``<out>/popgym_oracles.{csv,md}`` and
ends with one JSON line.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import version

import numpy as np
from tqdm import tqdm

from torchrl_elmur.training.benchmarking import write_report

from torchrl_elmur.envs.popgym_oracles import family_of, oracle_action
from torchrl_elmur.training.cli import parse_dataclass


@dataclass
class Args:
    tasks: list[str] = field(default_factory=list)  # task class names, gym ids or families; none: all 48
    episodes: int = 20  # episodes per task and policy
    seed: int = 0  # episode i resets with seed + i
    out: str = "outputs/benchmarks"  # folder for popgym_oracles.csv and .md


def all_tasks() -> dict[str, tuple[type, str]]:
    """{class name: (class, gym id)} of popgym.envs.ALL, in its order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Labyrinth's DeprecationWarning
        from popgym.envs import ALL
    return {cls.__name__: (cls, spec["id"]) for cls, spec in ALL.items()}


def select(names: list[str], tasks: dict) -> tuple[list[str], list[str]]:
    """(the chosen class names, the unknown names); no names choose every task."""
    by_id = {gym_id: name for name, (_, gym_id) in tasks.items()}
    chosen, unknown = [], []
    for name in names or list(tasks):
        family = [t for t in tasks if family_of(t) == name]
        if name in tasks or name in by_id:
            chosen.append(by_id.get(name, name))
        elif family:
            chosen += family
        else:
            unknown.append(name)
    return list(dict.fromkeys(chosen)), unknown


def check(args: Args, tasks: dict) -> str | None:
    unknown = select(args.tasks, tasks)[1]
    if unknown:
        return f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(tasks)} (or their gym ids or families)"
    return None


def random_action(env):
    return env.action_space.sample()


def episode(env, policy, seed: int) -> tuple[float, int]:
    """(return, length) of one episode; it ends on terminated or truncated (card games raise if
    stepped further)."""
    env.reset(seed=seed)  # also reseeds Python's random, which Labyrinth's mazes use
    env.action_space.seed(seed)
    total, steps, done = 0.0, 0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(policy(env))
        total, steps, done = total + float(reward), steps + 1, terminated or truncated
    return total, steps


def measure(name: str, cls: type, gym_id: str, args: Args) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = cls()
    row = {"task": name, "family": family_of(name), "id": gym_id, "episodes": args.episodes}
    t0 = time.perf_counter()
    for label, policy in (("oracle", oracle_action), ("random", random_action)):
        returns, lengths = zip(*(episode(env, policy, args.seed + i) for i in range(args.episodes)))
        row |= {f"{label}_mean": float(np.mean(returns)), f"{label}_std": float(np.std(returns)),
                f"{label}_len": float(np.mean(lengths))}
    row["gap"] = row["oracle_mean"] - row["random_mean"]
    row["seconds"] = time.perf_counter() - t0
    return row


def main() -> None:
    tasks = all_tasks()
    args = parse_dataclass(Args, __doc__.splitlines()[0], check=lambda a: check(a, tasks))
    names = select(args.tasks, tasks)[0]
    t0 = time.perf_counter()
    rows = [measure(name, *tasks[name], args) for name in tqdm(names, desc="popgym tasks", unit="task")]
    seconds = time.perf_counter() - t0
    columns = [("task", "task", "s"), ("family", "family", "s"), ("oracle_mean", "oracle mean", ".3f"),
               ("oracle_std", "oracle std", ".3f"), ("random_mean", "random mean", ".3f"),
               ("random_std", "random std", ".3f"), ("episodes", "episodes", "d"),
               ("oracle_len", "oracle ep. length", ".1f"), ("random_len", "random ep. length", ".1f"),
               ("seconds", "s", ".1f")]
    header = (f"POPGym {version('popgym')}: oracle vs uniform random episode return, {args.episodes} "
              f"episodes per task and policy (seeds {args.seed}..{args.seed + args.episodes - 1}), {len(rows)} tasks, "
              f"{seconds:.0f} s")
    out = write_report("popgym_oracles", header, rows, columns, args.out)
    print(f"wrote {out / 'popgym_oracles.csv'}, .md")
    print(json.dumps({"benchmark": "popgym_oracles", "episodes": args.episodes, "seed": args.seed,
                      "seconds": seconds, "rows": rows}))


if __name__ == "__main__":
    main()
