"""Offline IQL on mixed-quality T-Maze data: an ELMUR actor and ELMUR critics vs behaviour cloning.

The agent sees a hint (goal up or down) only at the first step, walks a corridor, and must turn
to the hinted side at the junction (reward 1 at the last step iff it does). The offline data mix
30% oracle episodes with 50% episodes that walk the corridor but turn to the WRONG side and 20%
that wander (random corridor moves, random turn): copying the data turns the wrong way. Implicit
Q-learning (TorchRL's DiscreteIQLLoss) learns a Q-network and a value network from the rewards
and clones the data weighted by exp(temperature * (Q - V)), i.e. mostly the turns that paid. The
actor, the Q-network and the value network are all recurrent (the turn depends on a hint seen up
to 30 steps earlier), each with its own ELMUR memory. We train on episodes of at most 30 steps
and evaluate the actor on corridors up to 1,000 steps (or more, --eval-lengths).

The script reads top to bottom:
  1. Args        : every knob
  2. the networks: encoder -> memory (ELMURModule | LSTMModule | GRUModule) -> head, for the actor
                   (logits), the Q-network (one value per action) and the value network
  3. the data    : mixed-quality episodes (torchrl_elmur.data.make_tmaze_mixed_dataset) in a
                   TorchRL replay buffer, sampled as [B, T] batches that start at episode starts
  4. training    : DiscreteIQLLoss (vmap off, recurrent TD(0) targets), SoftUpdate target
                   Q-networks, AdamW; or, for the BC baseline, a cross-entropy loss
  5. evaluation  : the batched T-Maze env, the actor streaming one step at a time
  6. report      : table, CSV, PNG plot, checkpoints, wandb (offline), one JSON line

    python tutorials/offline_iql.py                 # IQL with ELMUR, about 8 minutes on a 2-core CPU
    python tutorials/offline_iql.py --compare       # IQL-elmur, BC-elmur, IQL-lstm, IQL-gru, one table (~14 min)
    python tutorials/offline_iql.py --method bc     # behaviour cloning on the same mixed data
    python tutorials/offline_iql.py --policy gru --eval-lengths 30 100 1000 10000
    python tutorials/offline_iql.py --resume        # a run that died: continue from outputs/offline_iql/<run>.train.pt
    torchrun --nproc_per_node=2 tutorials/offline_iql.py   # data-parallel (DDP): each rank trains on half the rows
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.modules import ProbabilisticActor
from torchrl.objectives import DiscreteIQLLoss, SoftUpdate
from tqdm import trange

from torchrl_elmur import ELMURConfig
from torchrl_elmur.data import BEHAVIOURS, EVAL_SEED, VALIDATION_SEED, make_offline_replay_buffer, make_tmaze_mixed_dataset
from torchrl_elmur.envs.tmaze_rules import NUM_ACTIONS, OBS_DIM
from torchrl_elmur.objectives import RecurrentTD0Estimator, SequenceCrossEntropyLoss
from torchrl_elmur.training import (episodes_error, evaluate_lengths, plot_success_vs_length, start_wandb,
                                    tmaze_success_rate)
from torchrl_elmur.training.cli import (cli_errors, flag_values, init_distributed_cli, parse_dataclass, range_error,
                                       value_error)
from torchrl_elmur.training.distributed import DistributedContext, rows_per_rank, shard_rows, shutdown, wrap_ddp
from torchrl_elmur.training.checkpoint import (ResumeMismatch, checkpoint_due, load_training_state, save_policy,
                                              save_training_state)
from torchrl_elmur.training.policies import make_bc_actor, make_network

COMPARE = (("iql", "elmur"), ("bc", "elmur"), ("iql", "lstm"), ("iql", "gru"))


# ----------------------------------------------------------------------------------------------
# 1. Args
# ----------------------------------------------------------------------------------------------
@dataclass
class Args:
    method: Literal["iql", "bc"] = "iql"  # iql, or bc (behaviour cloning on the same data, the baseline)
    policy: Literal["elmur", "lstm", "gru"] = "elmur"  # memory module of the actor and the critics
    compare: bool = False  # run iql-elmur, bc-elmur, iql-lstm, iql-gru; one table
    # data: fractions of oracle / wrong-turn / wandering episodes (torchrl_elmur/data/tmaze_mixed.py)
    episodes: int = 2000  # training episodes
    max_corridor: int = 28  # corridors uniform in 1..max_corridor (episodes of at most 30 steps)
    oracle: float = 0.3  # fraction of oracle episodes
    wrong_turn: float = 0.5  # fraction of episodes that walk the corridor and turn the wrong way
    wander: float = 0.2  # fraction of wandering episodes
    wander_noise: float = 0.5  # the wanderer's chance of a random action at each corridor step
    # model
    width: int = 128  # actor width (encoder, memory, as in offline_bc.py)
    critic_width: int = 32  # width of the Q-network and the value network
    segment_len: int = 10  # ELMUR K
    memory_slots: int = 2  # ELMUR M
    lru_blend: float = 0.0  # ELMUR lambda: 0 is a write-once memory (published: 0.79; see elmur_config)
    detach_memory: bool = False  # ELMUR: stop gradients at segment boundaries (published: True)
    # IQL
    expectile: float = 0.7  # tau of the value network's expectile regression (see make_iql_loss)
    temperature: float = 10.0  # beta: actor weights exp(beta * (Q - V)), clamped at 100 by TorchRL
    gamma: float = 0.99  # discount
    num_qvalue_nets: int = 1  # the actor and V use the min over these Q-networks (TorchRL's default: 2)
    target_tau: float = 0.05  # SoftUpdate rate of the target Q-networks
    # training
    steps: int = 500  # gradient steps
    batch: int = 64  # trajectories per batch
    seq_len: int = 30  # steps per trajectory
    lr: float = 6e-4  # actor (and BC) learning rate
    critic_lr: float = 1e-3  # Q- and value-network learning rate
    grad_clip: float = 5.0  # max gradient norm
    label_smoothing: float = 0.16  # BC baseline only (as offline_bc.py)
    # evaluation
    eval_lengths: list[int] = field(default_factory=lambda: [30, 100, 1000])  # corridor lengths
    eval_episodes: int = 100  # per length, half with each goal side (even)
    eval_every: int = 100  # during training: success on the shortest eval corridor every this many steps (0: never)
    checkpoint_every: int = 100  # write the training state (networks, targets, optimizer, sampler, RNGs) every this many steps (0: at the end only)
    resume: bool = False  # continue each run's training from its state in --out (<run>.train.pt), as if never stopped
    # bookkeeping
    seed: int = 0
    out: str = "outputs/offline_iql"  # output folder (table, CSV, PNG, checkpoints, wandb)
    wandb: Literal["offline", "online", "disabled"] = "offline"
    threads: int = 0  # torch threads (0: torch's default)


def check_args(args: Args) -> str | None:
    error = episodes_error({"--eval-episodes": args.eval_episodes})
    error = error or range_error(args, expectile="(0, 1)", target_tau="(0, 1]", oracle="[0, 1]", wrong_turn="[0, 1]",
                                 wander="[0, 1]")  # the rest: COMMON_RANGES
    if error:
        return error
    for flag, width in (("--width", args.width), ("--critic-width", args.critic_width)):  # e.g. a width the heads do not divide
        error = value_error(f"ELMUR configuration from {flag}/--segment-len/--memory-slots/--lru-blend",
                            lambda: elmur_config(args, width))
        if error:
            return error
    if min(args.oracle, args.wrong_turn, args.wander) < 0 or abs(args.oracle + args.wrong_turn + args.wander - 1) > 1e-6:
        return (f"--oracle, --wrong-turn and --wander must be >= 0 and sum to 1, received "
                f"{args.oracle}, {args.wrong_turn}, {args.wander}")
    return None


# ----------------------------------------------------------------------------------------------
# 2. The networks: encoder -> memory -> head. Three of them, each with its own memory.
#
# Backbones are NOT shared. DiscreteIQLLoss makes each network functional: it keeps
# `num_qvalue_nets` copies of the Q-network's parameters plus target copies, and runs the actor,
# the Q-networks and the value network as separate calls on the batch. A shared memory backbone
# would be copied into every Q-network anyway, would be run once per network regardless, and
# would train one memory on three objectives of different scales (weighted log-likelihood,
# TD regression, expectile regression). So each network owns its encoder and memory, and its
# recurrent state keys carry its own prefix (actor_*, qvalue_*, value_*): ELMURModule's one
# `state_key`, explicit state keys for LSTMModule/GRUModule. The critics are narrower than
# the actor (--critic-width) because only the actor is evaluated on long corridors.
# ----------------------------------------------------------------------------------------------
def elmur_config(args: Args, width: int) -> ELMURConfig:
    """The configuration the README's IQL numbers were measured with: a write-once memory
    (lru_blend=0: once both slots are full a write only refreshes a timestamp), gradients through
    memory, no memory dropout. The BC tutorial's memory that keeps updating (lambda 0.79, detached,
    with the released options) has not been measured with IQL."""
    return ELMURConfig.tmaze(input_size=width, d_model=width, segment_len=args.segment_len,
                             memory_slots=args.memory_slots, lru_blend=args.lru_blend,
                             detach_memory=args.detach_memory, memory_dropout=0.0)


def iql_network(kind: str, args: Args, prefix: str, width: int, out_key: str, out_size: int) -> TensorDictSequential:
    """observation -> Linear + GELU -> memory -> Linear head writing ``out_key``; keys ``<prefix>_embed``,
    ``<prefix>_memory`` and state ``<prefix>_rs`` (torchrl_elmur.training.policies.make_network)."""
    config = elmur_config(args, width) if kind == "elmur" else None
    return make_network(kind, OBS_DIM, lambda d: nn.Linear(d, out_size), out_key, width=width, config=config, prefix=prefix)


def make_actor(kind: str, args: Args) -> ProbabilisticActor:
    # observation -> Linear + GELU -> memory -> logits -> greedy Categorical, state key actor_rs
    return make_bc_actor(kind, OBS_DIM, num_actions=NUM_ACTIONS, width=args.width, prefix="actor",
                         config=elmur_config(args, args.width) if kind == "elmur" else None)


def make_critics(kind: str, args: Args) -> tuple[TensorDictSequential, TensorDictSequential]:
    qvalue = iql_network(kind, args, "qvalue", args.critic_width, "state_action_value", NUM_ACTIONS)  # Q(h_t, .)
    value = iql_network(kind, args, "value", args.critic_width, "state_value", 1)  # V(h_t)
    return qvalue, value


# ----------------------------------------------------------------------------------------------
# 3. The data
# ----------------------------------------------------------------------------------------------
def make_data(args: Args, verbose: bool = True):
    fractions = {"oracle": args.oracle, "wrong_turn": args.wrong_turn, "wander": args.wander}
    data = make_tmaze_mixed_dataset(args.episodes, fractions=fractions, wander_noise=args.wander_noise,
                                    max_corridor=args.max_corridor, seed=args.seed)
    starts = data["is_init"].squeeze(-1)
    returns = torch.zeros(args.episodes).index_add_(0, data["episode"], data["next", "reward"].squeeze(-1))
    behaviour = data["behaviour"][starts]
    if verbose:
        print(f"data: {args.episodes} episodes, {data.numel()} transitions, mean return {returns.mean():.2f}; "
              + ", ".join(f"{name} {int((behaviour == i).sum())} (return {returns[behaviour == i].mean():.2f})"
                          for i, name in enumerate(BEHAVIOURS) if (behaviour == i).any()))
    return data


# ----------------------------------------------------------------------------------------------
# 4. Training
# ----------------------------------------------------------------------------------------------
def make_iql_loss(actor: ProbabilisticActor, kind: str, args: Args) -> DiscreteIQLLoss:
    # Temperature and expectile for a sparse reward. At the junction Q(h, turn) tends to 1 for the
    # hinted side and 0 for the other. Along the corridor the next observation does not depend on the
    # action, so Q(h, .) is nearly flat there, advantages are ~0 and the actor copies the data's
    # majority: right. At the junction the data turn the wrong way 5 times for 3 correct turns, and
    # the actor's target odds (correct : wrong) are 0.6 * exp(beta * (Q_correct - Q_wrong)):
    # 0.6 * e^10 once Q is sharp with beta = 10, but only 1.6 with beta = 1 and < 1 (the wrong turn,
    # as BC) for beta < 0.5. A large beta also lets a half-trained Q (0.6 vs 0.2, say) already give
    # the correct turn odds of 30:1. The expectile tau puts V(h) between the values of the data's
    # actions (tau = 0.7: V ~ 0.55 at the junction); any tau in (0.5, 1) keeps the correct turn's
    # advantage positive and the wrong turn's negative, so beta does the work. TorchRL clamps the
    # weights exp(beta * A) at 100. One Q-network (TorchRL's default is 2) halves the critic cost:
    # IQL only queries Q at the data's actions, so the overestimation that a min over two Q-networks
    # guards against matters less; --num-qvalue-nets 2 restores it.
    qvalue, value = make_critics(kind, args)
    loss = DiscreteIQLLoss(actor, qvalue, value, action_space="categorical", num_qvalue_nets=args.num_qvalue_nets,
                           expectile=args.expectile, temperature=args.temperature)
    # vmap: DiscreteIQLLoss runs its Q-network(s) under torch.vmap (over parameter copies). None of
    # the three memories can run there: ELMURModule hits data-dependent control flow, LSTMModule and
    # GRUModule have no batching rule for aten::lstm / aten::gru unless built with python_based=True.
    # DiscreteIQLLoss takes no `deactivate_vmap` argument: set the flag, then rebuild the cached
    # vmapped Q caller as a plain loop.
    loss.deactivate_vmap = True
    loss._make_vmap()
    # Q-targets r + gamma V(s_{t+1}): TorchRL's TD(0) runs V on the next-observations alone, which
    # for a recurrent V drops each row's first observation (the hint!). RecurrentTD0Estimator runs
    # V once over the row and its last next-observation instead (torchrl_elmur/objectives).
    loss.make_value_estimator(RecurrentTD0Estimator, gamma=args.gamma, value_network=loss.value_network)
    return loss


# the arguments a training state must share with the run that resumes it (the others: which runs, evaluation, output)
RESUME_FREE = ("method", "policy", "compare", "eval_lengths", "eval_episodes", "checkpoint_every", "resume", "out",
               "wandb", "threads")


def resume_config(args: Args) -> dict:
    return flag_values(args, leave_out=RESUME_FREE)


def train(actor: ProbabilisticActor, method: str, kind: str, data, args: Args, run, name: str, ctx: DistributedContext,
          checkpoint: Path | None = None):
    # Under torchrun every rank samples the same global batch (same seed) and trains on its shard of
    # rows; DDP (around the whole loss module: the three networks' functional parameters are its
    # parameters) averages the gradients, so N ranks take the steps one process takes with all rows.
    buffer = make_offline_replay_buffer(data, args.batch, args.seq_len, seed=args.seed)
    if method == "iql":
        loss_module = make_iql_loss(actor, kind, args)
        target_updater = SoftUpdate(loss_module, tau=args.target_tau)  # target Q-networks follow slowly
        groups = [loss_module.actor_network_params, loss_module.qvalue_network_params, loss_module.value_network_params]
        groups = [list(g.parameters()) for g in groups]  # clip each network's gradient on its own
        loss_keys = ["loss_actor", "loss_qvalue", "loss_value"]
    else:
        loss_module = SequenceCrossEntropyLoss(actor, label_smoothing=args.label_smoothing)
        target_updater, groups, loss_keys = None, [list(actor.parameters())], ["loss_bc"]
    lrs = [args.lr] + [args.critic_lr] * (len(groups) - 1)  # actor first
    optimizer = torch.optim.AdamW([{"params": g, "lr": lr} for g, lr in zip(groups, lrs)])
    loss_module.train()
    ddp_loss = wrap_ddp(loss_module, ctx)  # loss_module itself in one process
    # the training state: with --resume the run continues from it as if never stopped (same samples, same updates)
    parts = {"actor": actor, "loss": loss_module, "optimizer": optimizer, "sampler": buffer.sampler}
    first, seconds = 0, 0.0
    if args.resume and checkpoint is not None and checkpoint.exists():
        first, saved = load_training_state(checkpoint, steps=args.steps, parts=parts, config=resume_config(args))
        seconds = saved["train_seconds"]
        if ctx.is_main:
            print(f"train {name}: resumed from {checkpoint} at step {first} of {args.steps}", flush=True)
    start = time.perf_counter()
    bar = trange(first, args.steps, desc=f"train {name}", dynamic_ncols=True, disable=not ctx.is_main, initial=first,
                 total=args.steps)
    success = None
    for step in bar:
        batch = buffer.sample().reshape(args.batch, args.seq_len)  # [B, T], each row from an episode start
        batch = shard_rows(batch, ctx)  # this rank's rows (all of them in one process)
        losses = ddp_loss(batch)  # runs every network in recurrent mode
        optimizer.zero_grad()
        sum(losses[k] for k in loss_keys).backward()
        grad_norms = [nn.utils.clip_grad_norm_(g, args.grad_clip) for g in groups]
        optimizer.step()
        if target_updater is not None:
            target_updater.step()
        look = ctx.is_main and args.eval_every and (step + 1) % args.eval_every == 0  # a quick look at the greedy policy
        if look:
            success = tmaze_success_rate(actor, min(args.eval_lengths), args.eval_episodes, seed=VALIDATION_SEED)
            run.log({f"{name}/success_during_training": success, f"{name}/step": step})
        if step % 10 == 0 or step == args.steps - 1 or look:
            logs = {k: losses[k].item() for k in loss_keys}
            bar.set_postfix({**{k.removeprefix("loss_"): f"{v:.3f}" for k, v in logs.items()},
                             **({"success": f"{success:.2f}"} if success is not None else {})})
            run.log({**{f"{name}/{k}": v for k, v in logs.items()}, f"{name}/grad_norm": grad_norms[0].item(),
                     f"{name}/step": step})
        if checkpoint is not None and ctx.is_main and checkpoint_due(step + 1, args.steps, args.checkpoint_every):
            save_training_state(checkpoint, step=step + 1, steps=args.steps, parts=parts, config=resume_config(args),
                                extra={"train_seconds": seconds + time.perf_counter() - start})
    return seconds + time.perf_counter() - start, loss_module


# ----------------------------------------------------------------------------------------------
# 6. Run and report
# ----------------------------------------------------------------------------------------------
def run_one(method: str, kind: str, data, args: Args, run, out: Path, ctx: DistributedContext) -> dict | None:
    name = f"{method}-{kind}"
    torch.manual_seed(args.seed)
    actor = make_actor(kind, args)
    train_seconds, loss_module = train(actor, method, kind, data, args, run, name, ctx, checkpoint=out / f"{name}.train.pt")
    if not ctx.is_main:  # rank 0 saves and evaluates
        return None
    save_policy(out / f"{name}.pt", actor, extra={"loss": loss_module.state_dict(), "args": asdict(args)})  # load_policy(path)
    # evaluation: the greedy actor streams through the batched env, one TorchRL step at a time
    success, eval_seconds = evaluate_lengths(actor, args.eval_lengths, args.eval_episodes, seed=EVAL_SEED,
                                             name=name, run=run)
    params = sum(p.numel() for p in actor.parameters())
    return {"success": success, "train_seconds": train_seconds, "eval_seconds": eval_seconds, "params": params}


def report(results: dict, args: Args, out: Path) -> None:
    lengths = [str(c) for c in args.eval_lengths]
    header = f"{'run':>10} {'actor params':>12} {'train s':>8} " + " ".join(f"{'c=' + c:>9}" for c in lengths)
    print(f"\nSuccess rate (mixed data: {args.oracle:.0%} oracle, {args.wrong_turn:.0%} wrong turn, {args.wander:.0%} "
          f"wander; trained on corridors <= {args.max_corridor}, {args.eval_episodes} eval episodes per length)")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:>10} {r['params']:>12,} {r['train_seconds']:>8.0f} " + " ".join(f"{r['success'][c]:>9.2f}" for c in lengths))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "policy", "corridor_length", "success", "train_seconds", "eval_seconds"])
        for name, r in results.items():
            method, kind = name.split("-")
            for c in lengths:
                writer.writerow([method, kind, c, r["success"][c], f"{r['train_seconds']:.1f}", f"{r['eval_seconds'][c]:.1f}"])
    plot_success_vs_length({name: {int(c): r["success"][c] for c in lengths} for name, r in results.items()},
                           out / "success_vs_length.png",
                           f"T-Maze, mixed-quality data, trained on corridors <= {args.max_corridor}",
                           train_max=args.max_corridor, dashed=[n for n in results if n.startswith("bc-")])
    print(f"wrote {out / 'results.csv'}, {out / 'success_vs_length.png'} and checkpoints {', '.join(f'{k}.pt' for k in results)}")


def main() -> None:
    args = parse_dataclass(Args, __doc__.split("\n\n")[0], check=check_args)
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed_cli(args.batch)  # one process, or one of torchrun's ranks (README: "Scaling out")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = start_wandb(args.wandb if ctx.is_main else "disabled", project="torchrl_elmur", run_dir=out,
                      config=asdict(args) | {"world_size": ctx.world_size}, name="offline_iql")
    data = make_data(args, verbose=ctx.is_main)  # in memory and seeded: every rank builds the same
    runs = COMPARE if args.compare else ((args.method, args.policy),)
    results = {}
    for method, kind in runs:
        if ctx.is_main:
            print(f"== {method}-{kind}" + (f" ({ctx.world_size} ranks x {rows_per_rank(args.batch, ctx)} rows)"
                                           if ctx.distributed else ""))
        results[f"{method}-{kind}"] = run_one(method, kind, data, args, run, out, ctx)
    if ctx.is_main:
        report(results, args, out)
        run.finish()
        print(json.dumps({k: {"success": r["success"], "train_seconds": r["train_seconds"]} for k, r in results.items()}))
    shutdown(ctx)


if __name__ == "__main__":
    with cli_errors(ResumeMismatch):  # --resume with other flags: one line, exit 2
        main()
