"""Evaluate a TorchRL policy on the batched T-Maze: streaming, one environment step at a time."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import InitTracker, TransformedEnv

from ..envs import TMazeEnv
from .evaluate import first_episode_returns


def episodes_error(counts: dict[str, int]) -> str | None:
    """The first of ``counts`` (name -> number of episodes) that cannot be a balanced T-Maze
    evaluation (both goal sides equally often: even and >= 2), as an error message; None if all can.

    Examples:
        >>> episodes_error({"--eval-episodes": 100, "--select-episodes": 20}) is None
        True
        >>> episodes_error({"--eval-episodes": 100, "--select-episodes": 3})
        '--select-episodes must be even and >= 2, received 3 (both goal sides equally often)'
    """
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2:
            return f"{name} must be even and >= 2, received {n} (both goal sides equally often)"
    return None


@torch.no_grad()
def tmaze_success_rate(policy: TensorDictModuleBase, corridor_length: int, episodes: int = 100, seed: int = 10_000,
                       device: str | torch.device = "cpu", progress: bool | None = None, greedy: bool = True,
                       on_step: Callable[[TensorDictBase], None] | None = None) -> float:
    """Success rate of ``policy`` over ``episodes`` T-Maze episodes of one corridor length.

    Both goal sides occur equally often (``goal_sides="balanced"``, ``episodes`` even). Streamed
    by :func:`~torchrl_elmur.training.evaluate.first_episode_returns` (the policy's primers
    registered, its state carried by TorchRL, nothing stored, ELMURModules in the cache layout),
    rather than ``env.rollout``, which would keep every step's state in memory. Cost:
    ``corridor_length + 2`` policy steps on a batch of ``episodes``, whatever the memory module.

    Args:
        policy: reads ``observation`` (and its state keys, ``is_init``), writes ``action``
            (int in {0, 1, 2, 3}).
        progress: show a tqdm bar (default: for corridors of 1000 steps or more).
        greedy: run the policy in eval mode with deterministic actions (its training mode is
            restored afterwards); ``False`` uses the mode and exploration type in force.
        on_step: called with each step's tensordict (after the step, before the next; clone what you keep), e.g.
            to record the policy's memory; row ``i`` has goal +1 (up) for even ``i``, -1 for odd.
    """
    error = episodes_error({"episodes": episodes})
    if error:
        raise ValueError(f"tmaze_success_rate: {error}.")
    env = TransformedEnv(TMazeEnv(corridor_length, batch_size=[episodes], goal_sides="balanced", seed=seed, device=device),
                         InitTracker())
    show = corridor_length >= 1000 if progress is None else progress
    reward = first_episode_returns(policy, env, corridor_length + 2, greedy=greedy, progress=show,
                                   desc=f"  eval c={corridor_length}", on_step=on_step)
    return (reward > 0.5).float().mean().item()


CHANCE = 0.6  # success at or below this is at chance (a greedy policy that forgot the hint scores about 0.5)
SOLVED = 0.95  # success at or above this solves a corridor; a run generalises when it solves every corridor evaluated


def generalised(successes) -> bool:
    """Whether every success rate in ``successes`` is at least :data:`SOLVED`; a missing one (None, or
    a length skipped at chance) counts as not solved.

    Examples:
        >>> generalised([1.0, 0.96]), generalised([1.0, 0.5]), generalised([1.0, None])
        (True, False, False)
    """
    return all(rate is not None and float(rate) >= SOLVED for rate in successes)


def evaluate_lengths(policy: TensorDictModuleBase, lengths: Sequence[int], episodes: int, seed: int, name: str,
                     run=None, device: str | torch.device = "cpu",
                     skip_at_chance: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """Greedy success rate and wall seconds per corridor length (keys: the lengths as strings),
    printed as they come and logged to ``run`` (a wandb run) as ``<name>/success_c<length>``.

    ``skip_at_chance=n > 0``: once success is at chance (<= :data:`CHANCE`) at ``n`` consecutive
    lengths, the longer ones are not evaluated and are absent from both dicts (a memory that lost
    the hint at length L does not recover it at 10 L); 0 evaluates every length.
    """
    success, seconds = {}, {}
    at_chance = 0
    for length in lengths:
        if skip_at_chance and at_chance >= skip_at_chance:
            break
        t0 = time.perf_counter()
        success[str(length)] = rate = tmaze_success_rate(policy, length, episodes, seed=seed, device=device)
        seconds[str(length)] = time.perf_counter() - t0
        at_chance = at_chance + 1 if rate <= CHANCE else 0
        if run is not None:
            run.log({f"{name}/success_c{length}": rate})
        print(f"  {name:>10} corridor {length:>9,}: success {rate:.2f}  ({seconds[str(length)]:.1f} s, "
              f"{1e3 * seconds[str(length)] / (length + 2):.2f} ms/step)", flush=True)
    return success, seconds


def plot_success_vs_length(curves: dict[str, dict[int, float]], path: str | Path, title: str,
                           train_max: int | None = None, dashed: Sequence[str] = ()) -> None:
    """PNG of success rate against corridor length (log x), one line per curve; markers shrink
    from curve to curve so that overlapping lines stay visible; ``train_max`` draws the longest
    training corridor; curves named in ``dashed`` are dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, points) in enumerate(curves.items()):
        lengths = sorted(points)
        ax.plot(lengths, [points[c] for c in lengths], marker="o", ms=max(3.0, 9 - 1.5 * i), label=name,
                ls="--" if name in dashed else "-")
    ax.set(xscale="log", xlabel="corridor length (steps)", ylabel="success rate", ylim=(-0.05, 1.05), title=title)
    if train_max is not None:
        ax.axvline(train_max, color="grey", ls=":", lw=1)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
