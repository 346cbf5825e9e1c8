"""Which ELMUR options should be the default: the named option sets on the project's three families.

Each option set of ``OPTION_SETS`` (norm, detach, dropout, init, FFN, write rule; sizes stay each
family's) is run by the family's own script, as a user would run it, one process per (family,
option set), ``--jobs`` at a time:

- T-Maze BC (``tmaze_fidelity.py --variants options-<name>``, the BC tutorial's recipe, the
  published T-Maze sizes): seeds that keep >= 0.95 at every corridor to 10^4, and the worst
  success at the longest corridor (0.50, chance, where a seed was not evaluated there because it
  was at chance at two shorter ones);
- POPGym BC (``popgym_suite.py --policies elmur --options <name>``, the default 6-task subset):
  the sum of mean returns (oracle: +6);
- online PPO on RepeatFirstEasy (``tutorials/online_ppo.py --options <name>``): greedy evaluation
  return, mean and std over the seeds;

beside the multiply-adds of one step of ``ELMURModule(input_size=64, hidden_size=128)`` with those
options (``torchrl_elmur.core.cost``), as a multiple of a GRU's. A (family, option set) whose result
file is already in ``--out`` is read, not rerun, so an interrupted run resumes; ``--tmaze-csv``
adds earlier ``tmaze_fidelity.py`` rows whose configuration equals an option set's (its ``options``
column).

    python benchmarks/default_options.py                       # quick: 2 option sets, tiny budgets (minutes)
    python benchmarks/default_options.py --full                # the evidence protocol (hours on this CPU)
    python benchmarks/default_options.py --full --options bare released --families popgym ppo

Prints the table, writes ``<out>/default_options.{csv,md,json}`` and ends with one JSON line.
"""
from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torchrl_elmur.training.benchmarking import write_report

from torchrl_elmur import ELMURConfig
from torchrl_elmur.core.config import OPTION_SETS, OptionSetName, with_options
from torchrl_elmur.core.cost import elmur_step_macs, rnn_step_macs
from torchrl_elmur.training.cli import parse_dataclass
from torchrl_elmur.training.tmaze_eval import SOLVED, generalised

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("tmaze", "popgym", "ppo")
QUICK = {  # tiny budgets: the machinery end to end in minutes, not evidence
    "tmaze": ["--steps", "20", "--episodes", "100", "--probe-every", "0", "--lengths", "30", "100",
              "--eval-episodes", "10", "--no-separation"],
    "popgym": ["--tasks", "RepeatFirstEasy", "--steps", "20", "--episodes", "50", "--eval-episodes", "10"],
    "ppo": ["--frames", "2048", "--eval-episodes", "10"],
}


@dataclass
class Args:
    options: list[OptionSetName] = field(default_factory=lambda: ["bare", "released"])  # names in OPTION_SETS (--full: all)
    families: list[Literal["tmaze", "popgym", "ppo"]] = field(default_factory=lambda: list(FAMILIES))
    full: bool = False  # the evidence protocol: every option set, each script's defaults (quick otherwise: tiny budgets)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # T-Maze and PPO seeds (POPGym: --popgym-seed)
    popgym_seed: int = 0  # POPGym: one run of the 6-task subset
    jobs: int = 2  # runs at a time (processes, 1 torch thread each)
    tmaze_csv: list[str] = field(default_factory=list)  # earlier tmaze_fidelity.py CSVs: rows whose config equals an option set's count
    out: str = "outputs/benchmarks/default_options"  # one folder per family and option set; the table


def check(args: Args) -> str | None:
    if not args.seeds:
        return "--seeds: expected at least one seed, received none"
    for path in args.tmaze_csv:
        if not Path(path).is_file():
            return f"--tmaze-csv: no such file {path!r}"
        with open(path, newline="") as f:
            if "options" not in (csv.DictReader(f).fieldnames or []):
                return (f"--tmaze-csv: {path!r} has no 'options' column; rewrite it with "
                        f"`tmaze_fidelity.py --from-csv {path} --out DIR` and pass DIR/tmaze_fidelity.csv")
    return None


def command(family: str, option: str, folder: Path, args: Args) -> list[str]:
    """The family's own script with this option set (and the quick budgets unless ``--full``)."""
    quick = [] if args.full else QUICK[family]
    seeds = [str(s) for s in args.seeds]
    if family == "tmaze":
        base = ["benchmarks/tmaze_fidelity.py", "--variants", f"options-{option}", "--seeds", *seeds]
    elif family == "popgym":
        base = ["benchmarks/popgym_suite.py", "--policies", "elmur", "--options", option, "--seed", str(args.popgym_seed),
                "--no-progress"]
    else:
        base = ["tutorials/online_ppo.py", "--options", option, "--seeds", *seeds, "--wandb", "disabled", "--no-progress"]
    return [sys.executable, *base, "--threads", "1", "--out", str(folder), *quick]


RESULT_FILE = {"tmaze": "tmaze_fidelity.csv", "popgym": "popgym_suite.json", "ppo": "result.json"}


