"""Online recurrent PPO through TorchRL collectors: ELMUR against GRU, LSTM and a memoryless MLP.

The agent plays a POPGym memory task (default RepeatFirstEasy: name, at every step, the suit of
the first card of the episode; a policy without memory can only guess, mean return -0.5) in
parallel worker processes. The policy's memory is carried step to step by the collector through
the primer, exactly as for a GRU; PPO then replays the collected rows in recurrent mode from the
state stored at each row's start.

The script reads top to bottom:
  1. Args        : every knob, declared once (`--help` lists them with their defaults)
  2. the policy  : encoder -> memory (ELMURModule | GRUModule | LSTMModule | none) -> heads;
                   one trunk shared by actor and critic (state key shared_rs: one memory step per env
                   step), or one each with --no-shared-trunk (actor_rs, critic_rs)
  3. collection  : TorchRL's MultiSyncCollector (or DistributedCollector): --num-workers processes,
                   each stepping its envs with a copy of actor + critic (weights pushed after every update);
                   frames_per_batch = envs x --rollout: one [envs, T] batch of rows
  4. advantages  : TorchRL's GAE over the recurrent critic on the whole batch (recurrent mode)
  5. storage     : RowStartStates keeps each state key only at t = 0 of each row (the replay
                   reads nothing else); the batch's bytes before and after are logged
  6. PPO epochs  : TorchRL's ClipPPOLoss on minibatches of whole rows, Adam, grad clipping;
                   before the first step of each update, the log-probabilities replayed in
                   recurrent mode are checked against those recorded by the collector
  7. report      : evaluation on held-out seeds, learning curves (PNG), CSV, checkpoint,
                   wandb (offline), one JSON line

    python tutorials/online_ppo.py                          # ELMUR on RepeatFirstEasy
    python tutorials/online_ppo.py --compare --seeds 0 1 2  # ELMUR, GRU, LSTM, MLP; mean and spread
    python tutorials/online_ppo.py --task PositionOnlyCartPoleEasy --policy gru
    python tutorials/online_ppo.py --collector distributed      # TorchRL's DistributedCollector (torch.distributed)
    python tutorials/online_ppo.py --resume                 # a run that died: continue from outputs/online_ppo/<policy>_seed<s>.train.pt
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE
from tqdm import tqdm

from torchrl_elmur import ELMURConfig
from torchrl_elmur.core.config import OptionSetName, with_options
from torchrl_elmur.data.row_states import RowStartStates, recurrent_state_keys
from torchrl_elmur.envs import make_popgym_env
from torchrl_elmur.envs.popgym_env import task_name
from torchrl_elmur.training import start_wandb
from torchrl_elmur.training.checkpoint import (ResumeMismatch, checkpoint_due, load_training_state, save_policy,
                                              save_training_state)
from torchrl_elmur.training.cli import cli_errors, flag_values, parse_dataclass, value_error
from torchrl_elmur.training.collectors import close_collector, exit_on_interrupt, make_popgym_collector, watch_workers
from torchrl_elmur.training.evaluate import popgym_returns
from torchrl_elmur.training.policies import MEMORIES, make_actor_critic, rollout_policy


# ----------------------------------------------------------------------------------------------
# 1. Args
# ----------------------------------------------------------------------------------------------
@dataclass
class Args:
    task: str = "RepeatFirstEasy"  # a POPGym task with discrete actions (name or gym id)
    policy: Literal["elmur", "gru", "lstm", "mlp"] = "elmur"  # memory module of actor and critic
    compare: bool = False  # run elmur, gru, lstm and mlp (each on every seed)
    seeds: list[int] = field(default_factory=lambda: [0])  # one run per seed
    frames: int = 65_536  # environment steps per run
    num_workers: int = 2  # collector worker processes
    collector: Literal["multisync", "distributed"] = "multisync"  # TorchRL's MultiSyncCollector, or its DistributedCollector (torch.distributed, gloo; localhost here)
    envs_per_worker: int = 8  # envs stepped together in each worker
    rollout: int = 64  # T: steps per row (collector batch: envs x T frames)
    epochs: int = 4  # PPO epochs per batch
    minibatch_rows: int = 4  # rows per minibatch (of envs in a batch)
    lr: float = 1e-3
    gamma: float = 0.99
    lmbda: float = 0.95
    clip: float = 0.2  # PPO ratio clip
    entropy: float = 0.01  # entropy bonus coefficient
    critic_coef: float = 0.5
    max_grad_norm: float = 0.5
    width: int = 64  # encoder and memory width
    segment_len: int = 16  # ELMUR K
    memory_slots: int = 4  # ELMUR M
    num_layers: int = 2  # ELMUR L
    options: OptionSetName | None = None  # ELMUR: a named option set (norm, detach, init, dropout, FFN) from OPTION_SETS (None: ELMURConfig's defaults)
    shared_trunk: bool = True  # actor and critic share one encoder + memory (one memory step per env step; --no-shared-trunk: one each)
    state_layout: Literal["tokens", "cache"] = "tokens"  # ELMUR's stored state: the segment's inputs (ELMURModule's default) or its keys/values (opt-in, more bytes)
    keep_state: Literal["row-starts", "all"] = "row-starts"  # stored batch: states at row starts only, or at every step
    eval_episodes: int = 100  # greedy evaluation episodes on seeds EVAL_SEED + i (0: none)
    out: str = "outputs/online_ppo"  # curves (CSV, PNG), checkpoints, wandb
    checkpoint_every: int = 8  # write the training state (<out>/<policy>_seed<s>.train.pt) every N updates and after the last (0: only after the last)
    resume: bool = False  # continue each run from its training state in --out, at that update, with fresh envs (see train)
    wandb: Literal["offline", "online", "disabled"] = "offline"
    threads: int = 1  # torch threads of the learner
    progress: bool = True


def check_args(args: Args) -> str | None:
    error = value_error("--task", lambda: spec_sizes(args.task)) or value_error(  # e.g. a --width the heads do not divide
        "ELMUR configuration from --width/--segment-len/--memory-slots/--num-layers/--options", lambda: elmur_config(args))
    if error:
        return error
    config = elmur_config(args)
    dropouts = {k: getattr(config, k) for k in ("dropout", "attn_dropout", "memory_dropout") if getattr(config, k)}
    if dropouts:  # the loss replays each batch with the collector's log-probabilities: random masks break that
        return (f"--options {args.options}: online PPO needs an ELMUR without dropout (the learner replays the "
                f"collected rows and must reproduce their log-probabilities), received {dropouts}")
    if args.frames < envs(args) * args.rollout:
        return (f"--frames must be >= one collector batch (envs x --rollout = {envs(args) * args.rollout}), "
                f"received {args.frames}")
    if args.minibatch_rows > envs(args):
        return f"--minibatch-rows ({args.minibatch_rows}) must be <= the envs per batch ({envs(args)})"
    return None


def envs(args: Args) -> int:
    return args.num_workers * args.envs_per_worker


def updates(args: Args) -> int:
    """PPO updates in a run: one per collector batch of envs x T frames (--frames rounded up to batches)."""
    batch = envs(args) * args.rollout
    return -(-args.frames // batch)


# ----------------------------------------------------------------------------------------------
# 2. The policy (torchrl_elmur.training.policies.make_actor_critic): only the memory differs
# ----------------------------------------------------------------------------------------------
def elmur_config(args: Args) -> ELMURConfig:
    """ELMUR as ``ELMURModule`` builds it by default (ELMURConfig's default options: gradients
    through memory across segments, no dropout), at this tutorial's sizes; ``--options`` swaps in a
    named option set (``benchmarks/default_options.py`` compares them)."""
    config = ELMURConfig(input_size=args.width, d_model=args.width, num_layers=args.num_layers, num_heads=4,
                         segment_len=args.segment_len, memory_slots=args.memory_slots)
    return with_options(config, args.options) if args.options else config


# ----------------------------------------------------------------------------------------------
# 3. Collection: worker processes step the envs; the policy runs here, its state carried by TorchRL
# ----------------------------------------------------------------------------------------------
def make_collector(args: Args, policy, seed: int, batches: int):
    """``--num-workers`` processes, each with ``--envs-per-worker`` envs and a copy of the policy
    (weights pushed by ``update_policy_weights_()`` after every update); ``batches`` batches of
    ``[workers, envs, T]``. ``--collector multisync``: TorchRL's MultiSyncCollector;
    ``distributed``: its DistributedCollector (torch.distributed, gloo; see make_popgym_collector)."""
    return make_popgym_collector(args.task, policy, num_workers=args.num_workers, envs_per_worker=args.envs_per_worker,
                                 rollout=args.rollout, frames=batches * envs(args) * args.rollout, seed=seed,
                                 kind=args.collector)


# ----------------------------------------------------------------------------------------------
# 4-6. One run: collect, advantages, compact storage, PPO epochs
# ----------------------------------------------------------------------------------------------
def replay_error(actor, rows) -> float:
    """max |log pi(a|history)| replayed in recurrent mode - the collector's action_log_prob."""
    with torch.no_grad(), set_recurrent_mode(True):
        log_prob = actor.get_dist(rows.copy()).log_prob(rows["action"])
    return float((log_prob - rows["action_log_prob"]).abs().max())


