"""POPGym offline benchmark: behaviour cloning of ELMUR, GRU, LSTM and a memoryless MLP on oracle data.

For every task: the privileged oracle's episodes (``make_popgym_dataset``, cached on disk), then
per policy the same recipe (``train_bc``: AdamW, rows of ``--window`` steps from episode starts,
cross-entropy or MSE), then ``--eval-episodes`` greedy episodes in the real POPGym env on seeds
disjoint from the data's (``EVAL_SEED`` on), streamed one step at a time
(``popgym_returns``). The oracle and uniform random actions are scored on the same
seeds. Sums over the tasks run, in the paper's form: All, Puzzle (every family but the
CartPole/Pendulum control ones) and Reactive (those 15 control tasks).

Long episodes: rows start at episode starts; ``--window W --chunk C`` with C < W trains each row
as consecutive chunks of C steps carrying the recurrent state (truncated back-propagation, one
optimizer step per chunk), so windows can cover whole episodes (up to 1023 steps) while the
gradient spans C steps.

    python benchmarks/popgym_suite.py                                  # 6 memory tasks, CPU preset
    python benchmarks/popgym_suite.py --tasks RepeatFirstHard --window 840 --chunk 105
    python benchmarks/popgym_suite.py --all                            # all 48 tasks (hours on a CPU)
    torchrun --nproc_per_node=2 benchmarks/popgym_suite.py --all       # training data-parallel (DDP)
    python benchmarks/popgym_suite.py --merge easy/popgym_suite.json hard/popgym_suite.json  # one table from runs

Every finished (task, policy) row is recorded at once in ``<out>/popgym_suite.rows.jsonl``, keyed by
the configuration: the same command after a crash trains only what is missing (``--restart``: all).

Prints a table, writes ``<out>/popgym_suite.{csv,md,png,json}`` and ends with one JSON line (the .json).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

import numpy as np
import torch

from torchrl_elmur.training.benchmarking import RowLog, grouped_bars, write_report

from torchrl_elmur import ELMURConfig
from torchrl_elmur.core.config import OptionSetName, with_options
from torchrl_elmur.data import make_popgym_dataset
from torchrl_elmur.data.popgym_dataset import EVAL_SEED, play_episodes
from torchrl_elmur.envs import make_popgym_env, popgym_tasks
from torchrl_elmur.envs.popgym_env import task_name
from torchrl_elmur.envs.popgym_oracles import family_of
from torchrl_elmur.objectives import SequenceCrossEntropyLoss, SequenceMSELoss
from torchrl_elmur.training.bc import fit_bc
from torchrl_elmur.training.cli import init_distributed_cli, parse_dataclass, range_error, value_error
from torchrl_elmur.training.distributed import DistributedContext, main_first, shutdown
from torchrl_elmur.training.evaluate import popgym_returns
from torchrl_elmur.training.policies import make_bc_actor

# Memory tasks on which a memoryless policy fails and whose oracle acts on what the agent has seen (so
# that it can be imitated); RepeatFirstHard's episodes (831 steps) are 8x the training window. Not in
# the default: tasks whose oracle acts on what the agent never observes (Battleship's ships, MineSweeper's
# mines, HigherLower's next card, the Bandit's payout odds): behaviour cloning cannot follow it there.
DEFAULT_TASKS = ["RepeatPreviousEasy", "RepeatPreviousMedium", "RepeatFirstEasy", "RepeatFirstHard", "CountRecallEasy",
                 "AutoencodeEasy"]
REACTIVE = ("PositionOnlyCartPole", "VelocityOnlyCartPole", "NoisyPositionOnlyCartPole", "PositionOnlyPendulum",
            "NoisyPositionOnlyPendulum")
PRESETS = {  # ELMUR configurations by name, of the width --width
    # the published POPGym sizes (H=4, M=8, K=35, lambda 0.79, sigma 0) with 2 layers instead of 12 and
    # ELMURConfig's default options
    "cpu": lambda width: ELMURConfig(input_size=width, d_model=width, num_layers=2, num_heads=4, memory_slots=8,
                                     segment_len=35, memory_init_std=0.0),
    # the published POPGym configuration (ELMUR.md section 5): L=12, RMSNorm, detached memory
    "popgym": lambda width: ELMURConfig.popgym(input_size=width, d_model=width),
}


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # task names or gym ids
    all: bool = False  # all 48 tasks (overrides --tasks)
    policies: list[Literal["elmur", "gru", "lstm", "mlp"]] = field(default_factory=lambda: ["elmur", "gru", "lstm", "mlp"])  # memories to train
    preset: Literal["cpu", "popgym"] = "cpu"  # ELMUR: "cpu" (the published sizes with 2 layers, default options) or "popgym" (the published, 12 layers)
    options: OptionSetName | None = None  # ELMUR: a named option set (norm, detach, init, dropout, FFN) from OPTION_SETS, replacing the preset's (None: the preset's)
    episodes: int = 1000  # oracle episodes per task in the dataset
    steps: int = 300  # sampled batches per policy (optimizer steps: steps x window / chunk)
    batch: int = 32  # rows per batch
    window: int = 0  # steps per row, from an episode start (0: 3 ELMUR segments)
    chunk: int = 0  # truncated back-propagation: chunks of this many steps carry the state (0: the window)
    lr: float = 1e-3
    width: int = 64  # encoder and memory width
    label_smoothing: float = 0.0
    eval_episodes: int = 100  # evaluation episodes per task and policy (seeds EVAL_SEED + i)
    seed: int = 0
    threads: int = 1  # torch threads
    out: str = "outputs/benchmarks"
    cache: str = "outputs/cache/popgym"  # where the datasets are stored
    progress: bool = True
    merge: list[str] = field(default_factory=list)  # popgym_suite.json files of earlier runs: one table of all their tasks, no training
    restart: bool = False  # forget the rows an earlier run of this configuration recorded (<out>/popgym_suite.rows.jsonl)


def check(args: Args) -> str | None:
    error = value_error("--tasks", lambda: [task_name(t) for t in args.tasks])
    if error is None and "elmur" in args.policies:  # e.g. a --width that the heads do not divide
        error = value_error("ELMUR configuration from --width/--preset/--options", lambda: elmur_config(args))
    if error:
        return error
    error = range_error(args, eval_episodes="[1, inf)", window="[0, inf)", chunk="[0, inf)")  # window, chunk 0: the default
    if error:
        return error
    window, chunk = resolved_window(args)
    if window % chunk:
        return f"--chunk ({chunk}) must divide --window ({window})"
    return None


def elmur_config(args: Args) -> ELMURConfig:
    config = PRESETS[args.preset](args.width)
    return with_options(config, args.options) if args.options else config


def row_config(args: Args) -> str:
    """Everything that decides a (task, policy) row, as one string: rows of another configuration are not reused."""
    window, chunk = resolved_window(args)
    return json.dumps({"preset": args.preset, "options": args.options, "width": args.width, "episodes": args.episodes,
                       "steps": args.steps, "batch": args.batch, "window": window, "chunk": chunk, "lr": args.lr,
                       "label_smoothing": args.label_smoothing, "eval_episodes": args.eval_episodes, "seed": args.seed},
                      sort_keys=True)


def resolved_window(args: Args) -> tuple[int, int]:
    window = args.window or 3 * ELMURConfig.popgym().segment_len
    return window, args.chunk or window


def baseline_returns(task: str, episodes: int) -> dict[str, float]:
    """Mean return of the oracle and of uniform random actions on the evaluation seeds."""
    rng = np.random.default_rng(0)

    def random(env):  # uniform over the raw env's action space, from a seeded generator
        space = env.action_space
        if hasattr(space, "nvec"):
            return rng.integers(space.nvec)
        if hasattr(space, "n"):
            return int(rng.integers(space.n))
        return rng.uniform(space.low, space.high).astype(np.float32)

    out = {}
    for name, behaviour in (("oracle", None), ("random", random)):
        data = play_episodes(task, episodes, seed=EVAL_SEED, behaviour=behaviour, progress=False)
        out[name] = data["next", "reward"].sum().item() / episodes
    return out


def run_policy(task: str, memory: str, data, args: Args, ctx: DistributedContext) -> dict | None:
    """Train one policy (on every torchrun rank, DDP) and evaluate it (rank 0; others return None)."""
    torch.manual_seed(args.seed)
    env = make_popgym_env(task)  # for the specs
    env.close()
    obs_size = env.observation_spec["observation"].shape[-1]
    discrete = env.action_spec.dtype == torch.int64
    action = dict(num_actions=env.action_spec.n) if discrete else dict(
        action_dim=env.action_spec.shape[-1], action_bound=float(env.action_spec.space.high.max()))
    actor = make_bc_actor(memory, obs_size, width=args.width, config=elmur_config(args) if memory == "elmur" else None,
                          **action)
    loss = SequenceCrossEntropyLoss(actor, label_smoothing=args.label_smoothing) if discrete else SequenceMSELoss(actor)
    window, chunk = resolved_window(args)
    history = fit_bc(actor, loss, data, steps=args.steps, batch=args.batch, seq_len=window, lr=args.lr, seed=args.seed,
                     chunk_len=chunk, name=f"{task}/{memory}", progress=args.progress, ctx=ctx)
    if not ctx.is_main:
        return None
    t0 = time.perf_counter()
    returns = popgym_returns(actor, task, args.eval_episodes, progress=args.progress, desc=f"eval {memory}")
    return {"task": task, "policy": memory, "mean_return": returns.mean().item(), "std_return": returns.std().item(),
            "train_seconds": history.train_seconds, "eval_seconds": time.perf_counter() - t0,
            "params": sum(p.numel() for p in actor.parameters())}


def aggregates(table: dict[str, dict[str, float]], columns: list[str]) -> list[dict]:
    """Sums of mean returns over the tasks run: All, Puzzle, Reactive (the paper's form)."""
    groups = {"All": list(table), "Puzzle": [t for t in table if family_of(t) not in REACTIVE],
              "Reactive": [t for t in table if family_of(t) in REACTIVE]}
    return [{"task": f"sum: {g} ({len(tasks)} tasks)", **{c: sum(table[t][c] for t in tasks) for c in columns}}
            for g, tasks in groups.items() if tasks]


def report(table: dict[str, dict[str, float]], columns: list[str], header: str, rows: list[dict], args: Args,
           extra: dict) -> None:
    """Table with the sums, CSV / markdown / PNG / JSON under ``args.out``; the JSON is also the last line."""
    summary = [{"task": t, **table[t]} for t in table] + aggregates(table, columns)
    cols = [("task", "task", "s")] + [(c, c, "+.3f") for c in columns]
    out = write_report("popgym_suite", header, summary, cols, args.out, csv_rows=rows)
    grouped_bars(table, columns, out / "popgym_suite.png", ylabel="mean episode return",
                 title="POPGym, behaviour cloning from oracle episodes")
    sums = {s["task"]: {c: s[c] for c in columns} for s in summary if s["task"].startswith("sum")}
    result = json.dumps({"benchmark": "popgym_suite", "tasks": table, "sums": sums, "rows": rows, **extra})
    (out / "popgym_suite.json").write_text(result + "\n")
    print(f"wrote {out / 'popgym_suite.csv'}, .md, .png, .json")
    print(result)


def merge(paths: list[str], args: Args) -> None:
    """One report from the JSON files of earlier runs (tasks in file order; a task twice is an error)."""
    table, rows, columns, runs = {}, [], None, []
    for path in paths:
        run = json.loads(Path(path).read_text())
        cols = list(next(iter(run["tasks"].values())))
        if columns is None:
            columns = cols
        elif set(cols) != set(columns):
            raise SystemExit(f"--merge: {path} has columns {cols}, the first file has {columns}")
        twice = set(run["tasks"]) & set(table)
        if twice:
            raise SystemExit(f"--merge: tasks {sorted(twice)} are in {path} and in an earlier file")
        table.update(run["tasks"])
        rows += run["rows"]
        runs.append({k: run.get(k) for k in ("window", "chunk", "preset")})
    header = f"POPGym BC: {len(table)} tasks merged from {len(paths)} runs ({', '.join(paths)})"
    report(table, columns, header, rows, args, {"merged": paths, "runs": runs})


def main() -> None:
    args = parse_dataclass(Args, __doc__.splitlines()[0], check=check)
    if args.merge:
        return merge(args.merge, args)
    torch.set_num_threads(args.threads)
    ctx = init_distributed_cli(args.batch)  # under torchrun: every rank trains (DDP), rank 0 evaluates and reports
    tasks = sorted(popgym_tasks()) if args.all else [task_name(t) for t in args.tasks]
    start = time.perf_counter()
    rows, table = [], {}
    # every finished (task, policy) row is recorded at once, keyed by everything that decides it: a rerun of the
    # same command after a crash trains only what is missing (every rank reads the same file before any work)
    log = main_first(ctx, lambda: RowLog(Path(args.out) / "popgym_suite.rows.jsonl", key=("task", "policy", "config"),
                                         fresh=args.restart and ctx.is_main))
    config = row_config(args)
    for task in tasks:
        data = main_first(ctx, lambda: make_popgym_dataset(  # rank 0 builds (or loads) the cached dataset, the others load it
            task, args.episodes, seed=args.seed, cache_dir=args.cache, progress=args.progress and ctx.is_main))
        if ctx.is_main:
            table[task] = log.get_or_add(lambda: {"returns": baseline_returns(task, args.eval_episodes)},
                                         task=task, policy="baselines", config=config)[0]["returns"]
        for memory in args.policies:  # every rank trains what is not recorded; rank 0 records and reports
            row, recorded = log.get_or_add(lambda: run_policy(task, memory, data, args, ctx),
                                           task=task, policy=memory, config=config)
            if not ctx.is_main:
                continue
            if recorded:
                print(f"  {task:28s} {memory:6s} recorded earlier ({log.path.name})")
            row = {k: v for k, v in row.items() if k != "config"}
            rows.append(row)
            table[task][memory] = row["mean_return"]
            print(f"  {task:28s} {memory:6s} mean return {row['mean_return']:+.3f} (oracle {table[task]['oracle']:+.3f}, "
                  f"random {table[task]['random']:+.3f}; train {row['train_seconds']:.0f} s)", flush=True)
    if not ctx.is_main:
        return shutdown(ctx)
    columns = ["oracle", *args.policies, "random"]
    window, chunk = resolved_window(args)
    header = (f"POPGym BC: {len(tasks)} tasks, {args.episodes} oracle episodes each, {args.steps} x [{args.batch}, {window}] "
              f"(chunks of {chunk}), ELMUR preset {args.preset!r}" + (f" with options {args.options!r}" if args.options else "")
              + f" (detach_memory={elmur_config(args).detach_memory}, norm {elmur_config(args).norm}), width {args.width}, "
              f"{args.eval_episodes} eval episodes; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
              f"{time.perf_counter() - start:.0f} s")
    report(table, columns, header, rows, args, {"window": window, "chunk": chunk, "preset": args.preset,
                                                "options": args.options, "world_size": ctx.world_size})
    shutdown(ctx)


if __name__ == "__main__":
    main()
