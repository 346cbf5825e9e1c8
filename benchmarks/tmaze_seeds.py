"""T-Maze BC over seeds: how often the tutorial's default command generalises to corridor 10^4.

Runs ``tutorials/offline_bc.py --seed S`` (as a user would: one process per seed, ``--jobs`` at a
time, each with ``--threads`` torch threads, any further tutorial flags after ``--``) and reads the
JSON line each run ends with. One row per seed: training seconds, the kept step, the validation
probes at the selection corridor (every ``--select-every`` steps), greedy success at every
evaluation corridor, and whether the run generalised (>= 0.95 at every corridor). The seeds default
to ones the tutorial's own results never use.

    python benchmarks/tmaze_seeds.py                                  # seeds 100 and 101, 2 at a time
    python benchmarks/tmaze_seeds.py --seeds 100 101 102 103 104 105 106 107 108 109
    python benchmarks/tmaze_seeds.py --seeds 0 1 -- --steps 100      # tutorial flags after --

Prints the table, writes ``<out>/tmaze_seeds.{csv,md,json}`` and ends with one JSON line (the .json).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from torchrl_elmur.training.benchmarking import write_report

from torchrl_elmur.training.cli import parse_dataclass
from torchrl_elmur.training.tmaze_eval import SOLVED, generalised

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "tutorials" / "offline_bc.py"


@dataclass
class Args:
    seeds: list[int] = field(default_factory=lambda: [100, 101])  # one tutorial run per seed
    jobs: int = 2  # runs at a time (processes)
    threads: int = 1  # torch threads per run
    out: str = "outputs/benchmarks/tmaze_seeds"  # table files; each run's output folder and log under seed_<S>/


def check(args: Args) -> str | None:
    if not args.seeds:
        return "--seeds: expected at least one seed, received none"
    if len(set(args.seeds)) != len(args.seeds):
        return f"--seeds: expected distinct seeds, received {args.seeds}"
    for name in ("jobs", "threads"):
        if getattr(args, name) < 1:
            return f"--{name} must be >= 1, received {getattr(args, name)}"
    return None


def run_seed(seed: int, args: Args, extra: list[str]) -> dict:
    """One tutorial run; its last stdout line is the tutorial's JSON (``{"elmur": {...}}``)."""
    folder = Path(args.out) / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(TUTORIAL), "--seed", str(seed), "--threads", str(args.threads), "--out", str(folder),
               "--wandb", "disabled", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    (folder / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"seed {seed}: {' '.join(command)} exited {proc.returncode}: {tail[0]} "
                           f"(log: {folder / 'log.txt'})")
    (policy, result), = json.loads(proc.stdout.strip().splitlines()[-1]).items()
    return {"seed": seed, "policy": policy, "wall_s": wall, **result}


def row_of(run: dict) -> dict:
    """The table row of one run: corridors as columns, probes as 'step:success' pairs."""
    ok = generalised(run["success"].values())
    return {"seed": run["seed"], "wall_s": run["wall_s"], "train_s": run["train_seconds"],
            "kept_step": run["selected_step"],
            "probes": " ".join(f"{p['step']}:{p['success']:.2f}" for p in run["probes"]),
            **{f"c={c}": v for c, v in run["success"].items()}, "ok": "yes" if ok else "no"}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parse_dataclass(Args, __doc__.splitlines()[0], check=check,
                           argv=argv[:argv.index("--")] if "--" in argv else argv)
    with ThreadPoolExecutor(args.jobs) as pool:  # each thread waits on one tutorial process
        runs = list(pool.map(lambda s: run_seed(s, args, extra), args.seeds))
    rows = [row_of(r) for r in runs]
    ok = sum(r["ok"] == "yes" for r in rows)
    corridors = [k for k in rows[0] if k.startswith("c=")]
    header = (f"T-Maze BC, `tutorials/offline_bc.py --seed S {' '.join(extra)}`".rstrip() + f"; {ok} of {len(rows)} seeds "
              f">= {SOLVED} at every corridor; {platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s) per run, {args.jobs} run(s) at a time")
    columns = ([("seed", "seed", "d"), ("wall_s", "wall s", ".0f"), ("train_s", "train s", ".0f"),
                ("kept_step", "kept step", "d")] + [(c, c, ".2f") for c in corridors]
               + [("ok", f">= {SOLVED} all", "s"), ("probes", "probes (step:success)", "s")])
    out = write_report("tmaze_seeds", header, rows, columns, args.out)
    result = json.dumps({"benchmark": "tmaze_seeds", "extra_flags": extra, "generalised": ok, "seeds": len(rows),
                         "runs": runs})
    (out / "tmaze_seeds.json").write_text(result + "\n")
    print(f"wrote {out / 'tmaze_seeds.csv'}, .md, .json")
    print(result)


if __name__ == "__main__":
    main()
