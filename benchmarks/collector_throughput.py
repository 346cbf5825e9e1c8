"""Collector throughput and recurrent-state size: ELMURModule vs GRUModule vs LSTMModule.

In one run, on one machine, the same env and the same policy shape (memory module -> linear head
-> greedy one-hot action), only the memory module differs:
  * frames/s of a ``torchrl.collectors.Collector`` rollout (policy in eval mode, no grad);
  * bytes of recurrent state stored per transition (state + ("next", state), from the primers).
Two sizes: the T-Maze configuration (D=128, L=2, K=10, M=2) and a MIKASA RememberColor-sized one
(D=128, L=4, H=16, K=20, M=256); GRU/LSTM get the same width and number of layers.

    python benchmarks/collector_throughput.py                  # CartPole-v1, 1 env
    python benchmarks/collector_throughput.py --num-envs 8     # a SerialEnv of 8

Prints a table, writes ``<out>/collector_throughput.csv`` and ends with one JSON line.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import GymEnv, SerialEnv

from torchrl_elmur.training.benchmarking import format_table, state_bytes_per_env, write_csv

from torchrl_elmur import ELMURConfig
from torchrl_elmur.training.cli import parse_dataclass
from torchrl_elmur.training.policies import make_memory


@dataclass
class Args:
    env: str = "CartPole-v1"  # a gymnasium id with a Box observation and a Discrete action
    num_envs: int = 1  # envs per collector (SerialEnv when > 1)
    frames_per_batch: int = 256
    batches: int = 4  # timed batches (after one warm-up batch)
    out: str = "outputs/benchmarks"
    seed: int = 0
    threads: int = 1  # torch threads; with 2 on a 2-core box, small ops in a Collector slow down ~10x


def check(args: Args) -> str | None:
    import gymnasium

    try:
        gymnasium.spec(args.env)
    except gymnasium.error.Error as err:
        return f"--env: expected a registered gymnasium id, received {args.env!r} ({err})"
    return None


def parse_args() -> Args:
    return parse_dataclass(Args, __doc__.splitlines()[0], check=check)


SIZES = {
    "tmaze": ELMURConfig.tmaze(dropout=0.0, attn_dropout=0.0),
    "mikasa": ELMURConfig.mikasa_remember_color(),
}


def memory_for(kind: str, size: str, obs_dim: int) -> nn.Module:
    """``kind``'s memory on the observation: "elmur" (state_layout="tokens", the default), "elmur-cache"
    ("cache"), "gru" / "lstm" of ELMUR's width and depth."""
    cfg = SIZES[size].replace(input_size=obs_dim)
    return make_memory(kind.split("-")[0], cfg.d_model, cfg, input_size=obs_dim, num_layers=cfg.num_layers,
                       in_key="observation", out_key="embed", state_layout="cache" if kind == "elmur-cache" else "tokens")


class GreedyOneHot(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.int64)



def measure(kind: str, size: str, args: Args) -> dict:
    torch.manual_seed(args.seed)
    make_env = (lambda: GymEnv(args.env)) if args.num_envs == 1 else (lambda: SerialEnv(args.num_envs, lambda: GymEnv(args.env)))
    probe = GymEnv(args.env)
    obs_dim, n_act = probe.observation_spec["observation"].shape[-1], probe.action_spec.shape[-1]
    probe.close()
    memory = memory_for(kind, size, obs_dim)
    policy = TensorDictSequential(
        memory,
        TensorDictModule(nn.Linear(SIZES[size].d_model, n_act), in_keys=["embed"], out_keys=["logits"]),
        TensorDictModule(GreedyOneHot(), in_keys=["logits"], out_keys=["action"]),
    ).eval()
    collector = Collector(make_env, policy, frames_per_batch=args.frames_per_batch,
                          total_frames=args.frames_per_batch * (args.batches + 1), auto_register_policy_transforms=True)
    with torch.no_grad():
        it = iter(collector)
        next(it)  # warm-up batch
        t0 = time.perf_counter()
        frames = sum(batch.numel() for batch in it)
        seconds = time.perf_counter() - t0
    collector.shutdown()
    return {"size": size, "policy": kind, "frames_per_s": frames / seconds, "state_bytes_per_transition": 2 * state_bytes_per_env(memory),  # state + ("next", state)
           
            "params": sum(p.numel() for p in memory.parameters())}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(kind, size, args) for size in SIZES for kind in ("elmur", "elmur-cache", "gru", "lstm")]
    print(f"\nCollector throughput on {args.env} x{args.num_envs}, {args.frames_per_batch * args.batches} timed frames, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for r in rows:
        gru = next(g for g in rows if g["size"] == r["size"] and g["policy"] == "gru")
        r["speed_vs_gru"] = r["frames_per_s"] / gru["frames_per_s"]
        r["state_vs_gru"] = r["state_bytes_per_transition"] / gru["state_bytes_per_transition"]
    print(format_table(rows, [("size", "size", "s"), ("policy", "policy", "s"), ("frames_per_s", "frames/s", ".0f"),
                              ("speed_vs_gru", "vs GRU", ".2f"), ("state_bytes_per_transition", "state B/transition", ",d"),
                              ("state_vs_gru", "vs GRU", ".1f"), ("params", "params", ",d")]))
    out = Path(args.out)
    write_csv(rows, out / "collector_throughput.csv")
    print(f"wrote {out / 'collector_throughput.csv'}")
    print(json.dumps({"benchmark": "collector_throughput", "env": args.env, "num_envs": args.num_envs, "rows": rows}))


if __name__ == "__main__":
    main()
