"""Replay-buffer bytes per stored transition: ELMURModule's two state layouts against LSTMModule and GRUModule.

The pipeline of TorchRL's recurrent DQN tutorial on state observations (CartPole-v1): a feature MLP
writes ``embed`` (width F), the memory module reads it (in_key = out_key = "embed"), an MLP and a
QValueModule act; a ``Collector`` gathers frames, a ``LazyMemmapStorage`` on disk stores them. Only
the memory module changes between rows. Per row, in one run on one machine:

  * bytes per stored transition: the storage's files on disk / its capacity (everything a
    transition holds: observation, embed, Q-values, action, flags, the state and ("next", state));
  * what a 10^6-transition buffer (the tutorial's ``LazyMemmapStorage(1_000_000)``) would take;
  * collection frames/s (eval mode, no grad; the state layouts differ in work per step);
  * exact replay: SliceSampler slices (starting anywhere, mid-segment included) run again in
    recurrent mode reproduce the collected Q-values (max abs difference).

The T-Maze size is the default: F = D = 128, ELMUR with L = 2, H = 2, K = 10, M = 2
(``ELMURConfig.tmaze``); LSTMs/GRUs of width 128 with 1 layer (the tutorial's LSTM) and 2 layers (ELMUR's
depth).

    python benchmarks/replay_bytes.py                    # T-Maze size, 2000 frames
    python benchmarks/replay_bytes.py --embed 64         # a narrower value: ELMUR's tokens shrink with F

Prints a table, writes ``<out>/replay_bytes.{csv,md,png}`` and ends with one JSON line.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torchrl.collectors import Collector
from torchrl.data import LazyMemmapStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs import GymEnv, InitTracker, StepCounter, TransformedEnv
from torchrl.modules import MLP, QValueModule, set_recurrent_mode

from torchrl_elmur.training.benchmarking import state_bytes_per_env, write_report

from torchrl_elmur import ELMURConfig
from torchrl_elmur.training.cli import parse_dataclass
from torchrl_elmur.training.policies import make_memory


@dataclass
class Args:
    frames: int = 2000  # collected and stored frames per memory module
    embed: int = 128  # width F of the value the memory reads (T-Maze size: 128)
    width: int = 128  # width D of every memory module
    slice_len: int = 20  # replay check: SliceSampler slices of this length
    out: str = "outputs/benchmarks"
    seed: int = 0
    threads: int = 1  # torch threads (1 for timing on a shared 2-core box)


ROWS = {  # memory module -> description
    "lstm-1": "LSTMModule, 1 layer (the DQN tutorial's)",
    "lstm-2": "LSTMModule, 2 layers",
    "gru-2": "GRUModule, 2 layers",
    "elmur-tokens": "ELMURModule, state_layout='tokens' (default)",
    "elmur-cache": "ELMURModule, state_layout='cache'",
}


def memory_for(name: str, args: Args):
    """``<kind>-<variant>``: ELMUR's state layout (``elmur-tokens``, ``elmur-cache``) or the RNN's layers (``gru-1``)."""
    kind, variant = name.split("-")
    elmur = kind == "elmur"
    config = ELMURConfig.tmaze(input_size=args.embed, d_model=args.width, dropout=0.0, attn_dropout=0.0,
                               memory_dropout=0.0) if elmur else None
    return make_memory(kind, args.width, config, input_size=args.embed, num_layers=1 if elmur else int(variant),
                       in_key="embed", out_key="embed", state_layout=variant if elmur else "tokens")


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(name: str, args: Args) -> dict:
    torch.manual_seed(args.seed)
    env = TransformedEnv(GymEnv("CartPole-v1"), StepCounter())
    env.append_transform(InitTracker())
    memory = memory_for(name, args)
    env.append_transform(memory.make_tensordict_primer())
    qnet = Seq(
        Mod(MLP(out_features=args.embed, num_cells=[64]), in_keys=["observation"], out_keys=["embed"]),
        memory,
        Mod(MLP(out_features=2, num_cells=[64]), in_keys=["embed"], out_keys=["action_value"]),
        QValueModule(spec=env.action_spec),
    ).eval()
    collector = Collector(env, qnet, frames_per_batch=args.frames, total_frames=args.frames)
    collector.set_seed(args.seed)
    with torch.no_grad():
        qnet(env.reset())  # warm-up
        t0 = time.perf_counter()
        data = next(iter(collector)).clone()
        seconds = time.perf_counter() - t0
    collector.shutdown()
    with tempfile.TemporaryDirectory() as scratch:
        storage = LazyMemmapStorage(args.frames, scratch_dir=scratch)
        rb = TensorDictReplayBuffer(storage=storage, batch_size=8 * args.slice_len,
                                    sampler=SliceSampler(slice_len=args.slice_len, traj_key=("collector", "traj_ids"),
                                                         strict_length=False))
        rb.extend(data)
        per_transition = disk_bytes(Path(scratch)) / args.frames
        torch.manual_seed(args.seed + 1)
        sample = rb.sample()
        with torch.no_grad(), set_recurrent_mode(True):
            replayed = qnet(sample.exclude("action_value", "embed", "action", "chosen_action_value", "next").clone())
        replay_error = (replayed["action_value"] - sample["action_value"]).abs().max().item()
    return {"memory": name, "description": ROWS[name], "bytes_per_transition": per_transition,
            "state_bytes": 2 * state_bytes_per_env(memory),  # state and ("next", state)
            "gb_per_1e6": per_transition * 1e6 / 1e9,
            "frames_per_s": args.frames / seconds, "replay_max_abs_diff": replay_error,
            "params": sum(p.numel() for p in memory.parameters())}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [r["memory"] for r in rows]
    ax.barh(names, [r["bytes_per_transition"] / 1000 for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.text(r["bytes_per_transition"] / 1000, i, f"  {r['vs_lstm_1']:.1f}x", va="center")
    ax.set_xlabel("KB per stored transition (LazyMemmapStorage)")
    ax.invert_yaxis()
    ax.set_title("Replay bytes per transition, CartPole DQN pipeline, T-Maze-size memories", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_dataclass(Args, __doc__.splitlines()[0])
    torch.set_num_threads(args.threads)
    rows = [measure(name, args) for name in ROWS]
    base = {r["memory"]: r for r in rows}
    for r in rows:
        r["vs_lstm_1"] = r["bytes_per_transition"] / base["lstm-1"]["bytes_per_transition"]
        r["vs_lstm_2"] = r["bytes_per_transition"] / base["lstm-2"]["bytes_per_transition"]
        r["speed_vs_lstm_1"] = r["frames_per_s"] / base["lstm-1"]["frames_per_s"]
    columns = [("memory", "memory", "s"), ("bytes_per_transition", "B/transition", ",.0f"),
               ("vs_lstm_1", "vs LSTM-1", ".2f"), ("vs_lstm_2", "vs LSTM-2", ".2f"), ("state_bytes", "state B", ",d"),
               ("gb_per_1e6", "GB per 1e6", ".1f"), ("frames_per_s", "frames/s", ".0f"),
               ("speed_vs_lstm_1", "speed vs LSTM-1", ".2f"), ("replay_max_abs_diff", "replay max diff", ".1e")]
    header = (f"Replay bytes per transition: CartPole-v1, embed F={args.embed}, width {args.width}, {args.frames} frames, "
              f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    out = write_report("replay_bytes", header, rows, columns, args.out)
    plot(rows, out / "replay_bytes.png")
    print(f"wrote {out / 'replay_bytes.csv'}, .md, .png")
    print(json.dumps({"benchmark": "replay_bytes", "embed": args.embed, "width": args.width, "rows": rows}))


if __name__ == "__main__":
    main()
