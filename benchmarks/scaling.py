"""Scale-out on the engines users have: DDP training under torchrun, TorchRL's DistributedCollector.

Two measurements per memory module (ELMUR, GRU), each with 1 and with N processes:

  * training tokens/s: behaviour cloning on T-Maze data by ``train_bc`` under
    ``torchrun --nproc_per_node=P`` (gloo on CPU), the same global batch ``[B, T]`` split over the
    P ranks (DDP); tokens/s = steps x B x T / the slowest rank's training seconds;
  * collection frames/s: the online PPO tutorial's policy (actor + critic) collecting POPGym
    RepeatFirstEasy with TorchRL's DistributedCollector (``sync=True``, workers launched as local
    processes, gloo over TCP), 1 and W workers of ``--envs-per-worker`` envs each.

Speed-ups are ratios to the 1-process row of the same run. On this project's 2-core CPU the
learner, the workers and torchrun's agent share two cores, so 2 processes cannot reach 2x there.

    python benchmarks/scaling.py                          # 1 and 2 processes
    python benchmarks/scaling.py --procs 1 2 4 --steps 40  # a bigger machine

Prints a table, writes ``<out>/scaling.{csv,md}`` and ends with one JSON line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from torchrl_elmur.training.benchmarking import machine, write_report

from torchrl_elmur import ELMURConfig
from torchrl_elmur.training.cli import parse_dataclass


@dataclass
class Args:
    procs: list[int] = field(default_factory=lambda: [1, 2])  # process counts (training ranks / collector workers)
    memories: list[str] = field(default_factory=lambda: ["elmur", "gru"])  # of elmur, gru
    steps: int = 20  # training: optimizer steps (after 2 warm-up steps)
    batch: int = 32  # training: global rows per step (divisible by every --procs)
    seq_len: int = 30  # training: steps per row (3 ELMUR segments at T-Maze size)
    batches: int = 4  # collection: batches timed (after one warm-up batch)
    envs_per_worker: int = 8  # collection
    rollout: int = 64  # collection: steps per env per batch
    out: str = "outputs/benchmarks"
    worker: str = ""  # internal: "train" when launched by torchrun
    result: str = ""  # internal: where a training worker writes its numbers


def check(args: Args) -> str | None:
    bad = [p for p in args.procs if p < 1 or args.batch % p]
    if bad:
        return f"--procs {bad}: every count must be >= 1 and divide --batch ({args.batch})"
    unknown = [m for m in args.memories if m not in ("elmur", "gru")]
    if unknown:
        return f"--memories: unknown {unknown}, expected some of ['elmur', 'gru']"
    return None


# ------------------------------------------------------------------ training under torchrun
def train_worker(args: Args, memory: str) -> None:
    """One torchrun rank: BC steps on T-Maze data, rank 0 writes tokens/s to ``args.result``."""
    from torchrl_elmur import ELMURConfig
    from torchrl_elmur.data import make_offline_replay_buffer, make_tmaze_dataset
    from torchrl_elmur.objectives import SequenceCrossEntropyLoss
    from torchrl_elmur.training import train_bc
    from torchrl_elmur.training.distributed import init_distributed, shutdown, wrap_ddp
    from torchrl_elmur.training.policies import make_bc_actor

    torch.set_num_threads(1)
    ctx = init_distributed()
    torch.manual_seed(0)
    config = ELMURConfig(input_size=128, d_model=128) if memory == "elmur" else None  # the default at the T-Maze width
    actor = make_bc_actor(memory, 4, num_actions=4, width=128, config=config)
    data = make_tmaze_dataset(500, max_corridor=28, seed=0)
    buffer = make_offline_replay_buffer(data, args.batch, args.seq_len, seed=0)
    loss = wrap_ddp(SequenceCrossEntropyLoss(actor), ctx)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=1e-3)
    common = dict(batch=args.batch, seq_len=args.seq_len, grad_clip=5.0, progress=False, ctx=ctx)
    train_bc(actor, loss, buffer, optimizer, steps=2, **common)  # warm-up
    history = train_bc(actor, loss, buffer, optimizer, steps=args.steps, **common)
    seconds = torch.tensor([history.train_seconds])
    if ctx.distributed:
        torch.distributed.all_reduce(seconds, op=torch.distributed.ReduceOp.MAX)
    if ctx.is_main:
        Path(args.result).write_text(json.dumps({"seconds": float(seconds), "world_size": ctx.world_size}))
    shutdown(ctx)


def training_row(args: Args, memory: str, procs: int) -> dict:
    result = Path(args.out) / f"scaling_train_{memory}_{procs}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", __file__,
           "--worker", "train", "--memories", memory, "--result", str(result), "--steps", str(args.steps),
           "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = Path(args.out) / f"scaling_train_{memory}_{procs}.log"
    with open(log, "w") as out:  # a file, not a pipe: with pipes the 2-rank runs hung on this machine
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"scaling: torchrun with {procs} processes failed (log: {log}):\n{log.read_text()[-3000:]}")
    log.unlink()
    seconds = json.loads(result.read_text())["seconds"]
    result.unlink()
    return {"what": "training tokens/s", "memory": memory, "procs": procs,
            "rate": args.steps * args.batch * args.seq_len / seconds}


# ------------------------------------------------------------------ collection with DistributedCollector
def collection_row(args: Args, memory: str, workers: int) -> dict:
    """The online PPO tutorial's actor + critic (its defaults: width 64, one trunk shared by actor and
    critic, ELMUR with ELMURConfig's default options, K=16, M=4, 4 heads) and TorchRL's
    DistributedCollector (``tutorials/online_ppo.py --collector distributed``)."""
    from torchrl_elmur.training.collectors import close_collector, make_popgym_collector
    from torchrl_elmur.training.policies import make_actor_critic, rollout_policy

    torch.set_num_threads(1)
    frames = workers * args.envs_per_worker * args.rollout
    torch.manual_seed(0)
    config = ELMURConfig(input_size=64, d_model=64, num_heads=4, segment_len=16, memory_slots=4)
    actor, critic = make_actor_critic(memory, 4, 4, width=64, config=config if memory == "elmur" else None,
                                      shared_trunk=True)
    collector = make_popgym_collector("RepeatFirstEasy", rollout_policy(actor, critic), num_workers=workers,
                                      envs_per_worker=args.envs_per_worker, rollout=args.rollout,
                                      frames=frames * (args.batches + 1), seed=0, kind="distributed")
    try:
        it = iter(collector)
        next(it)  # warm-up
        start = time.perf_counter()
        for _ in range(args.batches):
            next(it)
            collector.update_policy_weights_()
        seconds = time.perf_counter() - start
    finally:
        close_collector(collector)  # workers and weight-sync queues, on errors too
    return {"what": "collection frames/s", "memory": memory, "procs": workers, "rate": args.batches * frames / seconds}


def main() -> None:
    args = parse_dataclass(Args, __doc__.splitlines()[0], check=check)
    if args.worker == "train":
        return train_worker(args, args.memories[0])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    for memory in args.memories:
        for procs in args.procs:
            rows.append(training_row(args, memory, procs))
            print(f"  train   {memory:6s} {procs} process(es): {rows[-1]['rate']:,.0f} tokens/s", flush=True)
        for procs in args.procs:
            rows.append(collection_row(args, memory, procs))
            print(f"  collect {memory:6s} {procs} worker(s): {rows[-1]['rate']:,.0f} frames/s", flush=True)
    for row in rows:  # speed-up against the 1-process row of the same measurement and memory
        base = next((r["rate"] for r in rows if r["what"] == row["what"] and r["memory"] == row["memory"]
                     and r["procs"] == min(args.procs)), row["rate"])
        row["speedup"] = row["rate"] / base
    header = (f"Scale-out: training (torchrun + DDP, gloo, global batch [{args.batch}, {args.seq_len}], T-Maze size) and "
              f"collection (DistributedCollector, {args.envs_per_worker} envs per worker); {machine('cpu')}, "
              f"{os.cpu_count()} CPUs")
    cols = [("what", "measurement", "s"), ("memory", "memory", "s"), ("procs", "processes", "d"),
            ("rate", "per second", ",.0f"), ("speedup", f"x {min(args.procs)} process", ".2f")]
    write_report("scaling", header, rows, cols, args.out)
    print(json.dumps({"benchmark": "scaling", "rows": rows}))


if __name__ == "__main__":
    main()
