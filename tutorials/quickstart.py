"""Quickstart: the ELMUR backbone streams an episode step by step exactly as it trains on it.

Reads top to bottom:
  1. build the backbone with the published T-Maze configuration (K=10, M=2 slots per layer);
  2. run one long episode through the *sequence* path (training) and the *streaming* path
     (one token per call, fixed-size state) and compare the outputs;
  3. show the LRU timestamps of the layer memory and the per-step cost.

    python tutorials/quickstart.py --steps 2000
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm import trange

from torchrl_elmur import ELMURBackbone, ELMURConfig
from torchrl_elmur.training.cli import parse_dataclass


@dataclass
class Args:
    steps: int = 1000  # episode length
    seed: int = 0  # weights and inputs


def main() -> None:
    args = parse_dataclass(Args, "ELMUR streaming == sequence, on one long episode.")
    torch.manual_seed(args.seed)
    config = ELMURConfig.tmaze(input_size=4)  # T-Maze observations are 4 numbers
    net = ELMURBackbone(config).eval()
    print(f"ELMUR backbone: {sum(p.numel() for p in net.parameters()):,} parameters, "
          f"K={config.segment_len}, M={config.memory_slots} slots x {config.num_layers} layers")

    episode = torch.randn(1, args.steps, 4)  # [B=1, T, input_size]

    with torch.no_grad():
        t0 = time.perf_counter()
        y_seq, state_seq = net(episode)  # sequence path: all T steps at once
        seq_s = time.perf_counter() - t0

        state = net.initial_state(1)  # all zeros = fresh episode
        outputs = []
        t0 = time.perf_counter()
        for t in trange(args.steps, desc="streaming", leave=False):
            y, state = net.step(episode[:, t], state)  # one token, fixed-size state
            outputs.append(y)
        step_s = time.perf_counter() - t0
    y_step = torch.stack(outputs, 1)

    print(f"max |streaming - sequence| over {args.steps} steps: {(y_step - y_seq).abs().max().item():.2e}")
    print(f"memory timestamps (1 + last step of the writing segment), layer 0: "
          f"{state.memory_time[0, 0].tolist()} (sequence path: {state_seq.memory_time[0, 0].tolist()})")
    size = {layout: sum(t.numel() * t.element_size() for t in net.initial_state(1, layout).fields().values())
            for layout in ("cache", "tokens")}
    print(f"state size: {size['cache']:,} bytes (layout 'cache', used here; 'tokens', the one ELMURModule stores "
          f"by default: {size['tokens']:,} bytes), whatever the episode length")
    print(f"sequence path {1e3 * seq_s / args.steps:.3f} ms/step, streaming {1e3 * step_s / args.steps:.3f} ms/step")


if __name__ == "__main__":
    main()