# the arguments a training state must share with the run that resumes it (the others: output, logging, evaluation)
RESUME_FREE = ("compare", "seeds", "policy", "eval_episodes", "out", "wandb", "threads", "progress", "resume",
               "checkpoint_every")


def train(kind: str, seed: int, args: Args, run=None, *, progress: bool = True, checkpoint: Path | None = None) -> dict:
    """One PPO run. With ``checkpoint``, the training state (actor, critic, optimizer, curve, timings,
    the learner's random generators) is written there every ``--checkpoint-every`` updates and after
    the last; with ``--resume`` the run continues from it: at that update boundary, with fresh envs
    and collector workers seeded by ``seed + 1000 x updates done`` (the collector's env states are not
    saved: episodes in progress are lost, so the updates after the resume see other rollouts than an
    uninterrupted run would; everything up to the checkpoint is as it was)."""
    torch.manual_seed(seed)
    obs_size, num_actions = spec_sizes(args.task)
    actor, critic = make_actor_critic(kind, obs_size, num_actions, width=args.width, state_layout=args.state_layout,
                                      config=elmur_config(args) if kind == "elmur" else None,
                                      shared_trunk=args.shared_trunk)
    policy = rollout_policy(actor, critic)  # the collector records the states and state_value (a shared trunk runs once)
    gae = GAE(gamma=args.gamma, lmbda=args.lmbda, value_network=critic, average_gae=True, deactivate_vmap=True)
    loss_module = ClipPPOLoss(actor, critic, clip_epsilon=args.clip, entropy_coeff=args.entropy,
                              critic_coeff=args.critic_coef, normalize_advantage=False)
    optimizer = torch.optim.Adam(loss_module.parameters(), lr=args.lr)
    state_keys = recurrent_state_keys(actor, critic)
    curve, frames, collect_s, train_s, checkpoint_s, done = [], 0, 0.0, 0.0, 0.0, 0
    parts, total = {"loss": loss_module, "optimizer": optimizer}, updates(args)
    if args.resume and checkpoint is not None and checkpoint.exists():  # refused if a flag outside RESUME_FREE changed
        done, saved = load_training_state(checkpoint, steps=total, parts=parts,
                                          config=flag_values(args, leave_out=RESUME_FREE))
        curve, collect_s, train_s, checkpoint_s = (saved[k] for k in ("curve", "collect_seconds", "train_seconds",
                                                                       "checkpoint_seconds"))
        frames = curve[-1]["frames"] if curve else 0
        print(f"{kind} seed {seed}: resumed from {checkpoint} at update {done} of {total} ({frames} frames)", flush=True)
    bar = tqdm(total=total * envs(args) * args.rollout, initial=frames, desc=f"{kind} seed {seed}",
               disable=not progress or done == total, dynamic_ncols=True, leave=False)
    # starts the worker processes: nothing may fail between here and try
    collector = make_collector(args, policy, seed + 1000 * done, total - done) if done < total else None
    try:
        # a worker that dies ends the run with an error (TorchRL's weight push would wait for ever), and the
        # process within 60 s whatever it then waits on (the stacks of a stuck exit are printed)
        with watch_workers(exit_after=60):
            t0 = time.perf_counter()
            for batch in collector or ():
                collect_s += time.perf_counter() - t0
                t1 = time.perf_counter()
                # [envs, T]: each row one env's consecutive steps; the critic's recorded value is recomputed by GAE
                rows = batch.reshape(-1, args.rollout).exclude("state_value")
                frames += rows.numel()
                with torch.no_grad(), set_recurrent_mode(True):
                    gae(rows)  # advantage, value_target: the critic replayed over the rows from their stored states
                full_bytes = rows.bytes()
                stored = RowStartStates(rows, state_keys) if args.keep_state == "row-starts" else rows
                check = replay_error(actor, stored[:])  # all rows, as the loss will see them
                if check > 1e-4:
                    raise RuntimeError(f"online_ppo: the recurrent replay disagrees with the collector's log-probabilities "
                                       f"(max |d log p| = {check:.2e}): the stored states do not replay the collection.")
                for _ in range(args.epochs):
                    for idx in torch.randperm(len(rows)).split(args.minibatch_rows):
                        losses = loss_module(stored[idx])
                        loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                        optimizer.zero_grad()
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(loss_module.parameters(), args.max_grad_norm)
                        optimizer.step()
                collector.update_policy_weights_()
                train_s += time.perf_counter() - t1
                done_mask = rows["next", "done"].squeeze(-1)
                ret = (float(rows["next", "episode_reward"].squeeze(-1)[done_mask].mean()) if bool(done_mask.any())
                       else float("nan"))
                point = {"frames": frames, "return": ret, "episodes": int(done_mask.sum()), "replay_error": check,
                         "collect_fps": frames / collect_s, "batch_bytes": full_bytes,
                         "stored_bytes": stored.bytes(), "loss_objective": losses["loss_objective"].item(),
                         "loss_critic": losses["loss_critic"].item(), "entropy": losses["entropy"].item()}
                curve.append(point)
                if run is not None:
                    run.log({f"{kind}/seed{seed}/{k}": v for k, v in point.items()})
                bar.update(rows.numel())
                bar.set_postfix(ret=f"{ret:+.3f}", fps=f"{point['collect_fps']:.0f}")
                done += 1
                if checkpoint is not None and checkpoint_due(done, total, args.checkpoint_every):
                    t2 = time.perf_counter()
                    save_training_state(checkpoint, step=done, steps=total, parts=parts,
                                        config=flag_values(args, leave_out=RESUME_FREE),
                                        extra={"curve": curve, "collect_seconds": collect_s, "train_seconds": train_s,
                                               "checkpoint_seconds": checkpoint_s})
                    checkpoint_s += time.perf_counter() - t2
                t0 = time.perf_counter()
    finally:  # worker processes and weight-sync queues are closed on errors and Ctrl-C too
        bar.close()
        if collector is not None:
            close_collector(collector)
    result = {"curve": curve, "collect_fps": frames / collect_s, "train_seconds": train_s, "collect_seconds": collect_s,
              "checkpoint_seconds": checkpoint_s, "max_replay_error": max(p["replay_error"] for p in curve),
              "actor": actor, "critic": critic}
    if args.eval_episodes:
        result["eval_return"] = evaluate(actor, args)
    return result


