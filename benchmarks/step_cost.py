"""Per-step cost of ELMUR streaming through TorchRL, against TorchRL's GRU and the released evaluation.

Everything in one run, one process, median of ``--rounds`` interleaved rounds (each round times
every candidate once), 1 torch thread by default:

1. per environment step, at batch 1 / 100 / 256, T-Maze size (``ELMURConfig.tmaze()``: D=128,
   L=2, H=2, K=10, M=2; ``--preset tmaze_released`` for the tutorial's MoE model):
   - *released code (window recompute)*: the authors' evaluation procedure, re-running the
     current segment's partial window every step (:func:`torchrl_elmur.window_recompute`, which
     equals the released code to 1e-15 with the documented deviations off);
   - *ELMUR backbone.step*: the functional step path (a new state per step);
   - *ELMUR actor as built*: the BC tutorial's actor (Linear + GELU encoder, ELMURModule, Linear
     head, Categorical, greedy) as the tutorial builds it (the default state layout, eager) in step
     mode, the state handed from ``("next", key)`` to ``key`` by ``step_mdp`` as a rollout does, a
     new state per step;
   - *ELMUR actor, cache layout*: the same with ``state_layout="cache"`` (opt-in);
   - *GRU TorchRL actor*: the same actor with TorchRL's GRUModule (hidden 128);
   - *ratio*: ELMUR actor / GRU actor; then the same actor with ``compile_step()``
     (``torch.compile``: the token path and segment write on a CPU, the whole step as a CUDA graph on a GPU), and
     the backbone's ``inplace=True`` step;
2. the T-Maze evaluation loop (``tmaze_success_rate``: TorchRL's ``step_and_maybe_reset`` on the
   batched env, ELMUR stepping its state in place as evaluation does) at ``--loop-batch``: ms per
   step of the loop, of the actor alone, and what the loop adds around the actor;
3. the step path's ms per step at episode step 10 vs 10^6 (it must not grow).

    python benchmarks/step_cost.py                       # CPU tables (about 3 minutes)
    python benchmarks/step_cost.py --device cuda         # on a GPU
    python benchmarks/step_cost.py --no-compile --batches 1 100

Prints the tables and the targets of issues 14 and 27, writes ``<out>/step_cost.csv``, ``step_cost_loop.csv``,
``step_cost.md`` and ``step_cost.png``, and ends with one JSON line.
"""
from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp

from torchrl_elmur.training.benchmarking import backbone_steps, format_table, grouped_bars, machine, medians_ms, write_csv

from torchrl_elmur import ELMURConfig, ELMURModule, compile_steps, window_recompute
from torchrl_elmur.envs.tmaze_rules import OBS_DIM
from torchrl_elmur.training.cli import parse_dataclass
from torchrl_elmur.training.tmaze_bc import TMazeBC, make_tmaze_actor
from torchrl_elmur.training.tmaze_eval import tmaze_success_rate

TARGETS = {1: 1.6, 100: 4.5}  # ELMUR actor (cache layout) / GRU actor on a CPU (issue 14)
DEFAULT_TARGETS = {1: 2.5, 100: 6.0}  # the actor as built (default layout, eager) / GRU actor (issue 27)
LOOP_TARGET_MS = 0.5  # ELMUR's loop overhead may exceed the GRU's by this much


@dataclass
class Args:
    batches: list[int] = field(default_factory=lambda: [1, 100, 256])  # envs stepped together
    preset: Literal["tmaze", "tmaze_released"] = "tmaze"  # ELMUR config (released: the BC tutorial's MoE model)
    rounds: int = 3  # interleaved timing rounds (the median is kept)
    compile: bool = True  # also time the actor with ELMURModule.compile_step() (compiles once per batch size)
    loop_batch: int = 100  # batch of the evaluation-loop table (0: skip it)
    loop_corridor: int = 100  # T-Maze corridor of the loop table (corridor + 2 steps per episode)
    device: str = "cpu"
    threads: int = 1  # torch threads (0: torch's default)
    out: str = "outputs/benchmarks"


def check_args(args: Args) -> str | None:
    if not args.batches or min(args.batches) < 1:
        return f"--batches must be >= 1, received {args.batches}"
    if args.rounds < 1 or args.loop_batch < 0 or args.loop_corridor < 1:
        return (f"--rounds and --loop-corridor must be >= 1 and --loop-batch >= 0, received {args.rounds}, "
                f"{args.loop_corridor}, {args.loop_batch}")
    return None


def elmur_config(preset: str) -> ELMURConfig:
    return getattr(ELMURConfig, preset)(input_size=TMazeBC.width)


def make_actor(kind: str, preset: str, device: str, compiled: bool = False, as_built: bool = False):
    """The BC tutorial's actor (greedy, eval mode): ``as_built``, as the tutorial builds it (ELMUR's
    default state layout, eager); else ELMUR with ``state_layout="cache"``, stepping through
    ``compile_step()`` with ``compiled``."""
    torch.manual_seed(0)
    actor = make_tmaze_actor(kind, TMazeBC(), elmur_config(preset) if kind == "elmur" else None).to(device)
    if as_built:
        return actor.eval()
    return compile_steps(actor, "auto" if compiled else None).eval()  # None: eager, in the cache layout


