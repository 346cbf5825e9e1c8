"""MIKASA-Robo offline benchmark: behaviour cloning of ELMUR, GRU, LSTM and a memoryless MLP on the robot memory tasks.

For every task: the scripted oracle's episodes (``make_mikasa_dataset``, cached on disk), recorded as
what a policy may see, then per policy and training seed the same recipe on the same encoder and
data (``fit_bc``: AdamW, whole episodes as rows, MSE on the actions), then ``--eval-episodes`` greedy
episodes in the real env on seeds disjoint from the data's (``EVAL_SEED`` on), scored by
``success_once`` (``mikasa_success``). The oracle is scored on the same seeds. ``--jobs`` rows (a
task, policy and seed: its training and evaluation) run at once in ``--jobs`` processes with
``--threads`` torch threads each, a row's evaluation in the process that trained it; ``--jobs 1``
(a GPU's run, and under torchrun): one after another in this process, each evaluation over
``--workers`` env processes.

What the policies see (``--obs``):

- ``visible_state`` (default; a CPU's benchmark): the privileged state restricted to what the two
  cameras show at each step (``torchrl_elmur.envs.mikasa_env.visible_state``), nothing rendered.
  The cue (RememberColor's target colour, TakeItBack's start) is shown and then hidden, so the tasks
  need memory as from pixels; perception is out of the question. Not the paper's observation.
- ``rgb``: the paper's protocol, two cameras' pixels (``--image-size 128 --episodes 1000``; about
  8 rendered steps/s per process on a CPU: a GPU's budget, ``benchmarks/mikasa_gpu.sh``).

    python benchmarks/mikasa_robo.py                           # RememberColor3 + TakeItBack, visible state, 3 seeds
    python benchmarks/mikasa_robo.py --tasks RememberColor3-v0 RememberColor5-v0 RememberColor9-v0 TakeItBack-v0
    python benchmarks/mikasa_robo.py --obs rgb --image-size 128 --preset paper --steps 5000 --seeds 0   # paper protocol
    torchrun --nproc_per_node=2 benchmarks/mikasa_robo.py --jobs 1   # training data-parallel (DDP)
    python benchmarks/mikasa_robo.py --oracle-only --tasks RememberColor3-v0 RememberColor5-v0 RememberColor9-v0 \
        TakeItBack-v0                                          # the scripted oracles' success per task

Prints a table in the paper's form (mean +- std over the training seeds, the paper's pixel numbers
beside it), writes ``<out>/mikasa_robo.{csv,md,png,json}`` and ends with one JSON line (the .json).
Every finished (task, policy, seed) row is recorded at once in ``<out>/mikasa_robo.rows.jsonl``: the
same command after a crash trains only what is missing (``--restart``: all).
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from torchrl_elmur.data import make_mikasa_dataset
from torchrl_elmur.data.mikasa_dataset import (EVAL_SEED, check_action_noise, check_cues_per_layout,
                                               oracle_eval_success)
from torchrl_elmur.envs.mikasa_env import MIKASA_TASKS, episode_length, mikasa_task, num_colours, render_device_error
from torchrl_elmur.objectives import SequenceMSELoss
from torchrl_elmur.training.bc import fit_bc
from torchrl_elmur.processes import in_processes
from torchrl_elmur.training.benchmarking import RowLog, grouped_bars, write_report
from torchrl_elmur.training.cli import init_distributed_cli, parse_dataclass, range_error, value_error
from torchrl_elmur.training.distributed import DistributedContext, main_first, shutdown
from torchrl_elmur.training.evaluate import mikasa_success
from torchrl_elmur.training.mikasa_bc import (PAPER_PIXELS, chance, cue_effect, make_mikasa_actor, mikasa_elmur_config,
                                              step_weights, train_window)


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["RememberColor3-v0", "TakeItBack-v0"])  # of RememberColor3/5/9-v0, TakeItBack-v0
    obs: Literal["visible_state", "rgb"] = "visible_state"  # what the policies see: the state the cameras show (CPU), or their pixels (paper; GPU)
    policies: list[Literal["elmur", "gru", "lstm", "mlp"]] = field(default_factory=lambda: ["elmur", "gru", "lstm", "mlp"])  # memories to train
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # training seeds (initial weights and batches); the data are the same episodes
    preset: Literal["cpu", "paper"] = "cpu"  # ELMUR: "cpu" (2 layers, 4 heads, 16 slots, --width) or "paper" (the published per task)
    detach_memory: bool = False  # ELMUR: detach memory at segment boundaries (the published setting)
    episodes: int = 1000  # oracle episodes per task in the dataset (seeds 0..episodes-1; the paper's 1000)
    decision_weight: float = 20.0  # RememberColor: BC loss weight of the first 3 steps of the reach, the only ones where the action picks the cube (at 1 no memory learned the cue)
    cues_per_layout: int = 1  # RememberColor: play each layout with this many cue colours (episodes that differ only in the cue)
    action_noise: float = 0.0  # RememberColor (0 for TakeItBack): DART-style noise (std) on the executed reach (steps 10-29) while recording; the labels stay the oracle's
    image_size: int = 64  # rgb: camera resolution (paper: 128)
    proprio: bool = False  # rgb: give the policies joints and TCP pose besides the pixels (paper: pixels only)
    window: int | None = None  # steps of each episode a training row holds, from its start (None: RememberColor 30, TakeItBack 60, past every oracle success; whole episodes: 60 / 180)
    steps: int = 1500  # optimizer steps per policy
    batch: int = 32  # rows (episodes, cut to --window) per batch
    lr: float = 1e-3
    width: int = 64  # encoder output and memory width ("cpu" preset)
    grad_clip: float = 5.0
    eval_episodes: int = 100  # evaluation episodes per task, policy and seed (seeds EVAL_SEED + i; the paper's 100)
    jobs: int = 2  # rows (task, policy, seed: training + evaluation) at once, each in its own process (1: in this one)
    workers: int = 2  # CPU processes for data collection, and for evaluation with --jobs 1
    threads: int = 1  # torch threads for training (and, with --jobs > 1, for each row's evaluation)
    device: str = "cpu"  # training device ("cuda": the dataset moves there too); evaluation runs on the CPU beside the envs
    out: str = "outputs/benchmarks"
    cache: str = "outputs/cache/mikasa"  # where the datasets are stored
    restart: bool = False  # forget the rows an earlier run of this configuration recorded (<out>/mikasa_robo.rows.jsonl)
    progress: bool = True
    oracle_only: bool = False  # only score the oracle on --eval-episodes seeds of each task (state mode, fast) and exit


def check(args: Args) -> str | None:
    error = value_error("--tasks", lambda: [mikasa_task(t) for t in args.tasks])
    error = error or range_error(args, eval_episodes="[1, inf)")  # stricter than COMMON_RANGES' [0, inf)
    if error:
        return error
    if args.jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"--jobs must be 1 under torchrun (its ranks train each policy together, DDP), received {args.jobs}"
    if not args.seeds or len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        return f"--seeds: expected distinct integers >= 0, received {args.seeds}"
    if not args.decision_weight > 0:
        return f"--decision-weight must be > 0, received {args.decision_weight}"
    for task in args.tasks:
        error = value_error("--episodes / --cues-per-layout",  # before any episode is recorded
                            lambda: check_cues_per_layout(task, args.episodes, cues_per_layout(task, args)))
        error = error or value_error("--action-noise", lambda: check_action_noise(task, action_noise(task, args)))
        if error:
            return error
    if args.action_noise and not any(num_colours(t) for t in args.tasks):  # TakeItBack alone: say why it is refused
        return value_error("--action-noise", lambda: check_action_noise(args.tasks[0], args.action_noise))
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        return f"--device: expected cpu or cuda (with a GPU), received {args.device!r}"
    for task in args.tasks:
        if args.window is not None and not 1 <= args.window <= episode_length(task):
            return f"--window must be in [1, {episode_length(task)}] for {task} (its episode length), received {args.window}"
    if args.obs == "rgb" and args.image_size < 36:
        return f"--image-size must be >= 36 (the encoder's three convolutions), received {args.image_size}"
    if args.obs != "rgb" and args.proprio:
        return "--proprio: the robot's joints and TCP pose are part of --obs visible_state already; it adds to --obs rgb only"
    if "elmur" in args.policies:  # e.g. a --width that the heads do not divide
        for task in args.tasks:
            error = value_error("ELMUR configuration from --width/--preset",
                                lambda: mikasa_elmur_config(task, args.preset, width=args.width))
            if error:
                return error
    return None


def make_actor(task: str, memory: str, args: Args, data=None):
    return make_mikasa_actor(task, memory, obs=args.obs, data=data, preset=args.preset, width=args.width,
                             detach_memory=args.detach_memory, image_size=args.image_size, proprio=args.proprio)


def dataset(task: str, args: Args, progress: bool = True):
    """The task's oracle episodes as the policies see them (built on the first call, then read from ``--cache``)."""
    return make_mikasa_dataset(task, args.episodes, image_size=args.image_size, workers=args.workers, cache_dir=args.cache,
                               progress=args.progress and progress, cues_per_layout=cues_per_layout(task, args),
                               action_noise=action_noise(task, args), obs_mode=args.obs)


