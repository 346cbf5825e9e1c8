"""T-Maze horizon: success of ELMUR, LSTM and GRU on corridors up to 10^6 steps.

All three are trained by the BC tutorial's recipe (``torchrl_elmur.training.tmaze_bc``, what
``tutorials/offline_bc.py`` runs) on oracle episodes
of at most 30 steps, or loaded from its checkpoints, then each is evaluated on corridor lengths
10 .. 10^6 with the batched T-Maze env and the streaming (step-mode) policy through TorchRL:
``--eval-episodes`` episodes per length, both goal sides equally often.

A policy that is at chance (success <= 0.6, ``torchrl_elmur.training.tmaze_eval.CHANCE``) at two
consecutive lengths is not evaluated at longer ones (a memory that lost the cue at length L cannot
recover it at 10 L); those cells say ``skipped``. ``--no-skip`` evaluates everything.

Every finished row (policy, corridor) is recorded at once in ``<out>/tmaze_horizon.rows.jsonl``
(flushed to disk; keyed by the policy, its weights: the checkpoint's hash or the training recipe,
and the episode count): a run that dies loses at most the row in progress, and a rerun of the same
command evaluates only what is missing (``--restart``: everything again).

    python benchmarks/tmaze_horizon.py --quick              # lengths up to 10^4, a few minutes
    python benchmarks/tmaze_horizon.py                      # up to 10^6
    python benchmarks/tmaze_horizon.py --device cuda
    python benchmarks/tmaze_horizon.py --no-compile         # ELMUR evaluated eager (compiled by default:
                                                            # ~20 s once, then ~20% less per step on a CPU)

Writes ``<out>/tmaze_horizon.csv``, ``.md`` and ``.png``; prints the wall time of each evaluation
and ends with one JSON line.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from torchrl_elmur.training.benchmarking import RowLog, format_table, machine, write_csv

from torchrl_elmur import compile_steps
from torchrl_elmur.training import episodes_error, evaluate_lengths, plot_success_vs_length
from torchrl_elmur.training.tmaze_eval import CHANCE, SOLVED
from torchrl_elmur.data import EVAL_SEED
from torchrl_elmur.training.checkpoint import load_into
from torchrl_elmur.training.cli import parse_dataclass
from torchrl_elmur.training.tmaze_bc import TMazeBC, make_tmaze_actor, train_tmaze_bc

FULL = [10, 30, 100, 1000, 10_000, 100_000, 1_000_000]
QUICK = [10, 30, 100, 1000, 10_000]


@dataclass
class Args:
    policies: list[Literal["elmur", "lstm", "gru"]] = field(default_factory=lambda: ["elmur", "lstm", "gru"])
    lengths: list[int] | None = None  # corridor lengths (None: 10 .. 10^6, or 10 .. 10^4 with --quick)
    quick: bool = False  # corridor lengths 10 .. 10^4
    eval_episodes: int = 100  # per length, half with each goal side (even)
    checkpoints: str = "outputs/offline_bc"  # folder with the BC tutorial's <policy>.pt (trained here when absent)
    train_steps: int = TMazeBC.steps  # gradient steps when no checkpoint
    skip: bool = True  # skip longer corridors once a policy is at chance at two lengths
    device: str = "cpu"
    compile: bool = True  # ELMURModule.compile_step() for the evaluation (CPU: token path, GPU: CUDA graphs); --no-compile: eager
    threads: int = 1  # torch threads (0: torch's default); one: per-step latency bound work, robust on a shared machine
    seed: int = 0
    out: str = "outputs/benchmarks"
    restart: bool = False  # forget the rows an earlier run recorded (<out>/tmaze_horizon.rows.jsonl); by default a rerun skips them

    @property
    def corridor_lengths(self) -> list[int]:
        return self.lengths or (QUICK if self.quick else FULL)


def check_args(args: Args) -> str | None:
    error = episodes_error({"--eval-episodes": args.eval_episodes})
    if error:
        return error
    bad = [n for n in args.corridor_lengths if n < 1]
    if bad:
        return f"--lengths: expected corridor lengths >= 1, received {bad}"
    return None


def load_or_train(kind: str, args: Args):
    """The tutorial's actor for ``kind``, from its checkpoint if there is one, else trained here."""
    recipe = TMazeBC(steps=args.train_steps, seed=args.seed)
    torch.manual_seed(args.seed)  # as the tutorial's run_policy: the same initial weights, so the same model
    actor = make_tmaze_actor(kind, recipe)
    path = Path(args.checkpoints) / f"{kind}.pt"
    if path.exists():
        load_into(path, actor)  # refuses a checkpoint of another recipe, naming what differs
        print(f"{kind}: loaded {path}")
        return actor, None
    history = train_tmaze_bc(actor, recipe, name=kind)  # the tutorial's training, checkpoint selection included
    print(f"{kind}: trained {args.train_steps} steps in {history.train_seconds:.0f} s"
          + (f", kept step {history.selected_step}" if history.selected_step is not None else ""))
    return actor, history.train_seconds


