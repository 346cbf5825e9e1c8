"""Offline behaviour cloning on the passive T-Maze: ELMUR vs TorchRL's LSTM and GRU.

The agent sees a hint (goal up or down) only at the first step, walks a corridor, and must turn
to the hinted side at the junction. We clone an oracle from episodes of at most 30 steps
(corridors 1..28) and evaluate on corridors up to 10,000 steps: far beyond anything seen in
training, and 1,000x ELMUR's 10-step attention window.

The script reads top to bottom:
  1. Args         : every knob, with the published T-Maze defaults (../shared/ELMUR.md section 5)
  2. the policy   : encoder -> memory module (ELMURModule | LSTMModule | GRUModule) -> logits
                    -> ProbabilisticActor; `--policy` swaps only the memory module
  3. the data     : oracle episodes in a TorchRL replay buffer, sampled as [B, T] batches
  4. training     : a cross-entropy BC loss (a TorchRL LossModule), AdamW, grad clipping
  5. evaluation   : the batched T-Maze env, the policy streaming one step at a time
  6. report       : table, CSV, PNG plot, checkpoints, wandb (offline), one JSON line

    python tutorials/offline_bc.py                       # ELMUR, about 5 minutes on a laptop CPU
    python tutorials/offline_bc.py --compare             # ELMUR, LSTM and GRU, one table
    python tutorials/offline_bc.py --policy lstm --eval-lengths 30 100 1000 10000 100000
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tensordict.nn import InteractionType, TensorDictModule, TensorDictSequential
from torch import nn
from torch.distributions import Categorical
from torchrl.modules import GRUModule, LSTMModule, ProbabilisticActor
from tqdm import trange

from torchrl_elmur import ELMURConfig, ELMURModule
from torchrl_elmur.data import make_offline_replay_buffer, make_tmaze_dataset
from torchrl_elmur.envs.tmaze_rules import NUM_ACTIONS, OBS_DIM
from torchrl_elmur.objectives import SequenceCrossEntropyLoss
from torchrl_elmur.training import evaluate_lengths, plot_success_vs_length, start_wandb

POLICIES = ("elmur", "lstm", "gru")


# ----------------------------------------------------------------------------------------------
# 1. Args
# ----------------------------------------------------------------------------------------------
@dataclass
class Args:
    policy: str = "elmur"  # memory module: elmur | lstm | gru
    compare: bool = False  # train and evaluate all three, one table
    # data
    episodes: int = 2000  # oracle training episodes
    max_corridor: int = 28  # corridors uniform in 1..max_corridor (episodes of at most 30 steps)
    # model
    hidden: int = 128  # width of the encoder, the memory module and its output
    segment_len: int = 10  # ELMUR K: attention window of 10 steps
    memory_slots: int = 2  # ELMUR M
    lru_blend: float = 0.0  # ELMUR lambda (published: 0.79; see make_memory for why 0 here)
    detach_memory: bool = False  # ELMUR: stop gradients at segment boundaries (published: True)
    # training
    steps: int = 300  # gradient steps
    batch: int = 64  # trajectories per batch
    seq_len: int = 30  # steps per trajectory (3 ELMUR segments)
    lr: float = 1e-3  # one rate for all three; at 3e-4, GRU and LSTM do not learn the cue in 300 steps
    label_smoothing: float = 0.16
    grad_clip: float = 5.0
    # evaluation
    eval_lengths: list[int] = field(default_factory=lambda: [30, 100, 1000, 10000])  # corridor lengths
    eval_episodes: int = 100  # per length, half with each goal side
    # bookkeeping
    seed: int = 0
    out: str = "outputs/offline_bc"
    wandb: str = "offline"  # offline | online | disabled
    threads: int = 0  # torch threads (0: torch's default)


def parse_args() -> Args:
    d = Args()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", choices=POLICIES, default=d.policy, help="memory module to train")
    p.add_argument("--compare", action="store_true", help="run elmur, lstm and gru and print one table")
    p.add_argument("--episodes", type=int, default=d.episodes, help="oracle training episodes")
    p.add_argument("--max-corridor", type=int, default=d.max_corridor, help="longest training corridor")
    p.add_argument("--hidden", type=int, default=d.hidden, help="model width")
    p.add_argument("--segment-len", type=int, default=d.segment_len, help="ELMUR segment length K")
    p.add_argument("--memory-slots", type=int, default=d.memory_slots, help="ELMUR memory slots M")
    p.add_argument("--lru-blend", type=float, default=d.lru_blend, help="ELMUR LRU blend lambda (published: 0.79)")
    p.add_argument("--detach-memory", action="store_true", help="ELMUR: no gradient through memory across segments")
    p.add_argument("--steps", type=int, default=d.steps, help="gradient steps")
    p.add_argument("--batch", type=int, default=d.batch, help="trajectories per batch")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="steps per trajectory in a batch")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--eval-lengths", type=int, nargs="+", default=d.eval_lengths, help="corridor lengths to evaluate")
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes, help="episodes per corridor length (even)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, help="output folder (table, CSV, PNG, checkpoints, wandb)")
    p.add_argument("--wandb", choices=("offline", "online", "disabled"), default=d.wandb)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0: default)")
    args = Args(**{k.replace("-", "_"): v for k, v in vars(p.parse_args()).items()})
    if args.eval_episodes < 2 or args.eval_episodes % 2:
        p.error(f"--eval-episodes must be even and >= 2 (both goal sides equally often), received {args.eval_episodes}")
    return args


# ----------------------------------------------------------------------------------------------
# 2. The policy: encoder -> memory -> logits -> Categorical. Only the memory module differs.
# ----------------------------------------------------------------------------------------------
def make_memory(kind: str, args: Args) -> nn.Module:
    keys = dict(in_key="embed", out_key="memory")
    if kind == "elmur":
        # The published T-Maze configuration with two changes, both flags:
        # - detach_memory=False: gradients flow through memory across the 3 segments of a training
        #   window, so the write is trained by the decision it serves.
        # - lru_blend=0 instead of 0.79: training episodes span at most 3 segments, and with M=2
        #   slots both writes before the decision go into empty slots (alpha = 1), so the blend is
        #   never exercised in training. At evaluation it would be applied from the 3rd segment on,
        #   to an operation the model never saw (measured with 0.79: success 1.00 / 0.99 / 0.50 at
        #   corridors 30 / 100 / 300). With lambda = 0 a full slot keeps its vector and only its
        #   timestamp is refreshed, exactly the regime seen in training.
        config = ELMURConfig.tmaze(input_size=args.hidden, d_model=args.hidden, segment_len=args.segment_len,
                                   memory_slots=args.memory_slots, lru_blend=args.lru_blend,
                                   detach_memory=args.detach_memory)
        return ELMURModule(config=config, **keys)
    cls = {"lstm": LSTMModule, "gru": GRUModule}[kind]
    return cls(input_size=args.hidden, hidden_size=args.hidden, **keys)  # TorchRL's own modules


def make_actor(kind: str, args: Args) -> ProbabilisticActor:
    encoder = TensorDictModule(nn.Sequential(nn.Linear(OBS_DIM, args.hidden), nn.GELU()), ["observation"], ["embed"])
    head = TensorDictModule(nn.Linear(args.hidden, NUM_ACTIONS), ["memory"], ["logits"])
    return ProbabilisticActor(
        TensorDictSequential(encoder, make_memory(kind, args), head),
        in_keys=["logits"], out_keys=["action"], distribution_class=Categorical,
        default_interaction_type=InteractionType.DETERMINISTIC,  # greedy action at evaluation
    )


# ----------------------------------------------------------------------------------------------
# 3-4. Data and training
# ----------------------------------------------------------------------------------------------
def train(actor: ProbabilisticActor, args: Args, run, kind: str) -> float:
    data = make_tmaze_dataset(args.episodes, max_corridor=args.max_corridor, seed=args.seed)
    buffer = make_offline_replay_buffer(data, args.batch, args.seq_len, seed=args.seed)
    loss_module = SequenceCrossEntropyLoss(actor, label_smoothing=args.label_smoothing)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=args.lr)
    actor.train()
    start = time.perf_counter()
    bar = trange(args.steps, desc=f"train {kind}", dynamic_ncols=True)
    for step in bar:
        batch = buffer.sample().reshape(args.batch, args.seq_len)  # [B, T], each row from an episode start
        losses = loss_module(batch)  # runs the actor in recurrent mode
        optimizer.zero_grad()
        losses["loss_bc"].backward()
        grad_norm = nn.utils.clip_grad_norm_(actor.parameters(), args.grad_clip)
        optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            bar.set_postfix(loss=f"{losses['loss_bc'].item():.3f}", acc=f"{losses['accuracy'].item():.3f}")
            run.log({f"{kind}/loss_bc": losses["loss_bc"].item(), f"{kind}/accuracy": losses["accuracy"].item(),
                     f"{kind}/grad_norm": grad_norm.item(), f"{kind}/step": step})
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# 5-6. Evaluation, run and report. Evaluation streams the greedy policy through the batched env,
#    one TorchRL step at a time (torchrl_elmur.training.evaluate_lengths -> tmaze_success_rate:
#    reset, then policy -> env.step -> step_mdp, corridor_length + 2 times).
# ----------------------------------------------------------------------------------------------
def run_policy(kind: str, args: Args, run, out: Path) -> dict:
    torch.manual_seed(args.seed)
    actor = make_actor(kind, args)
    train_seconds = train(actor, args, run, kind)
    torch.save(actor.state_dict(), out / f"{kind}.pt")
    success, eval_seconds = evaluate_lengths(actor, args.eval_lengths, args.eval_episodes, seed=args.seed + 10_000,
                                             name=kind, run=run)
    params = sum(p.numel() for p in actor.parameters())
    return {"success": success, "train_seconds": train_seconds, "eval_seconds": eval_seconds, "params": params}


def report(results: dict, args: Args, out: Path) -> None:
    lengths = [str(c) for c in args.eval_lengths]
    header = f"{'policy':>7} {'params':>9} {'train s':>8} " + " ".join(f"{'c=' + c:>9}" for c in lengths)
    print("\nSuccess rate (trained on corridors <= %d, %d eval episodes per length)" % (args.max_corridor, args.eval_episodes))
    print(header)
    print("-" * len(header))
    for kind, r in results.items():
        print(f"{kind:>7} {r['params']:>9,} {r['train_seconds']:>8.0f} " + " ".join(f"{r['success'][c]:>9.2f}" for c in lengths))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["policy", "corridor_length", "success", "train_seconds", "eval_seconds"])
        for kind, r in results.items():
            for c in lengths:
                writer.writerow([kind, c, r["success"][c], f"{r['train_seconds']:.1f}", f"{r['eval_seconds'][c]:.1f}"])
    plot_success_vs_length({kind: {int(c): r["success"][c] for c in lengths} for kind, r in results.items()},
                           out / "success_vs_length.png", f"T-Maze, trained on corridors <= {args.max_corridor}",
                           train_max=args.max_corridor)
    print(f"wrote {out / 'results.csv'}, {out / 'success_vs_length.png'} and checkpoints {', '.join(f'{k}.pt' for k in results)}")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = start_wandb(args.wandb, project="torchrl_elmur", run_dir=out, config=asdict(args), name="offline_bc")
    kinds = POLICIES if args.compare else (args.policy,)
    results = {}
    for kind in kinds:
        print(f"== {kind}")
        results[kind] = run_policy(kind, args, run, out)
    report(results, args, out)
    run.finish()
    print(json.dumps({k: {"success": r["success"], "train_seconds": r["train_seconds"]} for k, r in results.items()}))


if __name__ == "__main__":
    main()