def compute_row(task: str, memory: str, seed: int | None, args: Args, ctx: DistributedContext | None = None,
                data=None) -> dict | None:
    """One row: the oracle's success (``memory="oracle"``) or a policy trained and evaluated (:func:`run_policy`).
    Without ``ctx``, a job of its own process (``--jobs``): ``--threads`` torch threads, the dataset read from the
    cache, the evaluation in this process, no progress bars (the caller shows one over the rows)."""
    if ctx is None:
        torch.set_num_threads(args.threads)
        args = dataclasses.replace(args, workers=1, progress=False)
        ctx = DistributedContext(device=torch.device(args.device))
    if memory == "oracle":
        return {"success": oracle_eval_success(task, args.eval_episodes)} if ctx.is_main else None
    return run_policy(task, memory, seed, dataset(task, args) if data is None else data, args, ctx)


def report(row: dict) -> None:
    """One line per finished row."""
    if row["policy"] == "oracle":
        print(f"  {row['task']:20s} oracle success {row['success']:.2f}", flush=True)
        return
    cue = f"; cue effect {row['cue_effect']:.3f} on a reach of {row['reach_action']:.3f}" if "cue_effect" in row else ""
    print(f"  {row['task']:20s} {row['policy']:6s} seed {row['seed']} success {row['success']:.2f} ({row['successes']}/"
          f"{row['episodes']}; train {row['train_seconds']:.0f} s, eval {row['eval_seconds']:.0f} s{cue})", flush=True)