def spec_sizes(task: str) -> tuple[int, int]:
    env = make_popgym_env(task)
    obs, act = env.observation_spec["observation"], env.action_spec
    env.close()
    if not hasattr(act.space, "n"):
        raise ValueError(f"{task_name(task)} has continuous actions ({type(act).__name__} of shape {list(act.shape)}); "
                         "this tutorial's actor is categorical: choose a task with discrete actions")
    return obs.shape[-1], act.space.n


def evaluate(actor, args: Args) -> float:
    """Mean return of the greedy policy over ``eval_episodes`` episodes on held-out seeds."""
    return float(popgym_returns(actor, args.task, args.eval_episodes).mean())


# ----------------------------------------------------------------------------------------------
# 7. Report
# ----------------------------------------------------------------------------------------------
def plot_curves(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for kind, runs in results.items():
        frames = np.array([p["frames"] for p in runs[0]["curve"]])
        returns = np.array([[p["return"] for p in r["curve"]] for r in runs])
        mean = np.nanmean(returns, 0)
        ax.plot(frames, mean, label=f"{kind} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            ax.fill_between(frames, np.nanmin(returns, 0), np.nanmax(returns, 0), alpha=0.2)
    ax.set_xlabel("frames")
    ax.set_ylabel("mean episode return (training)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(runs: list[dict]) -> dict:
    def stats(values: list[float]) -> dict:
        t = torch.tensor(values, dtype=torch.float64)
        return {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0, "values": values}

    final = [r["curve"][-1]["return"] for r in runs]
    summary = {"final_train_return": stats(final), "collect_fps": stats([r["collect_fps"] for r in runs]),
               "max_replay_error": max(r["max_replay_error"] for r in runs)}
    if "eval_return" in runs[0]:
        summary["eval_return"] = stats([r["eval_return"] for r in runs])
    return summary


def report(results: dict, args: Args, out: Path) -> dict:
    summaries = {kind: summarize(runs) for kind, runs in results.items()}
    gru_fps = summaries.get("gru", {}).get("collect_fps", {}).get("mean")
    print(f"\n{args.task}: {args.frames} frames per run, seeds {args.seeds}, {envs(args)} envs in {args.num_workers} workers")
    header = f"{'policy':>7} {'eval return':>16} {'final train return':>19} {'collect fps':>12} {'x GRU':>6} {'replay err':>11}"
    print(header)
    print("-" * len(header))
    for kind, s in summaries.items():
        ev = s.get("eval_return", {"mean": float("nan"), "std": 0.0})
        ratio = f"{s['collect_fps']['mean'] / gru_fps:.2f}" if gru_fps else "-"
        print(f"{kind:>7} {ev['mean']:>+9.3f} ± {ev['std']:.3f} {s['final_train_return']['mean']:>+11.3f} ± "
              f"{s['final_train_return']['std']:.3f} {s['collect_fps']['mean']:>12.0f} {ratio:>6} {s['max_replay_error']:>11.1e}")
    with open(out / "curves.csv", "w", newline="") as f:
        fields = ["policy", "seed", *results[next(iter(results))][0]["curve"][0].keys()]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for kind, runs in results.items():
            for seed, r in zip(args.seeds, runs):
                for p in r["curve"]:
                    writer.writerow({"policy": kind, "seed": seed, **p})
    plot_curves(results, out / "curves.png", f"PPO on {task_name(args.task)}")
    last = results[next(iter(results))][0]["curve"][-1]
    print(f"stored batch: {last['batch_bytes'] / 1e6:.2f} MB as collected, {last['stored_bytes'] / 1e6:.2f} MB kept "
          f"(--keep-state {args.keep_state}; first policy)")
    print(f"wrote {out / 'curves.csv'}, {out / 'curves.png'} and checkpoints in {out}")
    return summaries


def main() -> None:
    args = parse_dataclass(Args, __doc__.split("\n\n")[0], check=check_args)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = start_wandb(args.wandb, project="torchrl_elmur", run_dir=out, config=asdict(args), name="online_ppo")
    kinds = MEMORIES if args.compare else (args.policy,)
    results = {}
    for kind in kinds:
        results[kind] = []
        for seed in args.seeds:
            r = train(kind, seed, args, run, progress=args.progress, checkpoint=out / f"{kind}_seed{seed}.train.pt")
            save_policy(out / f"{kind}_seed{seed}.pt", r.pop("actor"), r.pop("critic"), extra={"args": asdict(args)})
            print(f"  {kind} seed {seed}: final train return {r['curve'][-1]['return']:+.3f}, eval "
                  f"{r.get('eval_return', float('nan')):+.3f}, {r['collect_fps']:.0f} collected frames/s, "
                  f"train {r['train_seconds']:.0f} s, checkpoints {r['checkpoint_seconds']:.1f} s, "
                  f"max replay error {r['max_replay_error']:.1e}")
            results[kind].append(r)
    summaries = report(results, args, out)
    run.finish()
    print(json.dumps({"task": task_name(args.task), "frames": args.frames, "seeds": args.seeds, **summaries}))


if __name__ == "__main__":
    with cli_errors(ResumeMismatch):  # --resume with other flags: one line, exit 2 (after the workers are stopped)
        exit_on_interrupt(main, "online_ppo")
