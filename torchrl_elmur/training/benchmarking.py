"""What the benchmark scripts (``benchmarks/``) share: timing (interleaved medians, ELMUR's step path and its
window-recompute floor), the machine's description, tables (text and Markdown), CSV, reports and plots,
and the rows a long benchmark has finished (:class:`RowLog`)."""
from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..core import ELMURBackbone, window_recompute


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
                 per_panel: int = 8, errors: dict[str, dict[str, float]] | None = None) -> None:
    """A PNG of one group of bars per row of ``table`` (``{row: {column: value}}``), one bar per column;
    ``marks``: a dotted line per row at that value (e.g. chance); ``errors``: an error bar (e.g. the
    std over seeds) per ``{row: {column: half-height}}``. More than ``per_panel`` rows wrap
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
            yerr = [(errors or {}).get(r, {}).get(c, 0.0) for r in chunk] if errors else None
            ax.bar(x + (i - (len(columns) - 1) / 2) * width, [table[r].get(c, 0.0) for r in chunk], width, label=c,
                   color=f"C{i}", yerr=yerr, capsize=3 if errors else 0, error_kw={"linewidth": 1})
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
    # a title wider than the figure wraps (it was cut at the edges); the legend moves down a line per extra line
    lines = textwrap.wrap(title, max(20, int(fig.get_figwidth() * 72 / (10 * 0.6)))) or [""]
    extra = 0.17 * (len(lines) - 1)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=len(columns), loc="upper center",
               bbox_to_anchor=(0.5, 1.0 - (0.25 + extra) / fig.get_figheight()))
    fig.suptitle("\n".join(lines), fontsize=10, y=1.0 - 0.02 / fig.get_figheight())
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))  # tight_layout also makes room for the title
    fig.savefig(path, dpi=120)
    plt.close(fig)


def backbone_steps(net: ELMURBackbone, batch: int, steps: int, device: str, start: int = 10,
                   step_fn=None) -> Callable[[], None]:
    """``steps`` calls of ``net.step`` (or ``step_fn``, e.g. ``partial(net.step, inplace=True)``) from
    episode step ``start`` (rounded down to a segment boundary)."""
    K = net.config.segment_len
    x = torch.randn(batch, steps, net.config.token_size, device=device)
    step_fn = step_fn or net.step

    @torch.no_grad()
    def run():
        s = net.initial_state(batch)
        s.step += start - start % K  # the state has a fixed shape: any episode step is one number away
        for t in range(steps):
            _, s = step_fn(x[:, t], s)
    return run


def step_path_ms(net: ELMURBackbone, batch: int, start_step: int, repeats: int, device: str, step_fn=None) -> float:
    """Best ms per step of ``net.step`` (or ``step_fn``) over two full segments from episode step
    ``start_step`` ."""
    steps = 2 * net.config.segment_len
    return 1e3 * best_of(backbone_steps(net, batch, steps, device, start_step, step_fn), repeats, device) / steps


@torch.no_grad()
def window_recompute_ms(net: ELMURBackbone, batch: int, repeats: int, device: str) -> float:
    """Best ms per step of the reference (re-run the segment's window every step) over two segments."""
    K = net.config.segment_len
    x = torch.randn(batch, 2 * K, net.config.token_size, device=device)
    return 1e3 * best_of(lambda: window_recompute(net, x), repeats, device) / (2 * K)


class RowLog:
    """The finished rows of a long benchmark, kept as they finish so that a rerun skips them: one JSON
    line per row, appended, flushed and synced to disk at once, so a run killed at any moment loses at
    most the row in progress (a half-written last line is ignored). Rows are matched on ``key`` fields.

    Examples:
        >>> import tempfile
        >>> log = RowLog(tempfile.mkdtemp() + "/rows.jsonl", key=("policy", "length"))
        >>> log.add({"policy": "gru", "length": 10, "success": 1.0})
        >>> RowLog(log.path, key=("policy", "length")).get(policy="gru", length=10)["success"]
        1.0
        >>> log.get(policy="gru", length=30) is None
        True
    """

    def __init__(self, path: str | Path, key: Sequence[str], fresh: bool = False) -> None:
        self.path, self.key = Path(path), tuple(key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.path.unlink(missing_ok=True)
        self.rows: dict[tuple, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # the line a killed run was writing
                    continue
                self.rows[tuple(row.get(k) for k in self.key)] = row

    def get(self, **key) -> dict | None:
        """The recorded row with these key values, or None."""
        return self.rows.get(tuple(key[k] for k in self.key))

    def get_or_add(self, compute: Callable[[], dict | None], **key) -> tuple[dict | None, bool]:
        """The row recorded under ``key`` and True; else ``compute()``'s row with ``key``, recorded
        (unless ``compute`` returns None, e.g. on a torchrun rank that does not report), and False.

        Examples:
            >>> import tempfile
            >>> log = RowLog(tempfile.mkdtemp() + "/rows.jsonl", key=("policy",))
            >>> log.get_or_add(lambda: {"success": 0.5}, policy="gru")
            ({'success': 0.5, 'policy': 'gru'}, False)
            >>> log.get_or_add(lambda: 1 / 0, policy="gru")      # recorded: not computed again
            ({'success': 0.5, 'policy': 'gru'}, True)
        """
        row = self.get(**key)
        if row is not None:
            return row, True
        row = compute()
        if row is not None:
            row = {**row, **key}
            self.add(row)
        return row, False

    def add(self, row: dict) -> None:
        """Record a finished row (durably, before returning)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows[tuple(row.get(k) for k in self.key)] = row