def run_policy(task: str, memory: str, seed: int, data, args: Args, ctx: DistributedContext) -> dict | None:
    """Train one policy (on every torchrun rank, DDP) and evaluate it (rank 0; others return None)."""
    torch.manual_seed(seed)
    device = ctx.device  # --device, or this rank's GPU under torchrun
    actor = make_actor(task, memory, args, data).to(device)
    window = args.window or train_window(task)
    loss = SequenceMSELoss(actor, step_weights=step_weights(task, args.decision_weight, window))
    history = fit_bc(actor, loss, data if device.type == "cpu" else data.to(device), steps=args.steps, batch=args.batch,
                     seq_len=window, lr=args.lr, seed=seed, grad_clip=args.grad_clip,  # rows: each episode's first steps
                     name=f"{task}/{memory}/seed{seed}", progress=args.progress, ctx=ctx)
    if not ctx.is_main:
        return None
    t0 = time.perf_counter()
    actor = actor.to("cpu")  # the envs and their ParallelEnv buffers live on the CPU
    success = mikasa_success(actor, task, args.eval_episodes, obs_mode=args.obs, image_size=args.image_size,
                             workers=args.workers, progress=args.progress, desc=f"eval {memory} seed {seed}")
    key = "pixels" if args.obs == "rgb" else "visible_state"
    return {"task": task, "policy": memory, "seed": seed, "success": success.float().mean().item(),
            "successes": int(success.sum()), "episodes": len(success), "train_seconds": history.train_seconds,
            "eval_seconds": time.perf_counter() - t0, "params": sum(p.numel() for p in actor.parameters()),
            **cue_effect(actor, data, task, key=key)}


def cues_per_layout(task: str, args: Args) -> int:
    """``--cues-per-layout`` for ``task``: at most its number of colours, 1 without a cue (TakeItBack)."""
    return min(args.cues_per_layout, num_colours(task) or 1)


