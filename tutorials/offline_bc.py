"""Offline behaviour cloning on the passive T-Maze: ELMUR vs TorchRL's LSTM and GRU.

The agent sees a hint (goal up or down) only at the first step, walks a corridor, and must turn
to the hinted side at the junction. We clone an oracle from episodes of at most 30 steps
(corridors 1..28) and evaluate on corridors up to 10,000 steps: far beyond anything seen in
training, and 1,000x ELMUR's 10-step attention window.

ELMUR runs the published T-Maze configuration (../shared/ELMUR.md section 5): 2 slots per layer,
lambda = 0.79, so every segment blends its write into the least recently used slot (a memory
that keeps updating), memory detached at segment boundaries, with the released code's init,
output biases, dropout sites and mixture-of-experts FFN (`tmaze_elmur_config` says why they matter).

The script reads top to bottom:
  1. Args         : every knob, declared once (`--help` lists them with their defaults); the
                    recipe's own (data, model, training) in the package's TMazeBC
  2. the policy   : encoder -> memory module (ELMURModule | LSTMModule | GRUModule) -> logits
                    -> ProbabilisticActor; `--policy` swaps only the memory module
                    (torchrl_elmur.training.tmaze_bc.make_tmaze_actor)
  3. the data     : oracle episodes in a TorchRL replay buffer, sampled as [B, T] batches
  4. training     : a cross-entropy BC loss (a TorchRL LossModule), AdamW, grad clipping
                    (torchrl_elmur.training.tmaze_bc.train_tmaze_bc)
  5. evaluation   : the batched T-Maze env, the policy streaming one step at a time
  6. report       : table, CSV, PNG plot, checkpoints, wandb (offline), one JSON line

    python tutorials/offline_bc.py                       # ELMUR (README: time and results)
    python tutorials/offline_bc.py --compare             # ELMUR, LSTM and GRU, one table
    python tutorials/offline_bc.py --no-released-options # the bare published config (fails beyond ~300 steps)
    python tutorials/offline_bc.py --policy lstm --eval-lengths 30 100 1000 10000 100000
    python tutorials/offline_bc.py --resume              # a run that died: continue from outputs/offline_bc/<policy>.train.pt
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from torchrl_elmur.data import EVAL_SEED
from torchrl_elmur.training import episodes_error, evaluate_lengths, plot_success_vs_length, start_wandb
from torchrl_elmur.training.checkpoint import ResumeMismatch, save_policy
from torchrl_elmur.training.cli import cli_errors, init_distributed_cli, parse_dataclass, value_error
from torchrl_elmur.training.distributed import DistributedContext, rows_per_rank, shutdown
from torchrl_elmur.training.tmaze_bc import TMazeBC, make_tmaze_actor, tmaze_elmur_config, train_tmaze_bc
from torchrl_elmur.training.tmaze_eval import SOLVED

POLICIES = ("elmur", "lstm", "gru")


# ----------------------------------------------------------------------------------------------
# 1. Args: each option once, with its help; `--help` lists them. The recipe's own settings (data,
#    model, training: --episodes, --width, --steps, --lr, ...) are declared once, in the package's
#    TMazeBC (torchrl_elmur/training/tmaze_bc.py), which the benchmarks that train by this recipe
#    share; Args adds what a run of the tutorial needs.
# ----------------------------------------------------------------------------------------------
@dataclass
class Args(TMazeBC):
    policy: Literal["elmur", "lstm", "gru"] = "elmur"  # memory module to train
    compare: bool = False  # train and evaluate elmur, lstm and gru; one table
    # evaluation
    eval_lengths: list[int] = field(default_factory=lambda: [30, 100, 1000, 10000])  # corridor lengths
    eval_episodes: int = 100  # per length, half with each goal side (even)
    # bookkeeping
    out: str = "outputs/offline_bc"  # output folder (table, CSV, PNG, checkpoints, wandb)
    resume: bool = False  # continue each policy's training from its state in --out (<policy>.train.pt), as if never stopped
    wandb: Literal["offline", "online", "disabled"] = "offline"
    threads: int = 0  # torch threads (0: torch's default)


def check_args(args: Args) -> str | None:
    return episodes_error({"--eval-episodes": args.eval_episodes, "--select-episodes": args.select_episodes}) or value_error(
        "ELMUR configuration from --width/--segment-len/--memory-slots/--lru-blend",  # e.g. a --width the heads do not divide
        lambda: tmaze_elmur_config(args))


# ----------------------------------------------------------------------------------------------
# 2-4. The policy, the data and training (torchrl_elmur.training.tmaze_bc):
#   make_tmaze_actor: observation -> Linear + GELU -> memory (ELMURModule | LSTMModule | GRUModule)
#                     -> logits -> Categorical (greedy at evaluation); --policy swaps only the memory.
#                     ELMUR: the published T-Maze configuration with the released code's options
#                     (tmaze_elmur_config says why they matter).
#   train_tmaze_bc:   oracle episodes in a TorchRL replay buffer sampled as [B, T] rows from episode
#                     starts, a cross-entropy BC loss (a TorchRL LossModule), AdamW, grad clipping,
#                     and the weights kept by validation success at --select-corridor.
# 5-6. Evaluation, run and report. Evaluation streams the greedy policy through the batched env,
#    one TorchRL step at a time (torchrl_elmur.training.evaluate_lengths -> tmaze_success_rate:
#    reset, then policy -> env.step -> step_mdp, corridor_length + 2 times), on the evaluation
#    seeds (EVAL_SEED on), which no training or validation episode uses.
# ----------------------------------------------------------------------------------------------
def run_policy(kind: str, args: Args, run, out: Path, ctx: DistributedContext) -> dict | None:
    torch.manual_seed(args.seed)
    actor = make_tmaze_actor(kind, args)
    # the training state goes to <out>/<policy>.train.pt every --checkpoint-every steps: --resume continues from it
    history = train_tmaze_bc(actor, args, name=kind, run=run, ctx=ctx, checkpoint=out / f"{kind}.train.pt",
                             resume=args.resume)
    if not ctx.is_main:  # rank 0 evaluates and saves
        return None
    probes = [{"step": p["step"], "success": p["result"]["success"]} for p in history.probes]
    if history.selected_step is not None:
        print(f"  {kind}: kept the weights of step {history.selected_step} (validation success "
              f"{max(p['success'] for p in probes):.2f} at corridor {args.select_corridor})")
    save_policy(out / f"{kind}.pt", actor)  # rebuilt in a fresh process by load_policy(path)
    success, eval_seconds = evaluate_lengths(actor, args.eval_lengths, args.eval_episodes, seed=EVAL_SEED,
                                             name=kind, run=run)
    params = sum(p.numel() for p in actor.parameters())
    return {"success": success, "train_seconds": history.train_seconds, "eval_seconds": eval_seconds, "params": params,
            "selected_step": history.selected_step, "probes": probes,
            "good_probe": history.first_time("success", SOLVED) is not None if probes else None}


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
    for kind, r in results.items():
        if r["good_probe"] is False:
            history = ", ".join(f"{p['success']:.2f}" for p in r["probes"])
            print(f"\nWARNING: {kind}: no validation probe reached {SOLVED:.2f} at corridor {args.select_corridor} "
                  f"(probes every {args.select_every} steps: {history}). The kept weights did not generalise in "
                  "validation, so the table above is not the tutorial's claim; run again with another --seed or "
                  "more --steps.")


def main() -> None:
    args = parse_dataclass(Args, __doc__.split("\n\n")[0], check=check_args)
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed_cli(args.batch)  # one process, or one of torchrun's ranks (README: "Scaling out")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = start_wandb(args.wandb if ctx.is_main else "disabled", project="torchrl_elmur", run_dir=out,
                      config=asdict(args) | {"world_size": ctx.world_size}, name="offline_bc")
    kinds = POLICIES if args.compare else (args.policy,)
    results = {}
    for kind in kinds:
        if ctx.is_main:
            print(f"== {kind}" + (f" ({ctx.world_size} ranks x {rows_per_rank(args.batch, ctx)} rows)" if ctx.distributed else ""))
        results[kind] = run_policy(kind, args, run, out, ctx)
    if ctx.is_main:
        report(results, args, out)
        run.finish()
        print(json.dumps({k: {"success": r["success"], "train_seconds": r["train_seconds"], "selected_step": r["selected_step"],
                              "probes": r["probes"], "good_probe": r["good_probe"]} for k, r in results.items()}))
    shutdown(ctx)


if __name__ == "__main__":
    with cli_errors(ResumeMismatch):  # --resume with other flags: one line, exit 2
        main()
