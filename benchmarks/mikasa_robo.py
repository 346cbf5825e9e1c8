"""MIKASA-Robo offline benchmark: behaviour cloning of ELMUR, GRU, LSTM and a memoryless MLP from pixels.

For every task: the scripted oracle's episodes recorded from two cameras (``make_mikasa_dataset``,
cached on disk), then per policy the same recipe on the same CNN encoder (``PixelEncoder``) and
data (``train_bc``: AdamW, whole episodes as rows, MSE on the actions), then ``--eval-episodes``
greedy episodes in the real env on seeds disjoint from the data's (``EVAL_SEED`` on), scored by
``success_once`` (``mikasa_success``, ``--workers`` CPU processes). The oracle is scored on the same
seeds. Pixels only by default, as in the paper (``--proprio`` adds joints and TCP pose).

    python benchmarks/mikasa_robo.py                         # RememberColor3, reduced CPU default (about an hour)
    python benchmarks/mikasa_robo.py --tasks RememberColor3-v0 RememberColor5-v0 RememberColor9-v0 TakeItBack-v0 \\
        --episodes 1000 --image-size 128 --eval-episodes 100 --preset paper --steps 5000   # paper scale
    torchrun --nproc_per_node=2 benchmarks/mikasa_robo.py    # training data-parallel (DDP)
    python benchmarks/mikasa_robo.py --oracle-only --tasks RememberColor3-v0 RememberColor5-v0 RememberColor9-v0 \
        TakeItBack-v0 --eval-episodes 100                   # the scripted oracles' success per task

Prints a table in the paper's form, writes ``<out>/mikasa_robo.{csv,md,png,json}`` and ends with one
JSON line (the .json).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchrl.modules import set_recurrent_mode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import grouped_bars, suite_errors, write_report  # noqa: E402

from torchrl_elmur import ELMURConfig  # noqa: E402
from torchrl_elmur.data import make_mikasa_dataset, make_offline_replay_buffer  # noqa: E402
from torchrl_elmur.data.mikasa_dataset import (EVAL_SEED, check_action_noise, check_cues_per_layout,  # noqa: E402
                                               oracle_eval_success)
from torchrl_elmur.envs.mikasa_env import (MIKASA_TASKS, episode_length, mikasa_task, num_colours,  # noqa: E402
                                           render_device_error)
from torchrl_elmur.modules import PixelEncoder  # noqa: E402
from torchrl_elmur.objectives import SequenceMSELoss  # noqa: E402
from torchrl_elmur.training import train_bc  # noqa: E402
from torchrl_elmur.training.cli import init_distributed_cli, parse_dataclass  # noqa: E402
from torchrl_elmur.training.distributed import DistributedContext, main_first, shutdown, wrap_ddp  # noqa: E402
from torchrl_elmur.training.evaluate import mikasa_success  # noqa: E402
from torchrl_elmur.training.policies import make_bc_actor  # noqa: E402

# ELMUR per task family: the published configuration (ELMUR.md section 5), or a CPU-sized one with
# the published segment length, lambda and sigma (3 segments per episode) at --width
PUBLISHED = {"RememberColor": ELMURConfig.mikasa_remember_color, "TakeItBack": ELMURConfig.mikasa_take_it_back}
PRESETS = ("cpu", "paper")
ACTION_DIMS = {"pd_ee_delta_pos": 4, "pd_ee_delta_pose": 7}
PROPRIO = 25  # ManiSkillEnv's proprio: qpos 9, qvel 9, TCP pose 7


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["RememberColor3-v0"])  # of RememberColor3/5/9-v0, TakeItBack-v0
    policies: list[str] = field(default_factory=lambda: ["elmur", "gru", "lstm", "mlp"])  # of elmur, gru, lstm, mlp
    preset: str = "cpu"  # ELMUR: "cpu" (2 layers, 4 heads, 16 slots, --width) or "paper" (the published per task)
    detach_memory: bool = False  # ELMUR: detach memory at segment boundaries (the published setting)
    episodes: int = 200  # oracle episodes per task in the dataset (paper: 1000)
    decision_weight: float = 1.0  # RememberColor: BC loss weight of the first DECISION_STEPS steps of the reach (where the action picks the cube)
    cues_per_layout: int = 1  # RememberColor: play each layout with this many cue colours (episodes that differ only in the cue)
    action_noise: float = 0.0  # RememberColor: DART-style noise (std) on the executed reach (steps 10-29) while recording; the labels stay the oracle's
    image_size: int = 64  # camera resolution (paper: 128)
    proprio: bool = False  # give the policies joints and TCP pose besides the pixels (paper: pixels only)
    steps: int = 400  # optimizer steps per policy
    batch: int = 16  # rows (whole episodes) per batch
    lr: float = 3e-4
    width: int = 64  # encoder output and memory width ("cpu" preset)
    grad_clip: float = 5.0
    eval_episodes: int = 30  # evaluation episodes per task and policy (seeds EVAL_SEED + i; paper: 100)
    workers: int = 2  # CPU processes for data collection and evaluation
    seed: int = 0
    threads: int = 1  # torch threads for training
    device: str = "cpu"  # training device ("cuda": the dataset moves there too); evaluation runs on the CPU beside the envs
    out: str = "outputs/benchmarks"
    cache: str = "outputs/cache/mikasa"  # where the datasets are stored
    progress: bool = True
    oracle_only: bool = False  # only score the oracle on --eval-episodes seeds of each task (state mode, fast) and exit


def check(args: Args) -> str | None:
    error = suite_errors(args, presets=PRESETS, task_name=mikasa_task,
                         positive=("episodes", "cues_per_layout", "steps", "batch", "eval_episodes", "workers"))
    if error:
        return error
    if not args.decision_weight > 0:
        return f"--decision-weight must be > 0, received {args.decision_weight}"
    for task in args.tasks:
        try:  # before any episode is recorded
            check_cues_per_layout(task, args.episodes, cues_per_layout(task, args))
        except ValueError as err:
            return f"--episodes / --cues-per-layout: {err}"
        try:
            check_action_noise(task, args.action_noise)
        except ValueError as err:
            return f"--action-noise: {err}"
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        return f"--device: expected cpu or cuda (with a GPU), received {args.device!r}"
    if args.image_size < 36:
        return f"--image-size must be >= 36 (the encoder's three convolutions), received {args.image_size}"
    if "elmur" in args.policies:
        for task in args.tasks:
            try:
                elmur_config(task, args)
            except ValueError as err:  # e.g. a --width that the heads do not divide
                return f"ELMUR configuration from --width/--preset: {err}"
    return None


def elmur_config(task: str, args: Args) -> ELMURConfig:
    published = PUBLISHED[MIKASA_TASKS[task][0]]
    if args.preset == "paper":
        return published(detach_memory=args.detach_memory)
    return published(d_model=args.width, num_layers=2, num_heads=4, memory_slots=16, detach_memory=args.detach_memory)


def make_actor(task: str, memory: str, args: Args):
    config = elmur_config(task, args)
    width = config.d_model  # every policy gets ELMUR's width: the same encoder, only the memory differs
    encoder = PixelEncoder(6, args.image_size, width=width, proprio_size=PROPRIO if args.proprio else 0)
    keys = ("pixels", "proprio") if args.proprio else ("pixels",)
    return make_bc_actor(memory, 0, action_dim=ACTION_DIMS[MIKASA_TASKS[task][1]], width=width,
                         config=config if memory == "elmur" else None,
                         encoder=encoder, in_keys=keys)


def run_policy(task: str, memory: str, data, args: Args, ctx: DistributedContext) -> dict | None:
    """Train one policy (on every torchrun rank, DDP) and evaluate it (rank 0; others return None)."""
    torch.manual_seed(args.seed)
    device = ctx.device  # --device, or this rank's GPU under torchrun
    actor = make_actor(task, memory, args).to(device)
    window = episode_length(task)  # rows are whole episodes
    loss = wrap_ddp(SequenceMSELoss(actor, step_weights=step_weights(task, args.decision_weight)), ctx)
    buffer = make_offline_replay_buffer(data if device.type == "cpu" else data.to(device), args.batch, window,
                                        seed=args.seed)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=args.lr)
    history = train_bc(actor, loss, buffer, optimizer, steps=args.steps, batch=args.batch, seq_len=window,
                       grad_clip=args.grad_clip, name=f"{task}/{memory}", progress=args.progress, ctx=ctx)
    if not ctx.is_main:
        return None
    t0 = time.perf_counter()
    actor = actor.to("cpu")  # the envs and their ParallelEnv buffers live on the CPU
    success = mikasa_success(actor, task, args.eval_episodes, image_size=args.image_size, workers=args.workers,
                             progress=args.progress, desc=f"eval {memory}")
    return {"task": task, "policy": memory, "success": success.float().mean().item(),
            "successes": int(success.sum()), "episodes": len(success), "train_seconds": history.train_seconds,
            "eval_seconds": time.perf_counter() - t0, "params": sum(p.numel() for p in actor.parameters()),
            **cue_effect(actor, data, task)}


CUE_STEPS = 10  # RememberColor: the cue is shown, then hidden, during the first 10 steps (the oracle holds still)
DECISION_STEPS = 3  # RememberColor: the first steps of the reach, the only ones that need the cue (later: the arm's motion)


def step_weights(task: str, decision_weight: float) -> torch.Tensor | None:
    """Per-step BC loss weights ``[T]``: ``decision_weight`` on RememberColor's first
    :data:`DECISION_STEPS` reach steps, 1 elsewhere; None when all would be 1."""
    if decision_weight == 1.0 or not num_colours(task):
        return None
    w = torch.ones(episode_length(task))
    w[CUE_STEPS:CUE_STEPS + DECISION_STEPS] = decision_weight
    return w


@torch.no_grad()
def cue_effect(actor, data, task: str, pairs: int = 50) -> dict:
    """Whether a policy reads its memory: on ``pairs`` pairs of training episodes, the cue frames
    (the first :data:`CUE_STEPS`) of episode ``b`` replaced by those of episode ``a``, the mean
    absolute change of ``b``'s actions over the 10 steps after the cue (the reach, where the action
    carries the choice of cube), beside the oracle's mean absolute action there for scale (all
    action dims). A policy that acts on the cue changes its reach in the swaps whose colours differ
    (2 of 3 in RememberColor3); a memoryless one cannot change at all. Empty for TakeItBack (no
    separable cue) or fewer than 2 episodes."""
    T = episode_length(task)
    n = data.shape[0] // T
    k = min(pairs, n // 2)
    if not num_colours(task) or k < 1:
        return {}
    episodes = data.reshape(n, T)
    reach = slice(CUE_STEPS, CUE_STEPS + 10)
    own = episodes[:k].clone()  # in memory; the actor writes its actions over the oracle's in it
    reach_action = own["action"][:, reach].abs().mean().item()
    swapped = own.clone()
    swapped["pixels"][:, :CUE_STEPS] = episodes[k:2 * k]["pixels"][:, :CUE_STEPS]
    was_training = actor.training
    actor.eval()
    with set_recurrent_mode(True):
        change = actor(swapped)["action"] - actor(own)["action"]
    actor.train(was_training)
    return {"cue_effect": change[:, reach].abs().mean().item(), "reach_action": reach_action}


def chance(task: str) -> float:
    """Success of a policy that picks one cube uniformly (RememberColor); TakeItBack has no such guess."""
    colours = num_colours(task)
    return 1.0 / colours if colours else 0.0


def cues_per_layout(task: str, args: Args) -> int:
    """``--cues-per-layout`` for ``task``: at most its number of colours, 1 without a cue (TakeItBack)."""
    return min(args.cues_per_layout, num_colours(task) or 1)


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
    rows, table = [], {}
    for task in args.tasks:
        data = main_first(ctx, lambda: make_mikasa_dataset(  # rank 0 builds (or loads) the cached dataset, the others load it
            task, args.episodes, seed=args.seed, image_size=args.image_size, workers=args.workers, cache_dir=args.cache,
            progress=args.progress and ctx.is_main, cues_per_layout=cues_per_layout(task, args),
            action_noise=args.action_noise))
        if ctx.is_main:
            table[task] = {"oracle": oracle_eval_success(task, args.eval_episodes), "chance": chance(task)}
        for memory in args.policies:
            row = run_policy(task, memory, data, args, ctx)
            if row is None:
                continue
            rows.append(row)
            table[task][memory] = row["success"]
            cue = (f"; cue effect {row['cue_effect']:.3f} on a reach of {row['reach_action']:.3f}"
                   if "cue_effect" in row else "")
            print(f"  {task:20s} {memory:6s} success {row['success']:.2f} ({row['successes']}/{row['episodes']}; oracle "
                  f"{table[task]['oracle']:.2f}; train {row['train_seconds']:.0f} s, eval {row['eval_seconds']:.0f} s{cue})",
                  flush=True)
    if not ctx.is_main:
        return shutdown(ctx)
    columns = ["oracle", *args.policies, "chance"]
    cues_note = f" (each layout with {args.cues_per_layout} cue colours)" if args.cues_per_layout > 1 else ""
    if args.action_noise:
        cues_note += f", reach recorded with action noise {args.action_noise:g}"
    if args.decision_weight != 1.0:
        cues_note += f", loss weight {args.decision_weight:g} on the first {DECISION_STEPS} reach steps"
    header = (f"MIKASA-Robo BC from pixels ({args.image_size}x{args.image_size}, 2 cameras{', + proprio' if args.proprio else ''}): "
              f"{args.episodes} oracle episodes per task{cues_note}, {args.steps} steps x {args.batch} episodes, AdamW {args.lr}, "
              f"ELMUR preset {args.preset!r} (detach_memory={args.detach_memory}), {args.eval_episodes} eval episodes, "
              f"seed {args.seed}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
              f"{time.perf_counter() - start:.0f} s")
    summary = [{"task": t, **table[t]} for t in table]
    cols = [("task", "task", "s")] + [(c, c, ".2f") for c in columns]
    out = write_report("mikasa_robo", header, summary, cols, args.out, csv_rows=rows)
    grouped_bars(table, [c for c in columns if c != "chance"], out / "mikasa_robo.png", ylim=(0, 1.05),
                 ylabel="success rate (success_once)", marks={t: table[t]["chance"] for t in table},
                 title="MIKASA-Robo, behaviour cloning from pixels (dotted: one guess among the colours)")
    result = json.dumps({"benchmark": "mikasa_robo", "tasks": table, "rows": rows, "preset": args.preset,
                         "episodes": args.episodes, "cues_per_layout": args.cues_per_layout, "action_noise": args.action_noise, "decision_weight": args.decision_weight, "image_size": args.image_size, "proprio": args.proprio,
                         "world_size": ctx.world_size})
    (out / "mikasa_robo.json").write_text(result + "\n")
    print(f"wrote {out / 'mikasa_robo.csv'}, .md, .png, .json")
    print(result)
    shutdown(ctx)


if __name__ == "__main__":
    main()