def action_noise(task: str, args: Args) -> float:
    """``--action-noise`` for ``task``: RememberColor's reach only (0 for TakeItBack)."""
    return args.action_noise if num_colours(task) else 0.0


def row_config(args: Args) -> str:
    """Everything that decides a (task, policy, seed) row, as one string: rows of another configuration are not reused."""
    return json.dumps({k: getattr(args, k) for k in (
        "obs", "preset", "detach_memory", "episodes", "decision_weight", "cues_per_layout", "action_noise", "image_size",
        "proprio", "window", "steps", "batch", "lr", "width", "grad_clip", "eval_episodes")}, sort_keys=True)


def oracles(args: Args) -> None:
    """The scripted oracles' success on the evaluation seeds, per task (state mode: nothing rendered)."""
    rows = []
    for task in args.tasks:
        t0 = time.perf_counter()
        success = oracle_eval_success(task, args.eval_episodes, progress=args.progress)
        rows.append({"task": task, "control_mode": MIKASA_TASKS[task][1], "oracle": success,
                     "episodes": args.eval_episodes, "seconds": time.perf_counter() - t0})
    header = (f"MIKASA-Robo scripted oracles: success_once on seeds {EVAL_SEED}..{EVAL_SEED + args.eval_episodes - 1}, "
              f"CPU physics; torch {torch.__version__}")
    cols = [("task", "task", "s"), ("control_mode", "control mode", "s"), ("oracle", "success", ".2f"),
            ("episodes", "episodes", "d"), ("seconds", "seconds", ".0f")]
    out = write_report("mikasa_oracles", header, rows, cols, args.out)
    print(f"wrote {out / 'mikasa_oracles.csv'}, .md")
    print(json.dumps({"benchmark": "mikasa_oracles", "rows": rows}))


def summarise(rows: list[dict], tasks: list[str], policies: list[str], oracle: dict[str, float]) -> list[dict]:
    """One row per task: per policy the mean and std of success over the seeds, as numbers and as the
    paper's "0.89 +- 0.04" text, the oracle, chance and the paper's pixel numbers."""
    table = []
    for task in tasks:
        row = {"task": task, "oracle": oracle[task], "chance": chance(task)}
        for policy in policies:
            values = [r["success"] for r in rows if r["task"] == task and r["policy"] == policy]
            if values:
                mean, std = statistics.fmean(values), statistics.pstdev(values)
                row.update({policy: mean, f"{policy}_std": std, f"{policy}_text": f"{mean:.2f} ± {std:.2f}",
                            f"{policy}_seeds": len(values)})
        row.update({f"paper_{k}": v for k, v in PAPER_PIXELS.get(task, {}).items()})
        table.append(row)
    return table


