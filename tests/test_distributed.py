"""DDP under torchrun: N ranks with B/N rows each take the steps one process takes with B rows."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddp_bc_run import build_actor  # a helper beside this file (pytest puts tests/ on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "ddp_bc_run.py"


def torchrun(nproc: int, out: Path, *args: str, timeout: int = 120, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    """torchrun with its output in a log file (``.stderr`` holds it): through pipes, 2-rank runs hung
    on this machine (benchmarks/scaling.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ELMUR_DDP_TIMEOUT": "60"}
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                               str(script), str(out), *args], stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    proc.stderr = log.read_text()
    return proc


def trained(nproc: int, tmp_path: Path, updates: str, optimizer: str) -> dict:
    out = tmp_path / f"{updates}_{optimizer}_{nproc}.pt"
    proc = torchrun(nproc, out, "4", "8", updates, optimizer)
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = torch.load(out)
    assert params.pop("world_size") == nproc
    return params


@pytest.mark.parametrize("updates, optimizer", [("window", "adamw"), ("segment", "sgd")])
def test_two_ranks_take_the_steps_of_one(tmp_path, updates, optimizer):
    """4 optimizer steps (8 with segment updates) on 8 rows of T-Maze data (float64, no dropout):
    1 process with the 8 rows, or 2 ranks with 4 rows each, end with the same weights."""
    one, two = trained(1, tmp_path, updates, optimizer), trained(2, tmp_path, updates, optimizer)
    start = build_actor().state_dict()
    assert one.keys() == two.keys() == start.keys()
    floats = [k for k in one if one[k].is_floating_point()]
    moved = max((one[k] - start[k]).abs().max().item() for k in floats)
    apart = max((one[k] - two[k]).abs().max().item() for k in floats)
    assert moved > 1e-3, "training should change the weights"
    assert apart < 1e-10, f"the 2-rank weights differ from the 1-process weights by {apart:.2e}"


def test_iql_tutorial_loop_two_ranks_take_the_steps_of_one(tmp_path):
    """The IQL tutorial's own loop (DiscreteIQLLoss with functional actor, Q and V networks, SoftUpdate
    targets, per-network clipping, AdamW): 1 process with 8 rows or 2 ranks with 4 each, 3 steps,
    float64 without dropout, end with the same parameters (targets included)."""
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"iql_{nproc}.pt"
        proc = torchrun(nproc, out, "3", "8", script=ROOT / "tests" / "ddp_iql_run.py", timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[nproc] = torch.load(out)
        assert runs[nproc].pop("world_size") == nproc
    one, two = runs[1], runs[2]
    assert one.keys() == two.keys()
    floats = [k for k in one if one[k].is_floating_point()]
    assert len(floats) > 50  # actor, Q-network, value network and the target Q-network
    apart = max((one[k] - two[k]).abs().max().item() for k in floats)
    assert apart < 1e-10, f"the 2-rank parameters differ from the 1-process ones by {apart:.2e}"


def test_a_dead_rank_fails_the_run_within_the_time_out(tmp_path):
    start = time.monotonic()
    proc = torchrun(2, tmp_path / "never.pt", "4", "8", "crash", "sgd")
    assert proc.returncode != 0 and "rank 1 stops here on purpose" in proc.stderr
    assert time.monotonic() - start < 90 and not (tmp_path / "never.pt").exists()


def test_offline_bc_tutorial_under_torchrun(tmp_path):
    """The BC tutorial as a user launches it on 2 processes: rank 0 alone reports and saves."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ELMUR_DDP_TIMEOUT": "60", "WANDB_SILENT": "true"}
    out = tmp_path / "bc"
    with open(tmp_path / "stdout.log", "w") as so, open(tmp_path / "stderr.log", "w") as se:  # files, not pipes
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(ROOT / "tutorials/offline_bc.py"), "--steps", "2", "--episodes", "12", "--batch", "4",
                               "--eval-lengths", "3", "--eval-episodes", "2", "--wandb", "offline", "--out", str(out),
                               "--threads", "1", "--select-corridor", "0"], stdout=so, stderr=se, env=env, timeout=240,
                              cwd=ROOT)
    proc.stdout, proc.stderr = (tmp_path / "stdout.log").read_text(), (tmp_path / "stderr.log").read_text()
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines.count("== elmur (2 ranks x 2 rows)") == 1  # printed by rank 0 only
    assert set(json.loads(lines[-1])["elmur"]["success"]) == {"3"}
    assert (out / "elmur.pt").stat().st_size > 0
