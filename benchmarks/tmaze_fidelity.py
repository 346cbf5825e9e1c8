"""T-Maze fidelity: which deviations from the released ELMUR code decide whether a memory that
keeps updating (lambda = 0.79, a blend every segment) generalises beyond the training length.

Each variant is the published T-Maze configuration (``ELMURConfig.tmaze``: D=128, L=2, H=2, M=2,
K=10, lambda=0.79, detach_memory=True, dropout 0.10 / 0.17, memory dropout 0.01) with the bare
options (torch init, no output bias, residual dropout, MLP FFN) and some of them changed, trained
by one of two recipes on oracle episodes of at most 30 steps:

- ``tutorial``: the BC tutorial's recipe (2000 episodes, batch 64 x 30, lr 1e-3, one optimizer
  step per 30-step window);
- ``released``: the released trainer's (4800 episodes, batch 128 x 30, lr 2.1e-4, AdamW betas
  (0.95, 0.999), weight decay 1e-4, one optimizer step per 10-step segment, state carried).

During training, success is probed every ``--probe-every`` steps at corridors 100 and 1000
(``--probe-episodes`` greedy episodes; training time excludes the probes): time-to-1.00 is the
training time at the first probe that reached 1.00. After training, every ``--lengths`` corridor
is evaluated with ``--eval-episodes`` episodes.

    python benchmarks/tmaze_fidelity.py                          # the screen: a few variants, 1 seed
    python benchmarks/tmaze_fidelity.py --variants published released --seeds 0 1 2
    python benchmarks/tmaze_fidelity.py --recipe released --steps 1000 --variants released

Writes ``<out>/tmaze_fidelity.csv`` (one row per variant and seed), ``.md`` (the table, worst seed
per cell) and ``<out>/checkpoints/<recipe>_<variant>_<seed>.pt``, and ends with one JSON line.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

ROOT = Path(__file__).resolve().parents[1]
from torchrl_elmur.training.benchmarking import format_table, machine, write_csv

from torchrl_elmur import ELMURConfig
from torchrl_elmur.core.config import OPTION_SETS, MoEConfig, released_options
from torchrl_elmur.data import EVAL_SEED, VALIDATION_SEED, make_tmaze_dataset
from torchrl_elmur.objectives import SequenceCrossEntropyLoss
from torchrl_elmur.training import episodes_error, evaluate_lengths, tmaze_success_rate
from torchrl_elmur.training.bc import fit_bc
from torchrl_elmur.training.checkpoint import save_policy
from torchrl_elmur.training.cli import parse_dataclass
from torchrl_elmur.training.tmaze_bc import TMazeBC, make_tmaze_actor
from torchrl_elmur.training.tmaze_eval import SOLVED, generalised

BARE_OPTIONS = dict(init="torch", cross_attn_out_bias=False, dropout_placement="residual", moe=None)
RELEASED_OPTIONS = released_options()
VARIANTS: dict[str, dict] = {  # changes to ELMURConfig.tmaze(**BARE_OPTIONS) (see make_config)
    "published": {},
    "init": dict(init="released"),
    "bias": dict(cross_attn_out_bias=True),
    "dropout": dict(dropout_placement="released"),
    "moe": dict(moe=MoEConfig()),
    "official": dict(write_rule="official"),
    "released": dict(RELEASED_OPTIONS, write_rule="official"),
    "released-paper": dict(RELEASED_OPTIONS),
    **{f"released-paper-no-{k}": {o: v for o, v in RELEASED_OPTIONS.items() if o != option}
       for k, option in (("init", "init"), ("bias", "cross_attn_out_bias"), ("dropout", "dropout_placement"),
                         ("moe", "moe"))},
    "no-detach": dict(detach_memory=False),
    "official-no-detach": dict(write_rule="official", detach_memory=False),
    "released-no-detach": dict(RELEASED_OPTIONS, write_rule="official", detach_memory=False),
    "released-paper-no-detach": dict(RELEASED_OPTIONS, detach_memory=False),
    "lambda0": dict(lru_blend=0.0, detach_memory=False),
    # ELMURConfig()'s own defaults (no dropout, eps 1e-5, bare options) at the published T-Maze sizes
    "config-defaults": dict(dropout=0.0, attn_dropout=0.0, memory_dropout=0.0, norm_eps=1e-5),
    "config-defaults-no-detach": dict(dropout=0.0, attn_dropout=0.0, memory_dropout=0.0, norm_eps=1e-5,
                                      detach_memory=False),
    "config-defaults-released": dict(RELEASED_OPTIONS, dropout=0.0, attn_dropout=0.0, memory_dropout=0.0, norm_eps=1e-5),
    # the named option sets compared across the families (OPTION_SETS: norm, detach, dropout, init, FFN, rule)
    **{f"options-{name}": options for name, options in OPTION_SETS.items()},
}


def make_config(variant: str, input_size: int) -> ELMURConfig:
    """The published T-Maze configuration with ``VARIANTS[variant]`` applied; every option not named
    there is bare (torch init, no output bias, residual dropout, MLP), whatever ELMURConfig's defaults."""
    return ELMURConfig.tmaze(input_size=input_size, **{**BARE_OPTIONS, **VARIANTS[variant]})