def main() -> None:
    args = parse_dataclass(Args, __doc__.splitlines()[0], check=check)
    error = render_device_error()
    if error is not None:
        raise SystemExit(f"mikasa_robo: {error}")
    if args.oracle_only:
        return oracles(args)
    torch.set_num_threads(args.threads)
    ctx = init_distributed_cli(args.batch, args.device)  # under torchrun: every rank trains (DDP), rank 0 collects, evaluates and reports
    start = time.perf_counter()
    # every finished (task, policy, seed) row is recorded at once, keyed by everything that decides it: a rerun of the
    # same command after a crash trains only what is missing (every rank reads the same file before any work)
    log = main_first(ctx, lambda: RowLog(Path(args.out) / "mikasa_robo.rows.jsonl", key=("task", "policy", "seed", "config"),
                                         fresh=args.restart and ctx.is_main))
    config = row_config(args)
    datasets = {task: main_first(ctx, lambda: dataset(task, args, ctx.is_main)) for task in args.tasks}  # built or loaded
    work = [(task, "oracle", None) for task in args.tasks]
    work += [(task, memory, seed) for task in args.tasks for seed in args.seeds for memory in args.policies]
    if args.jobs == 1:  # one row after another here (every torchrun rank trains what is not recorded; rank 0 records)
        for task, memory, seed in work:
            row, recorded = log.get_or_add(lambda: compute_row(task, memory, seed, args, ctx, datasets[task]),
                                           task=task, policy=memory, seed=seed, config=config)
            if ctx.is_main and not recorded:
                report(row)
    else:  # --jobs at a time, each in a process of its own, recorded as each finishes
        missing = [job for job in work if log.get(task=job[0], policy=job[1], seed=job[2], config=config) is None]
        bar = tqdm(total=len(missing), desc=f"rows ({args.jobs} processes)", disable=not args.progress, dynamic_ncols=True)
        for (task, memory, seed), row in in_processes(compute_row, missing, args.jobs, args):
            row = {**row, "task": task, "policy": memory, "seed": seed, "config": config}
            log.add(row)
            bar.update(1)
            report(row)
        bar.close()
    if not ctx.is_main:
        return shutdown(ctx)
    recorded = {(r["task"], r["policy"], r["seed"]): r for r in (log.get(task=t, policy=m, seed=s, config=config)
                                                                  for t, m, s in work) if r is not None}
    oracle = {task: recorded[task, "oracle", None]["success"] for task in args.tasks if (task, "oracle", None) in recorded}
    rows = [{k: v for k, v in recorded[job].items() if k != "config"} for job in work if job[1] != "oracle"]
    summary = summarise(rows, args.tasks, args.policies, oracle)
    notes = f" (each layout with {args.cues_per_layout} cue colours)" if args.cues_per_layout > 1 else ""
    if args.action_noise:
        notes += f", reach recorded with action noise {args.action_noise:g}"
    if args.decision_weight != 1.0:
        notes += f", loss weight {args.decision_weight:g} on the first 3 reach steps"
    seen = ("the state the two cameras show (visible_state)" if args.obs == "visible_state" else
            f"pixels ({args.image_size}x{args.image_size}, 2 cameras{', + proprio' if args.proprio else ''})")
    header = (f"MIKASA-Robo BC from {seen}: success_once, mean ± std over training seeds {args.seeds}; {args.episodes} "
              f"oracle episodes per task{notes}, {args.steps} steps x {args.batch} rows (each episode's first "
              f"{args.window or ', '.join(f'{train_window(t)}' for t in args.tasks)} steps), AdamW {args.lr}, ELMUR "
              f"preset {args.preset!r} (detach_memory={args.detach_memory}), {args.eval_episodes} eval episodes (seeds "
              f"{EVAL_SEED}+); paper: ELMUR and BC-MLP from 128x128 pixels (another observation); "
              f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {time.perf_counter() - start:.0f} s")
    cols = ([("task", "task", "s"), ("oracle", "oracle", ".2f")] + [(f"{p}_text", p, "s") for p in args.policies]
            + [("chance", "chance", ".2f"), ("paper_elmur", "paper ELMUR (pixels)", ".2f"),
               ("paper_mlp", "paper BC-MLP (pixels)", ".2f")])
    out = write_report("mikasa_robo", header, summary, cols, args.out, csv_rows=rows)
    table = {r["task"]: {c: r[c] for c in ("oracle", *args.policies) if c in r} for r in summary}
    grouped_bars(table, ["oracle", *args.policies], out / "mikasa_robo.png", ylim=(0, 1.05),
                 ylabel="success rate (success_once)", marks={r["task"]: r["chance"] for r in summary if r["chance"] is not None},
                 errors={r["task"]: {p: r.get(f"{p}_std", 0.0) for p in args.policies} for r in summary},
                 title=f"MIKASA-Robo, behaviour cloning from {'the visible state' if args.obs == 'visible_state' else 'pixels'}"
                       f" (mean ± std over {len(args.seeds)} seeds"
                       f"{'; dotted: one guess among the colours' if any(num_colours(t) for t in args.tasks) else ''})")
    result = json.dumps({"benchmark": "mikasa_robo", "obs": args.obs, "tasks": {r["task"]: r for r in summary},
                         "rows": rows, "preset": args.preset, "episodes": args.episodes, "seeds": args.seeds,
                         "cues_per_layout": args.cues_per_layout, "action_noise": args.action_noise,
                         "decision_weight": args.decision_weight, "image_size": args.image_size,
                         "proprio": args.proprio, "world_size": ctx.world_size,
                         "seconds": time.perf_counter() - start})
    (out / "mikasa_robo.json").write_text(result + "\n")
    print(f"wrote {out / 'mikasa_robo.csv'}, .md, .png, .json")
    print(result)
    shutdown(ctx)


if __name__ == "__main__":
    main()
