"""Exactness on a device: step path == sequence path == window recompute, and == the CPU result.

    python benchmarks/device_parity.py --device cuda

Prints the largest differences (float64 and float32) and ends with one JSON line; exits 1 if a
float64 difference exceeds 1e-9 or a float32 one exceeds 1e-4.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from torchrl_elmur import ELMURBackbone, ELMURConfig, window_recompute


@torch.no_grad()
def max_differences(device: str, dtype: torch.dtype, K: int) -> dict:
    torch.manual_seed(0)
    net = ELMURBackbone(ELMURConfig(d_model=32, num_heads=4, num_layers=2, memory_slots=3, segment_len=K,
                                    input_size=6, memory_init_std=0.1)).to(dtype).eval()
    x = torch.randn(5, 6 * K + 3, 6, dtype=dtype)
    y_cpu, _ = net(x)
    net, x = net.to(device), x.to(device)
    y_seq, s_seq = net(x)
    y_ref, _ = window_recompute(net, x)
    s, ys = net.initial_state(5), []
    for t in range(x.shape[1]):
        y, s = net.step(x[:, t], s)
        ys.append(y)
    y_step = torch.stack(ys, 1)
    return {"step_vs_sequence": (y_step - y_seq).abs().max().item(), "sequence_vs_reference": (y_seq - y_ref).abs().max().item(),
            "device_vs_cpu": (y_seq.cpu() - y_cpu).abs().max().item(), "memory_step_vs_sequence": (s.memory - s_seq.memory).abs().max().item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    device = p.parse_args().device
    results, ok = {}, True
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        for K in (1, 10):
            diffs = max_differences(device, dtype, K)
            name = f"{str(dtype).split('.')[-1]}_K{K}"
            results[name] = diffs
            worst = max(v for k, v in diffs.items() if k != "device_vs_cpu")
            ok &= worst <= tol
            print(f"{device} {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ("" if worst <= tol else "  <-- too large"))
    print(json.dumps({"benchmark": "device_parity", "device": device, "ok": ok, "max_abs_diff": results}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
