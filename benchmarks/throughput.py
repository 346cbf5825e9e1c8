"""Inference and training cost of ELMUR against TorchRL's GRU/LSTM and window recomputation.

In one run, on one machine (all ratios are within this run):
  1. streaming inference, ms per environment step, at batch 1 and 256, K=10 (T-Maze config) and
     K=60: the ELMUR step path (backbone, functional and ``inplace=True``, and ELMURModule
     through a TensorDict + step_mdp), the
     reference window recompute (the authors' procedure), GRUModule and LSTMModule (the modules
     of the BC tutorial: 1 layer, hidden 128, same TensorDict harness);
  2. the step path's ms per step at episode step 10 vs 10^6 (must be flat);
  3. training throughput, tokens/s of forward+backward in recurrent mode on [64, 30] batches;
  4. recurrent-state bytes per env (from the modules' primers);
  5. with ``--compile`` (meant for CUDA): the step path under ``torch.compile``, and the gain.

    python benchmarks/throughput.py
    python benchmarks/throughput.py --device cuda --compile

Prints tables (and checks the targets), writes ``<out>/throughput_*.csv`` and a markdown file,
and ends with one JSON line.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.envs.utils import step_mdp
from torchrl.modules import GRUModule, LSTMModule, set_recurrent_mode

from torchrl_elmur.training.benchmarking import best_of, format_table, machine, state_bytes_per_env, step_path_ms, window_recompute_ms, write_csv

from torchrl_elmur import ELMURConfig, ELMURModule, set_state_layout
from torchrl_elmur.training.cli import parse_dataclass

D = 128


@dataclass
class Args:
    device: str = "cpu"  # cpu or cuda
    repeats: int = 3  # timed repeats (the best is kept)
    batches: list[int] = field(default_factory=lambda: [1, 256])  # envs stepped together
    segment_lens: list[int] = field(default_factory=lambda: [10, 60])  # ELMUR K
    train_batch: int = 64  # rows per training batch
    train_len: int = 30  # steps per training row
    compile: bool = False  # also time the step path under torch.compile
    threads: int = 0  # torch threads (0: default)
    out: str = "outputs/benchmarks"


def check(args: Args) -> str | None:
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        return f"--device: expected cpu or cuda (with a GPU), received {args.device!r}"
    return None


def parse_args() -> Args:
    return parse_dataclass(Args, __doc__.splitlines()[0], check=check)


def make_module(kind: str, segment_len: int = 10, device: str = "cpu"):
    keys = dict(in_key="x", out_key="y")
    if kind == "elmur":
        cfg = ELMURConfig.tmaze(segment_len=segment_len, dropout=0.0, attn_dropout=0.0)
        return ELMURModule(config=cfg, **keys).to(device)
    cls = {"gru": GRUModule, "lstm": LSTMModule}[kind]
    return cls(input_size=D, hidden_size=D, device=device, **keys)


@torch.no_grad()
def module_step_ms(module, batch: int, steps: int, repeats: int, device: str) -> float:
    """ms per step of a TorchRL recurrent module driven like a collector does (module, step_mdp)."""
    module.eval()
    x = torch.randn(steps, batch, D, device=device)
    start = TensorDict({"x": x[0], "is_init": torch.ones(batch, 1, dtype=torch.bool, device=device)}, [batch], device=device)

    def run():
        td = start.clone()
        for t in range(steps):
            td["x"] = x[t]
            td = step_mdp(module(td), keep_other=True)
            td["is_init"] = torch.zeros(batch, 1, dtype=torch.bool, device=device)

    return 1e3 * best_of(run, repeats, device) / steps


def train_tokens_per_s(module, args: Args) -> float:
    module.train()
    B, T = args.train_batch, args.train_len
    td = TensorDict({"x": torch.randn(B, T, D, device=args.device),
                     "is_init": torch.zeros(B, T, 1, dtype=torch.bool, device=args.device)}, [B, T], device=args.device)
    td["is_init"][:, 0] = True

    def run():
        with set_recurrent_mode(True):
            out = module(td.clone())
        out["y"].pow(2).mean().backward()

    return B * T / best_of(run, args.repeats, args.device, warmup=2)  # the first backward pays one-off set-up


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    dev, rep = args.device, args.repeats
    baselines = {kind: make_module(kind, device=dev) for kind in ("gru", "lstm")}

    # 1-2, 5. streaming inference
    stream = []
    for K in args.segment_lens:
        elmur = make_module("elmur", K, dev).eval()
        net = elmur.backbone
        compiled = args.compile and K == args.segment_lens[0]  # compile once per config: it is slow
        for batch in args.batches:
            row = {"segment_len": K, "batch": batch}
            row["elmur_step_ms"] = step_path_ms(net, batch, 10, rep, dev)
            row["elmur_inplace_ms"] = step_path_ms(net, batch, 10, rep, dev, functools.partial(net.step, inplace=True))
            row["elmur_step_ms_1e6"] = step_path_ms(net, batch, 10**6, rep, dev)
            row["elmur_module_ms"] = module_step_ms(elmur, batch, 2 * K, rep, dev)  # state_layout="tokens" (default)
            with set_state_layout(elmur, "cache"):
                row["elmur_module_cache_ms"] = module_step_ms(elmur, batch, 2 * K, rep, dev)
            row["window_ms"] = window_recompute_ms(net, batch, rep, dev)
            for kind, module in baselines.items():
                row[f"{kind}_module_ms"] = module_step_ms(module, batch, 2 * K, rep, dev)
            row["speedup_vs_window"] = row["window_ms"] / row["elmur_step_ms"]
            row["inplace_speedup_vs_window"] = row["window_ms"] / row["elmur_inplace_ms"]
            row["growth_1e6_vs_10"] = row["elmur_step_ms_1e6"] / row["elmur_step_ms"]
            if compiled:
                for mode in ("reduce-overhead", "default"):  # CUDA graphs first, then plain inductor
                    try:
                        torch._dynamo.reset()
                        step_fn = net.compiled_step(mode)  # the sync-free step, compiled whole
                        row["compiled_step_ms"] = step_path_ms(net, batch, 10, rep, dev, step_fn=step_fn)
                        row["compile_mode"] = mode
                        row["compile_gain"] = row["elmur_step_ms"] / row["compiled_step_ms"]
                        break
                    except Exception as err:  # report, do not hide
                        row[f"compile_error_{mode}"] = f"{type(err).__name__}: {str(err)[:300]}"
                        print(f"  torch.compile(mode={mode!r}) failed: {row[f'compile_error_{mode}']}", flush=True)
            stream.append(row)
            print(f"  streaming K={K} batch={batch}: done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    # 3-4. training throughput and state size (T-Maze configuration)
    train = []
    for kind in ("elmur", "gru", "lstm"):
        module = make_module(kind, device=dev)
        train.append({"policy": kind, "train_tokens_per_s": train_tokens_per_s(module, args),
                      "state_bytes_per_env": state_bytes_per_env(module)})
    for r in train:
        r["tokens_vs_gru"] = r["train_tokens_per_s"] / train[1]["train_tokens_per_s"]
        r["state_vs_gru"] = r["state_bytes_per_env"] / train[1]["state_bytes_per_env"]

    stream_cols = [("segment_len", "K", "d"), ("batch", "batch", "d"), ("elmur_step_ms", "ELMUR step ms", ".3f"),
                   ("elmur_inplace_ms", "in-place ms", ".3f"), ("elmur_module_ms", "ELMURModule ms", ".3f"),
                   ("elmur_module_cache_ms", "ELMURModule cache-layout ms", ".3f"),
                   ("window_ms", "window ms", ".3f"), ("speedup_vs_window", "window/step", ".1f"),
                   ("inplace_speedup_vs_window", "window/in-place", ".1f"), ("gru_module_ms", "GRU ms", ".3f"),
                   ("lstm_module_ms", "LSTM ms", ".3f"), ("elmur_step_ms_1e6", "step ms @1e6", ".3f"),
                   ("growth_1e6_vs_10", "1e6/10", ".2f")]
    if args.compile:
        stream_cols += [("compiled_step_ms", "compiled ms", ".3f"), ("compile_gain", "compile gain", ".2f"),
                        ("compile_mode", "compile mode", "s")]
    train_cols = [("policy", "policy", "s"), ("train_tokens_per_s", "train tokens/s", ",.0f"),
                  ("tokens_vs_gru", "vs GRU", ".2f"), ("state_bytes_per_env", "state bytes/env", ",d"),
                  ("state_vs_gru", "vs GRU", ".1f")]
    title = f"ELMUR throughput, T-Maze config (D=128, L=2, H=2, M=2), {machine(dev)}"
    print(f"\n{title}\nStreaming inference (ms per env step)")
    print(format_table(stream, stream_cols))
    print(f"\nTraining (recurrent mode, forward+backward, [{args.train_batch}, {args.train_len}]) and state size")
    print(format_table(train, train_cols))

    targets = []
    for r in stream:
        if r["batch"] == 256 and r["segment_len"] in (10, 60):
            need = 3.0 if r["segment_len"] == 10 else 10.0
            targets.append((f"window/step >= {need:g}x at K={r['segment_len']}, batch 256", r["speedup_vs_window"] >= need,
                            f"{r['speedup_vs_window']:.1f}x"))
            targets.append((f"window/in-place step >= {need:g}x at K={r['segment_len']}, batch 256 (backbone only)",
                            r["inplace_speedup_vs_window"] >= need, f"{r['inplace_speedup_vs_window']:.1f}x"))
        if r["batch"] == 1 and r["segment_len"] == 10:
            targets.append(("ELMUR step <= 1 ms at batch 1, K=10", r["elmur_step_ms"] <= 1.0, f"{r['elmur_step_ms']:.3f} ms"))
            targets.append(("ELMUR in-place step <= 1 ms at batch 1, K=10", r["elmur_inplace_ms"] <= 1.0,
                            f"{r['elmur_inplace_ms']:.3f} ms"))
        targets.append((f"flat at 1e6 (K={r['segment_len']}, batch {r['batch']}): ratio <= 1.2", r["growth_1e6_vs_10"] <= 1.2,
                        f"{r['growth_1e6_vs_10']:.2f}"))
    print("\nTargets")
    for name, ok, value in targets:
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {value}")

    out = Path(args.out)
    write_csv(stream, out / f"throughput_streaming_{dev.split(':')[0]}.csv")
    write_csv(train, out / f"throughput_training_{dev.split(':')[0]}.csv")
    md = out / f"throughput_{dev.split(':')[0]}.md"
    md.write_text(f"### {title}\n\nStreaming inference (ms per env step)\n\n{format_table(stream, stream_cols, True)}\n\n"
                  f"Training and state size\n\n{format_table(train, train_cols, True)}\n")
    print(f"wrote {out}/throughput_*_{dev.split(':')[0]}.csv and {md} ({time.perf_counter() - t_start:.0f} s)")
    print(json.dumps({"benchmark": "throughput", "device": dev, "machine": machine(dev), "streaming": stream,
                      "training": train, "targets": {n: v for n, _, v in targets}}))


if __name__ == "__main__":
    main()
