"""Per-step cost of ELMUR streaming: the cached step path vs the window-recompute reference.

Measured in one run on one machine:
  * mean time per environment step over two full segments, step path vs reference window
    recompute (the authors' evaluation procedure), at K=10 and K=60, batch 1 and 256;
  * the step path's time per step at episode step 10 vs 10^6 (it must not grow: the state has a
    fixed shape, so the step counter is simply set to 10^6).

    python benchmarks/step_cost.py                 # default table (CPU)
    python benchmarks/step_cost.py --device cuda   # on a GPU

Prints a table, writes ``<out>/step_cost.csv`` and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from torchrl_elmur import ELMURBackbone, ELMURConfig, window_recompute


@dataclass
class Args:
    device: str = "cpu"
    repeats: int = 3  # timed repetitions (the best is kept)
    batches: tuple[int, ...] = (1, 256)
    segment_lens: tuple[int, ...] = (10, 60)
    out: str = "outputs/benchmarks"


def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Args()
    p.add_argument("--device", default=d.device)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--batches", type=int, nargs="+", default=list(d.batches))
    p.add_argument("--segment-lens", type=int, nargs="+", default=list(d.segment_lens))
    p.add_argument("--out", default=d.out)
    a = p.parse_args()
    return Args(a.device, a.repeats, tuple(a.batches), tuple(a.segment_lens), a.out)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_of(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def measure(net: ELMURBackbone, batch: int, args: Args) -> dict:
    K = net.config.segment_len
    T = 2 * K  # two full segments: every position and two commits
    x = torch.randn(batch, T, net.config.token_size, device=args.device)

    def stream(start_step: int):
        def run():
            s = net.initial_state(batch)
            s.step += start_step  # the state has a fixed shape: any episode step is one number away
            for t in range(T):
                _, s = net.step(x[:, t], s)
        return run

    step_10 = best_of(stream(10 - 10 % K), args.repeats, args.device) / T
    step_1e6 = best_of(stream(10**6 - 10**6 % K), args.repeats, args.device) / T
    reference = best_of(lambda: window_recompute(net, x), args.repeats, args.device) / T
    return {
        "segment_len": K, "batch": batch,
        "step_ms": 1e3 * step_10, "reference_ms": 1e3 * reference, "speedup": reference / step_10,
        "step_ms_at_1e6": 1e3 * step_1e6, "growth_1e6_vs_10": step_1e6 / step_10,
    }


def main() -> None:
    args = parse_args()
    rows = []
    for K in args.segment_lens:
        net = ELMURBackbone(ELMURConfig.tmaze(segment_len=K)).to(args.device).eval()
        for batch in args.batches:
            rows.append(measure(net, batch, args))
    machine = f"{platform.machine()} {torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"\nELMUR step cost, T-Maze config (D=128, L=2, H=2, M=2), {args.device} ({machine}), torch {torch.__version__}")
    header = f"{'K':>4} {'batch':>6} {'step ms':>9} {'window ms':>10} {'speedup':>8} {'step ms @1e6':>13} {'1e6/10':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['segment_len']:>4} {r['batch']:>6} {r['step_ms']:>9.3f} {r['reference_ms']:>10.3f} "
              f"{r['speedup']:>7.1f}x {r['step_ms_at_1e6']:>13.3f} {r['growth_1e6_vs_10']:>7.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "step_cost.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out / 'step_cost.csv'}")
    print(json.dumps({"benchmark": "step_cost", "device": args.device, "machine": machine, "rows": rows}))


if __name__ == "__main__":
    main()