def option_set_of(variant: str) -> str:
    """The name of the option set (``OPTION_SETS``) whose configuration equals the variant's, or ''."""
    config = make_config(variant, 128) if variant in VARIANTS else None
    return next((name for name in OPTION_SETS if config == make_config(f"options-{name}", 128)), "")


RECIPES = {
    # chunked: one optimizer step per ELMUR segment (train_bc's chunk_len = K), else one per window
    "tutorial": dict(episodes=2000, batch=64, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01, chunked=False, steps=300),
    "released": dict(episodes=4800, batch=128, lr=2.1e-4, betas=(0.95, 0.999), weight_decay=1e-4, chunked=True,
                     steps=600),
}


@dataclass
class Args:
    variants: list[str] = field(default_factory=lambda: ["published", "init", "dropout", "released"])  # names in VARIANTS
    recipe: Literal["tutorial", "released"] = "tutorial"  # training recipe (RECIPES)
    seeds: list[int] = field(default_factory=lambda: [0])  # one training run per variant and seed
    steps: int | None = None  # training samples (default: the recipe's)
    episodes: int | None = None  # oracle training episodes (default: the recipe's)
    probe_every: int = 50  # probe success at corridors 100 and 1000 every N steps (0: only at the end)
    probe_episodes: int = 20  # greedy episodes per probe and corridor (even)
    lengths: list[int] = field(default_factory=lambda: [30, 100, 300, 1000, 10_000])  # corridors evaluated after training
    eval_episodes: int = 100  # greedy episodes per corridor after training (even)
    separation: bool = True  # measure what memory says about the goal side over 100 segments (memory_separation)
    from_csv: list[str] = field(default_factory=list)  # summarise these earlier runs' CSVs instead of training
    threads: int = 1  # torch threads
    out: str = "outputs/benchmarks"  # output folder


def check_args(args: Args) -> str | None:
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        return f"--variants: unknown {unknown}; expected names from {list(VARIANTS)}"
    return episodes_error({"--probe-episodes": args.probe_episodes, "--eval-episodes": args.eval_episodes})


SEPARATION_SEGMENTS = (1, 2, 3, 10, 30, 100)


