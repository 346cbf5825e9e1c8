"""Smoke runs of tutorials/offline_iql.py through a subprocess, as a user would run it (tests/test_tutorials.py style)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tutorials/offline_iql.py"
TINY = ["--steps", "3", "--episodes", "12", "--batch", "4", "--seq-len", "12", "--width", "16", "--critic-width", "16",
        "--eval-lengths", "3", "12", "--eval-episodes", "4", "--eval-every", "2", "--threads", "1"]


def run(*flags: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


def test_compare_smoke(tmp_path):
    """--compare trains IQL-elmur, BC-elmur, IQL-lstm, IQL-gru and writes table, CSV, PNG, checkpoints, wandb, JSON."""
    out = tmp_path / "iql"
    proc = run("--compare", *TINY, "--wandb", "offline", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])  # the last line is one JSON object
    runs = ["iql-elmur", "bc-elmur", "iql-lstm", "iql-gru"]
    assert list(result) == runs
    for name in runs:
        assert set(result[name]["success"]) == {"3", "12"}
        assert all(0.0 <= v <= 1.0 for v in result[name]["success"].values())
        checkpoint = out / f"{name}.pt"
        assert checkpoint.stat().st_size > 0
    assert any(line.startswith("Success rate") for line in lines)  # the table
    assert any(line.startswith("data: 12 episodes") for line in lines)  # the data summary
    assert (out / "success_vs_length.png").stat().st_size > 0
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "method,policy,corridor_length,success,train_seconds,eval_seconds" and len(rows) == 1 + 2 * len(runs)
    assert (out / "wandb").is_dir()
    import torch

    from torchrl_elmur.training.checkpoint import load_policy, read_policy_file

    checkpoint = read_policy_file(out / "iql-elmur.pt")
    assert {"loss", "args"} <= set(checkpoint["extra"])
    assert any(k.startswith("target_qvalue_network_params") for k in checkpoint["extra"]["loss"])  # SoftUpdate targets saved
    actor = load_policy(out / "iql-elmur.pt")  # the actor, rebuilt from the file alone
    assert actor.in_keys == ["observation", "actor_rs", "is_init"]
    assert all(torch.equal(v, checkpoint["state_dicts"][0][k]) for k, v in actor.state_dict().items())


def test_rejects_bad_fractions(tmp_path):
    proc = run("--oracle", "0.5", "--wrong-turn", "0.4", "--wander", "0.4", "--out", str(tmp_path))
    assert proc.returncode == 2 and "must be >= 0 and sum to 1" in proc.stderr
