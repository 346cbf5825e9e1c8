"""Shared helpers of the benchmark scripts: timing, machine description, tables, CSV."""
from __future__ import annotations

import csv
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def sync(device: str | torch.device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def best_of(fn: Callable[[], object], repeats: int, device: str | torch.device, warmup: int = 1) -> float:
    """Best wall time (seconds) of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def medians_ms(candidates: dict[str, tuple[Callable[[], None], int]], rounds: int, device: str) -> dict[str, float]:
    """Median ms per step of each ``(run, steps)`` over ``rounds`` rounds; every round times every
    candidate once, in turn (so a slow moment of a shared machine hits all of them alike)."""
    for run, _ in candidates.values():  # warm-up (and compilation)
        run()
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, (run, steps) in candidates.items():
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            times[name].append(1e3 * (time.perf_counter() - t0) / steps)
    return {name: statistics.median(v) for name, v in times.items()}


def machine(device: str | torch.device) -> str:
    if str(device).startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def state_bytes_per_env(module) -> int:
    """Bytes of recurrent state one env carries, from the module's primer specs."""
    specs = module.make_tensordict_primer().primers
    return sum(spec.shape.numel() * spec.dtype.itemsize for spec in specs.values(True, True))


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]], markdown: bool = False) -> str:
    """``columns``: (key, header, format spec); missing values print as ``-``."""
    def cell(row, key, spec):
        value = row.get(key)
        return "-" if value is None else format(value, spec)

    cells = [[cell(r, k, f) for k, _, f in columns] for r in rows]
    headers = [h for _, h, _ in columns]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = [" ".join(h.rjust(w) for h, w in zip(headers, widths)), "-" * (sum(widths) + len(widths) - 1)]
    lines += [" ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_report(name: str, header: str, rows: Sequence[dict], columns: Sequence[tuple[str, str, str]], out: str | Path,
                 csv_rows: Sequence[dict] | None = None) -> Path:
    """Print ``header`` and the table of ``rows``, and write ``<out>/<name>.csv`` (``csv_rows``, default
    ``rows``) and ``<out>/<name>.md`` (header and markdown table). Returns the folder."""
    print("\n" + header)
    print(format_table(rows, columns))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows if csv_rows is None else csv_rows, out / f"{name}.csv")
    (out / f"{name}.md").write_text(header + "\n\n" + format_table(rows, columns, markdown=True) + "\n")
    return out


def grouped_bars(table: dict[str, dict[str, float]], columns: Sequence[str], path: str | Path, *, ylabel: str, title: str,
                 marks: dict[str, float] | None = None, ylim: tuple[float, float] | None = None,
                 per_panel: int = 8) -> None:
    """A PNG of one group of bars per row of ``table`` (``{row: {column: value}}``), one bar per column;
    ``marks``: a dotted line per row at that value (e.g. chance). More than ``per_panel`` rows wrap
    into panels stacked vertically (same y-axis, one legend), so that 48 tasks stay readable at the
    width of a page instead of one strip of 48 groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(table)
    chunks = [rows[i:i + per_panel] for i in range(0, len(rows), per_panel)] or [[]]
    values = [table[r].get(c, 0.0) for r in rows for c in columns] + [0.0] + list((marks or {}).values())
    low, high = ylim if ylim is not None else (min(values), max(values))
    pad = 0.05 * (high - low or 1.0)
    width = 0.8 / len(columns)
    panel_width = max(5.0, 1.3 * len(chunks[0])) if len(chunks) == 1 else 1.3 * per_panel
    fig, axes = plt.subplots(len(chunks), 1, figsize=(panel_width, 0.6 + 2.9 * len(chunks)), squeeze=False)
    for ax, chunk in zip(axes[:, 0], chunks):
        x = np.arange(len(chunk))
        for i, c in enumerate(columns):
            ax.bar(x + (i - (len(columns) - 1) / 2) * width, [table[r].get(c, 0.0) for r in chunk], width, label=c,
                   color=f"C{i}")
        for j, r in enumerate(chunk):
            if marks and r in marks:
                ax.hlines(marks[r], j - 0.4, j + 0.4, colors="black", linestyles="dotted", linewidth=1)
        slanted = len(chunk) > 3
        ax.set_xticks(x, chunk, rotation=25 if slanted else 0, ha="right" if slanted else "center", fontsize=8)
        ax.set_xlim(-0.6, (per_panel if len(chunks) > 1 else len(chunk)) - 0.4)
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_ylim(*(ylim if ylim is not None else (low - pad, high + pad)))
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(axis="y", linewidth=0.3, alpha=0.5)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=len(columns), loc="upper center", bbox_to_anchor=(0.5, 1.0 - 0.25 / fig.get_figheight()))
    fig.suptitle(title, fontsize=10, y=1.0 - 0.02 / fig.get_figheight())
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def suite_errors(args, *, presets, task_name: Callable[[str], str], positive: Sequence[str]) -> str | None:
    """What the behaviour-cloning suites check alike: ``--policies`` among the memories, ``--preset``
    among ``presets``, every ``--tasks`` entry accepted by ``task_name`` (its ValueError becomes the
    message), and the ``positive`` count flags >= 1. None when all hold."""
    from torchrl_elmur.training.policies import MEMORIES

    bad = [p for p in args.policies if p not in MEMORIES]
    if bad:
        return f"--policies: unknown {bad}, expected some of {list(MEMORIES)}"
    if args.preset not in presets:
        return f"--preset: expected one of {list(presets)}, received {args.preset!r}"
    try:
        [task_name(t) for t in args.tasks]
    except ValueError as err:
        return f"--tasks: {err}"
    for name in positive:
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, received {getattr(args, name)}"
    return None