def memory_separation(actor, segment_len: int, corridor: int = 1000, episodes: int = 100, seed: int = EVAL_SEED) -> dict:
    """What each layer's memory says about the goal side after ``s`` segments of a greedy
    ``corridor`` episode (``s`` in :data:`SEPARATION_SEGMENTS`), slots ordered by recency:

    - ``sep<s>``: the distance between the mean memory of up- and down-episodes in units of the
      within-side spread (``|mu_up - mu_down| / sqrt(mean within-side variance summed over
      entries)``): whether the memory still tells the sides apart at all;
    - ``align<s>``: the cosine between that mean difference and the one after segment 3 (the last
      a 30-step training episode writes): whether it says so in the code the read was trained on;
    - ``drift<s>``: how far the mean memory (both sides) has moved from its segment-3 mean, in
      units of the segment-3 spread: whether the read still sees memory like the training memory.

    Returns ``{f"sep{s}": [per layer], f"align{s}": [...], f"drift{s}": [...]}``.
    """
    records = {}

    def record(td):
        step = int(td["next", "recurrent_state", "step"][0])
        if step % segment_len == 0 and step // segment_len in SEPARATION_SEGMENTS:
            memory, time = td["next", "recurrent_state", "memory"], td["next", "recurrent_state", "memory_time"]  # [B, L, M, D], [B, L, M]
            order = time.argsort(dim=-1, descending=True, stable=True)  # most recent slot first
            records[step // segment_len] = memory.gather(2, order[..., None].expand_as(memory)).clone()

    tmaze_success_rate(actor, corridor, episodes, seed=seed, progress=False, on_step=record)
    up = torch.arange(episodes) % 2 == 0
    out, diffs, means, spreads = {}, {}, {}, {}
    for s, memory in sorted(records.items()):
        flat = memory.flatten(2)  # [B, L, M*D]
        diffs[s] = flat[up].mean(0) - flat[~up].mean(0)  # [L, M*D]
        means[s] = flat.mean(0)
        spreads[s] = (0.5 * (flat[up].var(0) + flat[~up].var(0)).sum(-1)).sqrt().clamp_min(1e-12)  # [L]
        out[f"sep{s}"] = [round(v, 2) for v in (diffs[s].norm(dim=-1) / spreads[s]).tolist()]
    if 3 in diffs:
        for s in sorted(records):
            out[f"align{s}"] = [round(v, 2) for v in torch.cosine_similarity(diffs[s], diffs[3], dim=-1).tolist()]
            out[f"drift{s}"] = [round(v, 2) for v in ((means[s] - means[3]).norm(dim=-1) / spreads[3]).tolist()]
    return out


def run_one(variant: str, seed: int, args: Args) -> dict:
    overrides = {k: v for k, v in (("steps", args.steps), ("episodes", args.episodes)) if v}
    recipe = {**RECIPES[args.recipe], **overrides}
    tut = TMazeBC(seed=seed)  # the tutorial's recipe: width, corridors, window, smoothing, clipping
    config = make_config(variant, tut.width)
    torch.manual_seed(seed)
    actor = make_tmaze_actor("elmur", tut, config)
    data = make_tmaze_dataset(recipe["episodes"], max_corridor=tut.max_corridor, seed=seed,
                              cache=ROOT / "outputs" / "cache" / "tmaze" / f"{recipe['episodes']}_{seed}")
    loss = SequenceCrossEntropyLoss(actor, label_smoothing=tut.label_smoothing)

    def probe(policy):
        return {str(c): tmaze_success_rate(policy, c, args.probe_episodes, seed=VALIDATION_SEED, progress=False)
                for c in (100, 1000)}

    history = fit_bc(actor, loss, data, steps=recipe["steps"], batch=recipe["batch"], seq_len=tut.seq_len,
                     lr=recipe["lr"], betas=recipe["betas"], weight_decay=recipe["weight_decay"], seed=seed,
                     grad_clip=tut.grad_clip, chunk_len=config.segment_len if recipe["chunked"] else None,
                     name=f"{variant}/{seed}", probe=probe, probe_every=args.probe_every)
    checkpoint = Path(args.out) / "checkpoints" / f"{args.recipe}_{variant}_{seed}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_policy(checkpoint, actor)
    row = {"variant": variant, "options": option_set_of(variant), "seed": seed, "recipe": args.recipe,
           "steps": recipe["steps"],
           "train_seconds": round(history.train_seconds, 1),
           "t100": history.first_time("100"), "t1000": history.first_time("1000"),
           "probes": " ".join(f"{p['step']}:{p['result']['100']:.2f}/{p['result']['1000']:.2f}" for p in history.probes)}
    success, _ = evaluate_lengths(actor, args.lengths, args.eval_episodes, seed=EVAL_SEED, name=f"{variant}/{seed}",
                                  skip_at_chance=2)
    row.update({f"c{c}": success.get(str(c)) for c in args.lengths})  # None: skipped
    if args.separation:
        row.update(memory_separation(actor, config.segment_len))
    print(json.dumps(row), flush=True)
    return row


def summarize(rows: list[dict], lengths: list[int]) -> list[dict]:
    """One entry per (recipe, variant), in the rows' order: worst seed per corridor (``skip``: a seed
    was at chance at two shorter corridors and not evaluated), the slowest seed's time-to-1.00, and
    how many seeds kept >= 0.95 at every corridor."""
    summary = []
    for recipe, v in dict.fromkeys((r["recipe"], r["variant"]) for r in rows):
        mine = [r for r in rows if r["variant"] == v and r["recipe"] == recipe]
        entry = {"recipe": recipe, "variant": v, "seeds": len(mine), "train_seconds": sum(r["train_seconds"] for r in mine) / len(mine)}
        for key in ("t100", "t1000"):
            times = [r[key] for r in mine]
            entry[key] = max(times) if all(t is not None for t in times) else None  # slowest seed; None: one never did
        for c in lengths:
            vals = [r.get(f"c{c}") for r in mine]
            entry[f"c{c}"] = "skip" if None in vals else f"{min(vals):.2f}"
        good = [generalised(r.get(f"c{c}") for c in lengths) for r in mine]
        entry["ok"] = f"{sum(good)}/{len(mine)}"
        summary.append(entry)
    return summary


def read_rows(paths: list[str]) -> list[dict]:
    """Rows of earlier runs' CSVs (numbers parsed, empty cells None); a (variant, recipe, seed) run
    that appears in several files counts once, from the last file."""
    import csv

    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                parsed = {}
                for k, v in row.items():
                    try:
                        parsed[k] = None if v == "" else (v if k in ("variant", "recipe", "probes") else json.loads(v))
                    except json.JSONDecodeError:
                        parsed[k] = v
                parsed["options"] = option_set_of(parsed["variant"])
                rows.append(parsed)
    return list({(r["variant"], r["recipe"], r["seed"]): r for r in rows}.values())


def main() -> None:
    args = parse_dataclass(Args, __doc__, check=check_args)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.from_csv:
        rows = read_rows(args.from_csv)
    else:
        rows = [run_one(v, s, args) for v in args.variants for s in args.seeds]
    out = Path(args.out)
    summary = summarize(rows, args.lengths)
    cols = [("recipe", "recipe", "s"), ("variant", "variant", "s"), ("seeds", "seeds", "d"), ("ok", f">={SOLVED} all", "s"),
            ("train_seconds", "train s", ".0f"), ("t100", "1.00@100 s", ".0f"), ("t1000", "1.00@1000 s", ".0f")] + \
           [(f"c{c}", f"c={c:,}", "s") for c in args.lengths]
    title = (f"T-Maze fidelity, worst seed per cell (time-to-1.00: slowest seed; "
             f"'-': a seed never did), {machine('cpu')}")
    print(f"\n{title}\n{format_table(summary, cols)}")
    write_csv(rows, out / "tmaze_fidelity.csv")
    (out / "tmaze_fidelity.md").write_text(f"### {title}\n\n{format_table(summary, cols, markdown=True)}\n")
    print(json.dumps({"benchmark": "tmaze_fidelity", "args": asdict(args), "summary": summary,
                      "total_seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