def run(family: str, option: str, args: Args) -> Path:
    """Run one (family, option set) unless it ran before; returns its result file, or its
    ``failed.txt`` (the script's last error line) when the script exited with an error: a failure
    is a result (dropout, for instance, breaks online PPO's exact replay), not a reason to stop."""
    folder = Path(args.out) / family / option
    result, failed = folder / RESULT_FILE[family], folder / "failed.txt"
    for path in (result, failed):
        if path.exists():
            return path
    folder.mkdir(parents=True, exist_ok=True)
    cmd = command(family, option, folder, args)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    (folder / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        print(f"{family}/{option}: exited {proc.returncode}: {last[0]} (log: {folder / 'log.txt'})", flush=True)
        failed.write_text(last[0] + "\n")
        return failed
    if family == "ppo":  # the tutorial's last line is its summary; keep it beside the wall time
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        result.write_text(json.dumps({**summary, "wall_seconds": time.perf_counter() - t0}) + "\n")
    print(f"{family}/{option}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def tmaze_rows(option: str, files: list[Path]) -> list[dict]:
    """T-Maze rows (one per seed, the tutorial recipe) of the option set, from ``files`` (the
    ``options`` column of ``tmaze_fidelity.py``: the set whose configuration equals the variant's)."""
    rows = {}
    for path in files:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["recipe"] == "tutorial" and row.get("options") == option:
                    rows[int(row["seed"])] = row
    return [rows[s] for s in sorted(rows)]


def summarize(option: str, results: dict[str, Path], args: Args) -> dict:
    """One table row: the option set's result in every family run."""
    config = with_options(ELMURConfig(input_size=64, d_model=128), option)
    gru = rnn_step_macs(64, 128)
    row = {"options": option, "macs_x_gru": elmur_step_macs(config) / gru}
    for family, path in results.items():
        if path.name == "failed.txt":
            row[f"{family}_failed"] = path.read_text().strip()
    results = {f: p for f, p in results.items() if p.name != "failed.txt"}
    if "tmaze" in results:
        rows = tmaze_rows(option, [results["tmaze"], *map(Path, args.tmaze_csv)])
        corridors = sorted({int(c[1:]) for r in rows for c in r if c.startswith("c") and c[1:].isdigit()})
        ok = [generalised(r.get(f"c{c}") or None for c in corridors) for r in rows]
        row["tmaze_ok"] = f"{sum(ok)}/{len(rows)}"
        # success at the longest corridor; a seed skipped there (at chance at two shorter ones) counts as chance
        last = [float(r[f"c{corridors[-1]}"]) if r.get(f"c{corridors[-1]}") else 0.5 for r in rows]
        row["tmaze_worst_last"] = min(last) if last else None
        row["tmaze_seeds"] = " ".join(r["seed"] for r in rows)
    if "popgym" in results:
        run = json.loads(results["popgym"].read_text())
        row["popgym_sum"] = next(v["elmur"] for k, v in run["sums"].items() if k.startswith("sum: All"))
        row["popgym_tasks"] = len(run["tasks"])
    if "ppo" in results:
        run = json.loads(results["ppo"].read_text())
        values = run["elmur"]["eval_return"]["values"]
        row["ppo_eval_mean"] = statistics.mean(values)
        row["ppo_eval_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        row["ppo_eval_values"] = " ".join(f"{v:+.2f}" for v in values)
    return row


def main() -> None:
    args = parse_dataclass(Args, __doc__.splitlines()[0], check=check)
    if args.full and args.options == Args().options:
        args.options = list(OPTION_SETS)
    jobs = [(f, o) for o in args.options for f in args.families]
    with ThreadPoolExecutor(args.jobs) as pool:  # each thread waits on one process
        files = dict(zip(jobs, pool.map(lambda job: run(*job, args), jobs)))
    rows = [summarize(o, {f: files[(f, o)] for f in args.families}, args) for o in args.options]
    columns = [("options", "option set", "s"), ("macs_x_gru", "step MACs x GRU", ".1f")]
    if "tmaze" in args.families:
        columns += [("tmaze_ok", f"T-Maze >= {SOLVED} all", "s"), ("tmaze_worst_last", "T-Maze worst, longest corridor", ".2f")]
    if "popgym" in args.families:
        columns += [("popgym_sum", "POPGym sum", "+.3f")]
    if "ppo" in args.families:
        columns += [("ppo_eval_mean", "PPO eval mean", "+.3f"), ("ppo_eval_std", "PPO eval std", ".3f"),
                    ("ppo_eval_values", "PPO eval per seed", "s")]
    failures = [f"{r['options']} / {k[:-len('_failed')]}: {v}" for r in rows for k, v in r.items() if k.endswith("_failed")]
    header = (f"ELMUR option sets on the three families ({'evidence protocol' if args.full else 'QUICK budgets: not evidence'}; "
              f"seeds {args.seeds}, POPGym seed {args.popgym_seed}; 1 torch thread per run, {args.jobs} at a time)")
    if failures:  # a family whose script failed for an option set: empty cells, the reason below the header
        header += "\n\nFailed (empty cells):\n" + "\n".join(f"- {f}" for f in failures)
    out = write_report("default_options", header, rows, columns, args.out)
    result = json.dumps({"benchmark": "default_options", "full": args.full, "rows": rows})
    (out / "default_options.json").write_text(result + "\n")
    print(f"wrote {out / 'default_options.csv'}, .md, .json")
    print(result)


if __name__ == "__main__":
    main()
