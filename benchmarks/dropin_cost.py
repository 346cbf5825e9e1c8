"""What the one-line swap costs: GRUModule, LSTMModule and ELMURModule as a user constructs them.

The memory module alone, in step mode, the state handed from ``("next", key)`` to ``key`` by
``step_mdp`` as a rollout does (a new state every step), under ``torch.no_grad`` as collectors
run a policy. One process, every candidate timed once per round in turn, median of ``--rounds``
rounds, 1 torch thread by default. Candidates (input 64 -> width 128 unless flags say otherwise):

- ``GRUModule(input_size=64, hidden_size=128)`` and ``LSTMModule(...)``: TorchRL's, defaults;
- ``ELMURModule(input_size=64, hidden_size=128)``: **the default**, eager (stores the compact
  ``"tokens"`` state; steps through its derived segment cache);
- the default with ``compile_step()`` (``torch.compile``, opt-in; compiles once per batch size);
- ``state_layout="cache"``: the opt-in layout that stores the segment cache (eager), and the
  same with ``compile_steps``;
- a windowed transformer peer: CleanRL ``ppo_trxl``-style, same width, depth and heads, a D -> D
  feed-forward net, attending over the last ``--window`` layer inputs it caches (plain torch, no
  TensorDict: its best case).

Columns: bytes of recurrent state per stored transition (the state is stored twice, at the root and
under ``"next"``), the arithmetic floor (multiply-adds per step from the config,
:mod:`torchrl_elmur.core.cost`) and its ratio to the GRU's, then per batch size the ms per step
and the ratio to the GRU of the same round.

    python benchmarks/dropin_cost.py                                 # 1 / 16 / 100 / 256 envs (about 5 minutes)
    python benchmarks/dropin_cost.py --batches 1 100 --no-compile    # quicker

Writes ``<out>/dropin_cost.csv`` and ``dropin_cost.md`` and ends with one JSON line.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import Tensor, nn
from torchrl.envs.utils import step_mdp
from torchrl.modules import GRUModule, LSTMModule

from torchrl_elmur.training.benchmarking import format_table, machine, medians_ms, state_bytes_per_env, write_csv

from torchrl_elmur import ELMURModule, compile_steps
from torchrl_elmur.core.cost import elmur_step_macs, rnn_step_macs
from torchrl_elmur.training.cli import parse_dataclass

TARGET_BATCH1, TARGET_MANY = 3.5, 14.0  # default ELMUR eager / GRU (issue 27)


@dataclass
class Args:
    batches: list[int] = field(default_factory=lambda: [1, 16, 100, 256])  # envs stepped together
    input_size: int = 64  # the value's width F
    hidden_size: int = 128  # the memory's width
    rounds: int = 3  # interleaved timing rounds (the median is kept)
    steps: int = 20  # steps per timed run (two ELMUR segments at the default K = 10)
    compile: bool = True  # also time the cache layout through compile_steps (compiles once per batch size)
    window: int = 64  # the peer transformer's attention window
    threads: int = 1  # torch threads (0: torch's default)
    out: str = "outputs/benchmarks"


def check_args(args: Args) -> str | None:
    for name in ("input_size", "hidden_size", "rounds", "steps", "window"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, received {getattr(args, name)}"
    if not args.batches or min(args.batches) < 1:
        return f"--batches must be >= 1, received {args.batches}"
    if args.threads < 0:
        return f"--threads must be >= 0, received {args.threads}"
    return None


class WindowedTransformer(nn.Module):
    """A sliding-window transformer step (CleanRL ``ppo_trxl``-style): each layer attends from the
    new token over its last ``window`` cached inputs and itself, then a D -> D ReLU feed-forward
    net, post-norm. ``memory [B, W, L, D]`` holds the cached layer inputs."""

    def __init__(self, input_size: int, width: int, layers: int, heads: int, window: int) -> None:
        super().__init__()
        self.window, self.width, self.num_layers = window, width, layers
        self.inp = nn.Linear(input_size, width)
        self.attn = nn.ModuleList(nn.MultiheadAttention(width, heads, batch_first=True) for _ in range(layers))
        self.norm1 = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.norm2 = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers))

    def step(self, x: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        h = self.inp(x)  # [B, D]
        inputs = []
        for i in range(self.num_layers):
            inputs.append(h)
            kv = torch.cat([memory[:, :, i], h[:, None]], 1)  # [B, W + 1, D]
            a = self.attn[i](h[:, None], kv, kv, need_weights=False)[0][:, 0]
            h = self.norm1[i](h + a)
            h = self.norm2[i](h + self.ffn[i](h))
        return h, torch.cat([memory[:, 1:], torch.stack(inputs, 1)[:, None]], 1)

    def macs(self) -> int:
        D, W = self.width, self.window
        return self.inp.in_features * D + self.num_layers * (4 * D * D + 2 * (W + 1) * D + D * D)


def module_steps(module, batch: int, steps: int, input_size: int) -> Callable[[], None]:
    """``steps`` steps of a TorchRL recurrent module on ``[batch]`` envs, as a rollout hands the state on."""
    values = torch.randn(steps, batch, input_size)
    first = torch.ones(batch, 1, dtype=torch.bool)
    later = torch.zeros(batch, 1, dtype=torch.bool)

    @torch.no_grad()
    def run():
        td = TensorDict({"embed": values[0], "is_init": first}, [batch])
        for t in range(steps):
            td["embed"] = values[t]
            td = step_mdp(module(td), keep_other=True)
            td["is_init"] = later
    return run


def peer_steps(peer: WindowedTransformer, batch: int, steps: int, input_size: int) -> Callable[[], None]:
    values = torch.randn(steps, batch, input_size)

    @torch.no_grad()
    def run():
        memory = torch.zeros(batch, peer.window, peer.num_layers, peer.width)
        for t in range(steps):
            _, memory = peer.step(values[t], memory)
    return run


def make_candidates(args: Args) -> dict[str, dict]:
    """name -> ``{"module" or "peer", "bytes", "macs"}``, constructed as a user would."""
    F, D = args.input_size, args.hidden_size
    keys = dict(in_key="embed", out_key="memory")
    torch.manual_seed(0)
    gru, lstm = GRUModule(input_size=F, hidden_size=D, **keys), LSTMModule(input_size=F, hidden_size=D, **keys)
    elmur = ELMURModule(input_size=F, hidden_size=D, **keys)
    cache = ELMURModule(input_size=F, hidden_size=D, state_layout="cache", **keys)
    cands = {
        "GRUModule": dict(module=gru, macs=rnn_step_macs(F, D)),
        "LSTMModule": dict(module=lstm, macs=rnn_step_macs(F, D, gates=4)),
        "ELMURModule (default, eager)": dict(module=elmur, macs=elmur_step_macs(elmur.config)),
        "ELMURModule state_layout='cache' (eager)": dict(module=cache, macs=elmur_step_macs(cache.config)),
    }
    if args.compile:
        compact = ELMURModule(input_size=F, hidden_size=D, **keys).compile_step()
        cands["ELMURModule (default layout), compile_step()"] = dict(module=compact, macs=elmur_step_macs(compact.config))
        compiled = compile_steps(ELMURModule(input_size=F, hidden_size=D, **keys))
        cands["ELMURModule state_layout='cache', compile_steps"] = dict(module=compiled, macs=elmur_step_macs(compiled.config))
    for c in cands.values():
        c["bytes"] = 2 * state_bytes_per_env(c["module"])
    c = elmur.config
    peer = WindowedTransformer(F, D, c.num_layers, c.num_heads, args.window)
    cands[f"windowed transformer, {args.window} steps (plain torch)"] = dict(
        peer=peer, macs=peer.macs(), bytes=2 * 4 * args.window * c.num_layers * D)
    return cands


def main() -> None:
    args = parse_dataclass(Args, __doc__, check=check_args)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    where = machine("cpu")
    cands = make_candidates(args)
    gru_macs = cands["GRUModule"]["macs"]
    rows = [{"path": name, "bytes": c["bytes"], "macs": c["macs"], "floor_x": c["macs"] / gru_macs} for name, c in cands.items()]
    print(f"One memory step per env, input {args.input_size} -> width {args.hidden_size}, {where}, "
          f"median of {args.rounds} rounds of {args.steps} steps", flush=True)
    for batch in args.batches:
        t0 = time.perf_counter()
        runs = {name: (peer_steps(c["peer"], batch, args.steps, args.input_size) if "peer" in c
                       else module_steps(c["module"], batch, args.steps, args.input_size)) for name, c in cands.items()}
        ms = medians_ms({name: (run, args.steps) for name, run in runs.items()}, args.rounds, "cpu")
        for row in rows:
            row[f"ms_{batch}"] = ms[row["path"]]
            row[f"x_{batch}"] = ms[row["path"]] / ms["GRUModule"]
        print(f"  {batch} envs ({time.perf_counter() - t0:.0f} s): "
              + ", ".join(f"{name} {v:.3f} ms" for name, v in ms.items()), flush=True)

    cols = [("path", "memory (as constructed)", "s"), ("bytes", "state B / stored transition", ",d"),
            ("macs", "MACs / step", ",.0f"), ("floor_x", "floor x GRU", ".1f")]
    for b in args.batches:
        cols += [(f"ms_{b}", f"{b} env{'s' if b > 1 else ''} ms", ".3f"), (f"x_{b}", "x GRU", ".1f")]
    title = f"ms per step of the memory module alone, {where}"
    print(f"\n{title}\n{format_table(rows, cols)}")
    md = f"### {title}\n\n{format_table(rows, cols, markdown=True)}\n"

    default = next(r for r in rows if r["path"].startswith("ELMURModule (default"))
    peer = rows[-1]
    tokens_bytes = 2 * state_bytes_per_env(ELMURModule(input_size=args.input_size, hidden_size=args.hidden_size,
                                                       in_key="embed", out_key="memory", state_layout="tokens"))
    targets = [{"target": f"default eager <= {TARGET_BATCH1 if b == 1 else TARGET_MANY}x GRU at {b} env(s)",
                "value": f"{default[f'x_{b}']:.1f}x", "met": default[f"x_{b}"] <= (TARGET_BATCH1 if b == 1 else TARGET_MANY)}
               for b in args.batches]
    targets += [{"target": f"default eager faster than the {args.window}-step windowed peer at {b} env(s)",
                 "value": f"{default[f'ms_{b}']:.3f} vs {peer[f'ms_{b}']:.3f} ms", "met": default[f"ms_{b}"] < peer[f"ms_{b}"]}
                for b in args.batches]
    targets.append({"target": "default state bytes <= the tokens layout's", "value": f"{default['bytes']:,} vs {tokens_bytes:,}",
                    "met": default["bytes"] <= tokens_bytes})
    tcols = [("target", "target", "s"), ("value", "measured", "s"), ("met", "met", "")]
    print(f"\nTargets (issue 27)\n{format_table(targets, tcols)}")
    md += f"\n### Targets (issue 27)\n\n{format_table(targets, tcols, markdown=True)}\n"
    out = Path(args.out)
    write_csv(rows, out / "dropin_cost.csv")
    (out / "dropin_cost.md").write_text(md)
    print(f"wrote {out}/dropin_cost.csv, dropin_cost.md ({time.perf_counter() - t_start:.0f} s in all)")
    print(json.dumps({"benchmark": "dropin_cost", "machine": where, "rows": rows, "targets": targets}))


if __name__ == "__main__":
    main()