def model_id(kind: str, args: Args) -> str:
    """What decides a policy's weights: its checkpoint's contents, or the recipe that trains it here."""
    path = Path(args.checkpoints) / f"{kind}.pt"
    if path.exists():
        return "checkpoint:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"trained:steps={args.train_steps}:seed={args.seed}"


def main() -> None:
    args = parse_dataclass(Args, __doc__, check=check_args)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    # every finished row is recorded at once: a rerun after a crash evaluates only what is missing
    log = RowLog(Path(args.out) / "tmaze_horizon.rows.jsonl", key=("policy", "model", "eval_episodes", "corridor_length"),
                 fresh=args.restart)
    rows = []
    for kind in args.policies:
        ident = {"policy": kind, "model": model_id(kind, args), "eval_episodes": args.eval_episodes}
        done = {n: log.get(**ident, corridor_length=n) for n in args.corridor_lengths}
        if all(done.values()):
            print(f"{kind}: every length recorded in {log.path} (--restart evaluates again)")
            rows += [done[n] for n in args.corridor_lengths]
            continue
        actor, train_s = load_or_train(kind, args)
        actor = actor.to(args.device).eval()
        if args.compile:  # "auto": CUDA graphs on a GPU, the compiled token path and segment write on a CPU
            compile_steps(actor)
        at_chance = 0  # consecutive lengths at chance: a memory that lost the cue at L does not find it at 10 L
        for length in args.corridor_lengths:
            row = done[length]
            if row is None:
                row = {**ident, "corridor_length": length, "train_seconds": train_s, "status": "skipped"}
                if not (args.skip and at_chance >= 2):
                    success, seconds = evaluate_lengths(actor, [length], args.eval_episodes, seed=EVAL_SEED, name=kind,
                                                        device=args.device)
                    row.update(success=success[str(length)], eval_seconds=seconds[str(length)], status="ok")
                    log.add(row)  # finished rows only: a skipped length is evaluated by a later --no-skip run
            else:
                print(f"  {kind:>10} corridor {length:>9,}: recorded earlier ({log.path.name})")
            if row["status"] == "ok":  # a skipped row keeps the count: every longer length is skipped too
                at_chance = at_chance + 1 if row["success"] <= CHANCE else 0
            rows.append(row)

    out = Path(args.out)
    cols = [("policy", "policy", "s"), ("corridor_length", "corridor", ",d"), ("success", "success", ".2f"),
            ("eval_seconds", "eval s", ".1f"), ("status", "status", "s")]
    title = (f"T-Maze horizon: trained on corridors <= {TMazeBC.max_corridor}, {args.eval_episodes} episodes "
             f"per length, {machine(args.device)}")
    print(f"\n{title}\n{format_table(rows, cols)}")
    lost = {k: [r["corridor_length"] for r in rows if r["policy"] == k and r.get("success", 0.0) < SOLVED]
            for k in args.policies}
    for kind, lengths in lost.items():
        print(f"  {kind}: " + (f"below {SOLVED} from corridor {lengths[0]:,} on" if lengths else f"{SOLVED} or better at every length"))
    write_csv(rows, out / "tmaze_horizon.csv")
    (out / "tmaze_horizon.md").write_text(f"### {title}\n\n{format_table(rows, cols, markdown=True)}\n")
    curves = {k: {r["corridor_length"]: r["success"] for r in rows if r["policy"] == k and "success" in r}
              for k in args.policies}
    plot_success_vs_length(curves, out / "tmaze_horizon.png", "T-Maze: trained on <= 30-step episodes",
                           train_max=TMazeBC.max_corridor)
    print(f"wrote {out}/tmaze_horizon.csv, .md, .png ({time.perf_counter() - t0:.0f} s in all)")
    summary = {k: {str(r["corridor_length"]): r.get("success") for r in rows if r["policy"] == k} for k in args.policies}
    print(json.dumps({"benchmark": "tmaze_horizon", "device": args.device, "compiled": args.compile,
                      "machine": machine(args.device),
                      "success": summary, "total_seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
