"""Per-step cost of ELMUR streaming: the cached step path vs the window-recompute reference.

Measured in one run on one machine:
  * mean time per environment step over two full segments, step path vs reference window
    recompute (the authors' evaluation procedure), at K=10 and K=60, batch 1 and 256; the step
    path both as ELMURModule runs it (a new state per step: one copy of the segment cache) and
    with ``inplace=True`` (the state is updated in place: for loops that drop old states);
  * the step path's time per step at episode step 10 vs 10^6 (it must not grow: the state has a
    fixed shape, so the step counter is simply set to 10^6).

    python benchmarks/step_cost.py                 # default table (CPU)
    python benchmarks/step_cost.py --device cuda   # on a GPU

Prints a table, writes ``<out>/step_cost.csv`` and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, format_table, machine, write_csv  # noqa: E402

from torchrl_elmur import ELMURBackbone, ELMURConfig, window_recompute  # noqa: E402


@dataclass
class Args:
    device: str = "cpu"
    repeats: int = 3  # timed repetitions (the best is kept)
    batches: tuple[int, ...] = (1, 256)
    segment_lens: tuple[int, ...] = (10, 60)
    threads: int = 0  # torch threads (0: torch's default; 1 is steadier on a shared machine)
    out: str = "outputs/benchmarks"


def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Args()
    p.add_argument("--device", default=d.device)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--batches", type=int, nargs="+", default=list(d.batches))
    p.add_argument("--segment-lens", type=int, nargs="+", default=list(d.segment_lens))
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0: default)")
    p.add_argument("--out", default=d.out)
    a = p.parse_args()
    return Args(a.device, a.repeats, tuple(a.batches), tuple(a.segment_lens), a.threads, a.out)


@torch.no_grad()
def step_path_ms(net: ELMURBackbone, batch: int, start_step: int, repeats: int, device: str, step_fn=None) -> float:
    """Mean ms per step of ``net.step`` over two full segments starting at episode step
    ``start_step`` (rounded down to a segment boundary)."""
    K = net.config.segment_len
    x = torch.randn(batch, 2 * K, net.config.token_size, device=device)
    step_fn = step_fn or net.step
    start = start_step - start_step % K

    def run():
        s = net.initial_state(batch)
        s.step += start  # the state has a fixed shape: any episode step is one number away
        for t in range(2 * K):
            _, s = step_fn(x[:, t], s)

    return 1e3 * best_of(run, repeats, device) / (2 * K)


@torch.no_grad()
def window_recompute_ms(net: ELMURBackbone, batch: int, repeats: int, device: str) -> float:
    """Mean ms per step of the reference (re-run the segment's window every step) over two segments."""
    K = net.config.segment_len
    x = torch.randn(batch, 2 * K, net.config.token_size, device=device)
    return 1e3 * best_of(lambda: window_recompute(net, x), repeats, device) / (2 * K)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for K in args.segment_lens:
        net = ELMURBackbone(ELMURConfig.tmaze(segment_len=K)).to(args.device).eval()
        for batch in args.batches:
            step = step_path_ms(net, batch, 10, args.repeats, args.device)
            inplace = step_path_ms(net, batch, 10, args.repeats, args.device, functools.partial(net.step, inplace=True))
            far = step_path_ms(net, batch, 10**6, args.repeats, args.device)
            window = window_recompute_ms(net, batch, args.repeats, args.device)
            rows.append({"segment_len": K, "batch": batch, "step_ms": step, "inplace_ms": inplace, "reference_ms": window,
                         "speedup": window / step, "speedup_inplace": window / inplace, "step_ms_at_1e6": far,
                         "growth_1e6_vs_10": far / step})
    print(f"\nELMUR step cost, T-Maze config (D=128, L=2, H=2, M=2), {machine(args.device)}")
    print(format_table(rows, [("segment_len", "K", "d"), ("batch", "batch", "d"), ("step_ms", "step ms", ".3f"),
                              ("inplace_ms", "in-place ms", ".3f"), ("reference_ms", "window ms", ".3f"),
                              ("speedup", "window/step", ".1f"), ("speedup_inplace", "window/in-place", ".1f"),
                              ("step_ms_at_1e6", "step ms @1e6", ".3f"), ("growth_1e6_vs_10", "1e6/10", ".2f")]))
    write_csv(rows, Path(args.out) / "step_cost.csv")
    print(f"wrote {Path(args.out) / 'step_cost.csv'}")
    print(json.dumps({"benchmark": "step_cost", "device": args.device, "machine": machine(args.device), "rows": rows}))


if __name__ == "__main__":
    main()