def actor_steps(actor, batch: int, steps: int, device: str) -> Callable[[], None]:
    """``steps`` actor steps on ``[batch]`` envs, the state handed on by ``step_mdp`` (a new state per step)."""
    obs = torch.randn(steps, batch, OBS_DIM, device=device)
    first = torch.ones(batch, 1, dtype=torch.bool, device=device)
    later = torch.zeros(batch, 1, dtype=torch.bool, device=device)

    @torch.no_grad()
    def run():
        td = TensorDict({"observation": obs[0], "is_init": first}, [batch], device=device)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            for t in range(steps):
                td["observation"] = obs[t]
                td = step_mdp(actor(td), keep_other=True)
                td["is_init"] = later
    return run


def step_table(args: Args) -> list[dict]:
    dev = args.device
    elmur, gru = make_actor("elmur", args.preset, dev), make_actor("gru", args.preset, dev)
    default = make_actor("elmur", args.preset, dev, as_built=True)
    compiled = make_actor("elmur", args.preset, dev, compiled=True) if args.compile else None
    net = next(m for m in elmur.modules() if isinstance(m, ELMURModule)).backbone
    K = net.config.segment_len
    steps = 2 * K
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, steps, net.config.token_size, device=dev)
        cands = {
            "window_ms": (torch.no_grad()(lambda: window_recompute(net, x)), steps),
            "backbone_ms": (backbone_steps(net, batch, steps, dev), steps),
            "default_actor_ms": (actor_steps(default, batch, steps, dev), steps),
            "elmur_actor_ms": (actor_steps(elmur, batch, steps, dev), steps),
            "gru_actor_ms": (actor_steps(gru, batch, steps, dev), steps),
            "inplace_ms": (backbone_steps(net, batch, steps, dev, step_fn=functools.partial(net.step, inplace=True)), steps),
            "backbone_1e6_ms": (backbone_steps(net, batch, steps, dev, start=10**6), steps),
        }
        if compiled is not None:
            t0 = time.perf_counter()
            actor_steps(compiled, batch, 1, dev)()  # compile for this batch size, outside the timing
            compile_s = time.perf_counter() - t0
            cands["compiled_actor_ms"] = (actor_steps(compiled, batch, steps, dev), steps)
        r = medians_ms(cands, args.rounds, dev)
        row = {"batch": batch, **r, "default_ratio": r["default_actor_ms"] / r["gru_actor_ms"],
               "ratio": r["elmur_actor_ms"] / r["gru_actor_ms"],
               "growth_1e6_vs_10": r["backbone_1e6_ms"] / r["backbone_ms"]}
        if compiled is not None:
            row.update(compiled_ratio=r["compiled_actor_ms"] / r["gru_actor_ms"], compile_s=compile_s)
        rows.append(row)
        print(f"  batch {batch}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "batch"), flush=True)
    return rows


def loop_table(args: Args) -> list[dict]:
    """ms per step of the T-Maze evaluation loop and of the actor alone, at ``--loop-batch``."""
    dev, batch, corridor = args.device, args.loop_batch, args.loop_corridor
    actors = {"gru": make_actor("gru", args.preset, dev), "elmur": make_actor("elmur", args.preset, dev)}
    if args.compile:
        actors["elmur compiled"] = make_actor("elmur", args.preset, dev, compiled=True)
    steps = corridor + 2
    cands = {}
    for name, actor in actors.items():
        cands[f"{name}|actor"] = (actor_steps(actor, batch, 20, dev), 20)
        cands[f"{name}|loop"] = (lambda a=actor: tmaze_success_rate(a, corridor, batch, device=dev, progress=False), steps)
    r = medians_ms(cands, args.rounds, dev)
    rows = [{"policy": name, "batch": batch, "actor_ms": r[f"{name}|actor"], "loop_ms": r[f"{name}|loop"],
             "overhead_ms": r[f"{name}|loop"] - r[f"{name}|actor"]} for name in actors]
    return rows


def plot_bars(bars: dict[str, dict[str, float]], path: Path, title: str) -> None:
    top = max(v for row in bars.values() for v in row.values())
    grouped_bars(bars, list(next(iter(bars.values()))), path, ylabel="ms per step", title=title, ylim=(0, 1.3 * top))


def main() -> None:
    args = parse_dataclass(Args, __doc__, check=check_args)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cfg = elmur_config(args.preset)
    where = machine(args.device)
    print(f"ELMUR step cost, preset {args.preset} (D={cfg.d_model}, L={cfg.num_layers}, H={cfg.num_heads}, "
          f"K={cfg.segment_len}, M={cfg.memory_slots}{', MoE' if cfg.moe else ''}), {where}, median of {args.rounds} rounds")
    rows = step_table(args)
    cols = [("batch", "batch", "d"), ("window_ms", "released code (window recompute)", ".3f"),
            ("backbone_ms", "ELMUR backbone.step", ".3f"), ("default_actor_ms", "ELMUR actor as built (default)", ".3f"),
            ("default_ratio", "default / GRU actor", ".1f"), ("elmur_actor_ms", "ELMUR actor, cache layout", ".3f"),
            ("gru_actor_ms", "GRU TorchRL actor", ".3f"), ("ratio", "cache layout / GRU actor", ".1f")]
    extra = [("batch", "batch", "d"), ("compiled_actor_ms", "ELMUR actor, compile_step()", ".3f"),
             ("compiled_ratio", "compiled / GRU actor", ".1f"), ("compile_s", "compile s", ".0f"),
             ("inplace_ms", "backbone.step(inplace=True)", ".3f"), ("backbone_1e6_ms", "backbone.step @1e6", ".3f"),
             ("growth_1e6_vs_10", "@1e6 / @10", ".2f")]
    title = f"ms per environment step, {args.preset}, {where}"
    print(f"\n{title}\n{format_table(rows, cols)}\n\n{format_table(rows, extra)}")
    md = f"### {title}\n\n{format_table(rows, cols, markdown=True)}\n\n{format_table(rows, extra, markdown=True)}\n"
    loop_rows = loop_table(args) if args.loop_batch else []
    lcols = [("policy", "policy", "s"), ("batch", "batch", "d"), ("actor_ms", "actor ms", ".3f"),
             ("loop_ms", "eval loop ms", ".3f"), ("overhead_ms", "loop - actor ms", ".3f")]
    if loop_rows:
        ltitle = f"T-Maze evaluation loop (corridor {args.loop_corridor}), ms per step"
        print(f"\n{ltitle}\n{format_table(loop_rows, lcols)}")
        md += f"\n### {ltitle}\n\n{format_table(loop_rows, lcols, markdown=True)}\n"

    targets = []
    if args.device == "cpu":
        for row in rows:
            if row["batch"] in TARGETS:
                for key, label in (("ratio", "cache layout, eager"), ("compiled_ratio", "compiled")):
                    if key in row:
                        targets.append({"target": f"batch {row['batch']}: ELMUR actor ({label}) <= {TARGETS[row['batch']]}x GRU",
                                        "value": f"{row[key]:.2f}x", "met": row[key] <= TARGETS[row["batch"]]})
            if row["batch"] in DEFAULT_TARGETS:
                bound = DEFAULT_TARGETS[row["batch"]]
                targets.append({"target": f"batch {row['batch']}: ELMUR actor as built (default, eager) <= {bound}x GRU",
                                "value": f"{row['default_ratio']:.2f}x", "met": row["default_ratio"] <= bound})
        by = {r["policy"]: r for r in loop_rows}
        for name in ("elmur", "elmur compiled"):
            if name in by and "gru" in by:
                extra_ms = by[name]["overhead_ms"] - by["gru"]["overhead_ms"]
                targets.append({"target": f"eval loop overhead, {name} <= GRU + {LOOP_TARGET_MS} ms",
                                "value": f"{by[name]['overhead_ms']:.2f} vs {by['gru']['overhead_ms']:.2f} ms",
                                "met": extra_ms <= LOOP_TARGET_MS})
    if targets:
        tcols = [("target", "target", "s"), ("value", "measured", "s"), ("met", "met", "")]
        print(f"\nTargets (issues 14, 27)\n{format_table(targets, tcols)}")
        md += f"\n### Targets (issues 14, 27)\n\n{format_table(targets, tcols, markdown=True)}\n"

    out = Path(args.out)
    write_csv(rows, out / "step_cost.csv")
    if loop_rows:
        write_csv(loop_rows, out / "step_cost_loop.csv")
    (out / "step_cost.md").write_text(md)
    bars = {f"batch {r['batch']}": {"backbone.step": r["backbone_ms"], "ELMUR actor (default)": r["default_actor_ms"],
                                   "ELMUR actor, cache layout": r["elmur_actor_ms"],
                                   **({"ELMUR actor, compiled": r["compiled_actor_ms"]} if "compiled_actor_ms" in r else {}),
                                   "GRU actor": r["gru_actor_ms"]} for r in rows}
    plot_bars(bars, out / "step_cost.png", f"ELMUR vs GRU per environment step ({args.preset})\n{where}")
    print(f"wrote {out}/step_cost.csv, step_cost_loop.csv, step_cost.md, step_cost.png "
          f"({time.perf_counter() - t_start:.0f} s in all)")
    print(json.dumps({"benchmark": "step_cost", "device": args.device, "preset": args.preset, "machine": where,
                      "rows": rows, "loop": loop_rows, "targets": targets}))


if __name__ == "__main__":
    main()
