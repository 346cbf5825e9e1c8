"""A run killed at a random update and resumed from its training state ends with the weights of the
uninterrupted run (BC and IQL; float64 on a CPU: to the bit), dropout, sampling and checkpoint selection
included; online PPO resumes at the update boundary with fresh rollouts."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
SCRIPT = f"""
import sys
import torch
from torchrl_elmur import ELMURConfig
from torchrl_elmur.data import make_tmaze_dataset
from torchrl_elmur.objectives import SequenceCrossEntropyLoss
from torchrl_elmur.training.bc import fit_bc
from torchrl_elmur.training.policies import make_bc_actor

out, resume = sys.argv[1], sys.argv[2] == "resume"
torch.set_num_threads(1)
torch.manual_seed(0)
config = ELMURConfig.tmaze_released(input_size=16, d_model=16, segment_len=5, memory_slots=2)  # dropout, MoE
actor = make_bc_actor("elmur", 4, num_actions=4, width=16, config=config).double()
data = make_tmaze_dataset(32, max_corridor=8, seed=0).apply(lambda t: t.double() if t.is_floating_point() else t)

def probe(policy):  # a score that moves with the weights: selection state must survive the kill too
    score = float(next(policy.parameters()).sum())
    print("done", len(history_steps) + 1, flush=True)
    history_steps.append(1)
    return {{"score": score}}

history_steps = []
history = fit_bc(actor, SequenceCrossEntropyLoss(actor), data, steps={STEPS}, batch=4, seq_len=10, lr=1e-2, seed=0,
                 chunk_len=5, progress=True, probe=probe, probe_every=1, select="score",
                 checkpoint=out + "/train.pt", checkpoint_every=2, resume=resume)
torch.save({{"weights": actor.state_dict(), "selected": history.selected_step,
            "probes": [p["result"]["score"] for p in history.probes]}}, out + "/final.pt")
"""


def run(folder: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(folder), mode], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    assert run(whole, "fresh").returncode == 0
    kill_at = random.Random().randint(4, STEPS - 1)  # a random update; a state from step 2 on exists by then
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(cut), "fresh"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stdout:
        if line.strip() == f"done {kill_at}":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (cut / "final.pt").exists()
    resumed = run(cut, "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    step = int(resumed.stdout.split("at step ")[1].split()[0]) if "at step " in resumed.stdout else \
        int(resumed.stderr.split("at step ")[1].split()[0])
    assert step in (2, 4, 6) and step <= kill_at
    a, b = torch.load(whole / "final.pt"), torch.load(cut / "final.pt")
    assert a["selected"] == b["selected"] and a["probes"] == b["probes"]
    assert max((a["weights"][k] - b["weights"][k]).abs().max().item() for k in a["weights"]) == 0.0
    assert sorted(p.name for p in cut.iterdir()) == ["final.pt", "train.pt"]  # no partial file left


def test_a_corrupt_training_state_is_refused_and_the_loop_checks_its_arguments(tmp_path):
    from torchrl_elmur.data import make_offline_replay_buffer, make_tmaze_dataset
    from torchrl_elmur.objectives import SequenceCrossEntropyLoss
    from torchrl_elmur.training.bc import train_bc
    from torchrl_elmur.training.policies import make_bc_actor

    actor = make_bc_actor("gru", 4, num_actions=4, width=8)
    buffer = make_offline_replay_buffer(make_tmaze_dataset(8, max_corridor=4), 2, 6, seed=0)
    args = (actor, SequenceCrossEntropyLoss(actor), buffer, torch.optim.AdamW(actor.parameters()))
    kw = dict(steps=2, batch=2, seq_len=6, grad_clip=1.0, progress=False)
    train_bc(*args, **kw, checkpoint=tmp_path / "s.pt")  # the last step's state, even without checkpoint_every
    state = torch.load(tmp_path / "s.pt", weights_only=False)
    assert state["step"] == 2 and state["parts"]["sampler"]["generator"] is not None
    (tmp_path / "cut.pt").write_bytes((tmp_path / "s.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"training state .*cut.pt is not readable .*truncated, corrupt"):
        train_bc(*args, **kw, checkpoint=tmp_path / "cut.pt", resume=True)
    with pytest.raises(ValueError, match=r"s.pt is a run of 2 steps, this one has 3"):
        train_bc(*args, **{**kw, "steps": 3}, checkpoint=tmp_path / "s.pt", resume=True)
    with pytest.raises(ValueError, match=r"checkpoint_every must be >= 0 and needs a checkpoint file, received "
                                         r"checkpoint_every=2, checkpoint=None"):
        train_bc(*args, **kw, checkpoint_every=2)
    start = time.perf_counter()
    history = train_bc(*args, **kw, checkpoint=tmp_path / "s.pt", resume=True)  # already done: no step is taken
    assert history.train_seconds == state["extra"]["history"]["train_seconds"] and time.perf_counter() - start < 5


def test_a_resume_with_other_settings_is_refused_before_anything_is_loaded(tmp_path):
    """Another learning rate (the optimizer's saved state would silently override it), batch, seed or
    caller's config: an error that names each difference, and the modules keep their weights."""
    from torchrl_elmur.data import make_tmaze_dataset
    from torchrl_elmur.objectives import SequenceCrossEntropyLoss
    from torchrl_elmur.training.bc import fit_bc
    from torchrl_elmur.training.policies import make_bc_actor

    data = make_tmaze_dataset(8, max_corridor=4)

    def fit(lr=1e-3, batch=2, seed=0, config=None):
        torch.manual_seed(1)
        actor = make_bc_actor("gru", 4, num_actions=4, width=8)
        fit_bc(actor, SequenceCrossEntropyLoss(actor), data, steps=2, batch=batch, seq_len=6, lr=lr, seed=seed,
               progress=False, checkpoint=tmp_path / "s.pt", resume=True, config=config)
        return actor

    fit(config={"--episodes": 8})
    for change, message in [(dict(lr=3e-4), r"optimizer 'optimizer' group 0 lr: 0.001 there, 0.0003 here"),
                            (dict(batch=4), r"batch: 2 there, 4 here"),
                            (dict(seed=5), r"seed: 0 there, 5 here"),
                            (dict(config={"--episodes": 16}), r"--episodes: 8 there, 16 here"),
                            (dict(config={}), r"--episodes: 8 there, \(none\) here")]:
        with pytest.raises(ValueError, match=r"s.pt is a run with other settings; .*" + message):
            fit(**{"config": {"--episodes": 8}, **change})
    torch.manual_seed(1)
    fresh = make_bc_actor("gru", 4, num_actions=4, width=8)
    actor = make_bc_actor("gru", 4, num_actions=4, width=8)
    actor.load_state_dict(fresh.state_dict())
    with pytest.raises(ValueError, match="other settings"):
        fit_bc(actor, SequenceCrossEntropyLoss(actor), data, steps=2, batch=2, seq_len=6, lr=3e-4, seed=0,
               progress=False, checkpoint=tmp_path / "s.pt", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(actor.parameters(), fresh.parameters()))  # nothing was loaded


def test_the_horizon_benchmark_rerun_after_a_kill_loses_at_most_the_row_in_progress(tmp_path):
    """tmaze_horizon records each finished row at once: killed after its first row, a rerun evaluates
    only the rows that are missing, and the table equals an uninterrupted run's."""
    ckpt = tmp_path / "ckpt"
    flags = ["--policies", "gru", "--lengths", "3", "5", "3000", "--eval-episodes", "2", "--train-steps", "2",
             "--no-compile", "--checkpoints", str(ckpt), "--no-skip"]
    command = [sys.executable, str(ROOT / "benchmarks" / "tmaze_horizon.py"), *flags]
    whole = subprocess.run(command + ["--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "cut"
    proc = subprocess.Popen(command + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    rows_file, deadline = out / "tmaze_horizon.rows.jsonl", time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:  # kill once two rows are recorded: the third is under way
        if rows_file.exists() and len(rows_file.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    recorded = (out / "tmaze_horizon.rows.jsonl").read_text().splitlines()
    assert proc.returncode == -signal.SIGKILL and len(recorded) == 2
    rerun = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sum("recorded earlier" in line for line in rerun.stdout.splitlines()) == 2
    assert sum(": success " in line for line in rerun.stdout.splitlines()) == 1  # only corridor 3000 evaluated
    import json

    assert json.loads(rerun.stdout.splitlines()[-1])["success"] == json.loads(whole.stdout.splitlines()[-1])["success"]
    again = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "every length recorded" in again.stdout and ": success " not in again.stdout


def test_the_iql_tutorial_killed_and_resumed_ends_as_the_uninterrupted_run(tmp_path):
    """tutorials/offline_iql.py (actor, Q- and value networks, target networks, AdamW, sampler, RNGs):
    SIGKILLed after a random training state was written, then --resume: the saved policy and loss state
    equal the uninterrupted run's (CPU, 1 thread: the same operations in the same order, to the bit)."""
    from torchrl_elmur.training.checkpoint import read_policy_file

    flags = ["--steps", "6", "--checkpoint-every", "1", "--episodes", "24", "--batch", "4", "--seq-len", "12",
             "--width", "16", "--critic-width", "16", "--eval-lengths", "3", "--eval-episodes", "2", "--eval-every", "0",
             "--threads", "1", "--wandb", "disabled"]
    command = [sys.executable, str(ROOT / "tutorials" / "offline_iql.py"), *flags]
    whole = subprocess.run(command + ["--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out, kill_after = tmp_path / "cut", random.Random().randint(1, 4)
    proc = subprocess.Popen(command + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    state, deadline = out / "iql-elmur.train.pt", time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and torch.load(state, weights_only=False)["step"] >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (out / "iql-elmur.pt").exists()
    resumed = subprocess.run(command + ["--out", str(out), "--resume"], capture_output=True, text=True, timeout=300,
                             cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "train iql-elmur: resumed from" in resumed.stdout
    a, b = read_policy_file(tmp_path / "whole" / "iql-elmur.pt"), read_policy_file(out / "iql-elmur.pt")
    for x, y in ((a["state_dicts"][0], b["state_dicts"][0]), (a["extra"]["loss"], b["extra"]["loss"])):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_the_popgym_suite_rerun_reuses_its_recorded_rows(tmp_path):
    """popgym_suite records each (task, policy) row as it finishes: the same command again trains and
    evaluates nothing and reports the same table; another configuration does not reuse them."""
    import json

    pytest.importorskip("popgym")
    flags = ["--tasks", "RepeatPreviousEasy", "--policies", "gru", "mlp", "--episodes", "8", "--steps", "2", "--batch", "4",
             "--eval-episodes", "2", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path), "--no-progress"]
    command = [sys.executable, str(ROOT / "benchmarks" / "popgym_suite.py"), *flags]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sum("recorded earlier" in line for line in again.stdout.splitlines()) == 2
    assert json.loads(again.stdout.splitlines()[-1])["tasks"] == json.loads(first.stdout.splitlines()[-1])["tasks"]
    other = subprocess.run(command + ["--steps", "3"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert other.returncode == 0 and "recorded earlier" not in other.stdout


def test_the_online_ppo_tutorial_killed_and_resumed(tmp_path):
    """tutorials/online_ppo.py SIGKILLed after a random update's training state was written: that state
    holds the weights of an uninterrupted run of as many updates (to the bit: the same batches, the same
    updates), and --resume continues from it to the run's length with the curve up to that update
    unchanged. After it the rollouts are fresh (the collector's env states are not saved)."""
    import csv

    from torchrl_elmur.training.checkpoint import read_training_state

    flags = ["--frames", "4096", "--checkpoint-every", "1", "--eval-episodes", "0", "--wandb", "disabled", "--no-progress"]
    command = [sys.executable, str(ROOT / "tutorials" / "online_ppo.py"), *flags]
    out, kill_after = tmp_path / "cut", random.Random().randint(1, 3)
    proc = subprocess.Popen(command + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                            start_new_session=True)
    state, deadline = out / "elmur_seed0.train.pt", time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists() and torch.load(state, weights_only=False)["step"] >= kill_after:
                os.killpg(proc.pid, signal.SIGKILL)  # the learner and its collector workers, as a machine restart
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL and not (out / "elmur_seed0.pt").exists()
    cut = read_training_state(state)
    updates = cut["step"]
    short = subprocess.run([*command[:3], str(1024 * updates), *flags[2:], "--out", str(tmp_path / "short")],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)  # uninterrupted, `updates` updates
    assert short.returncode == 0, short.stderr[-2000:]
    whole = read_training_state(tmp_path / "short" / "elmur_seed0.train.pt")["parts"]
    assert whole["loss"].keys() == cut["parts"]["loss"].keys()  # actor and critic (the loss module holds both)
    assert all(torch.equal(whole["loss"][k], cut["parts"]["loss"][k]) for k in whole["loss"])
    adam, adam_cut = whole["optimizer"]["state"], cut["parts"]["optimizer"]["state"]
    assert adam.keys() == adam_cut.keys() and all(torch.equal(adam[i][k], adam_cut[i][k]) for i in adam for k in adam[i])
    resumed = subprocess.run(command + ["--out", str(out), "--resume"], capture_output=True, text=True, timeout=300,
                             cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"elmur seed 0: resumed from {state} at update {updates} of 4 ({1024 * updates} frames)" in resumed.stdout

    def rows(path):
        with open(path) as f:
            return [{k: v for k, v in r.items() if k not in ("collect_fps", "replay_error")} for r in csv.DictReader(f)]

    before, after = rows(tmp_path / "short" / "curves.csv"), rows(out / "curves.csv")
    assert len(after) == 4 and after[-1]["frames"] == "4096" and after[:updates] == before
    # resuming with another learning rate (a flag outside RESUME_FREE) is refused, naming the flag
    other = subprocess.run(command + ["--out", str(out), "--resume", "--lr", "0.01"], capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]  # one line, as a bad flag
    assert "online_ppo.py: error: training state" in other.stderr and "is a run with other settings" in other.stderr
    assert "--lr: 0.001 there, 0.01 here" in other.stderr, other.stderr[-2000:]


def test_a_script_extending_the_tmaze_recipe_resumes_with_its_own_flags_free():
    """offline_bc's Args extend TMazeBC with --out, --resume, evaluation: a resumed run differs from the
    first in --resume itself, which must not be part of what is compared."""
    from dataclasses import dataclass

    from torchrl_elmur.training.tmaze_bc import TMazeBC, resume_config

    @dataclass
    class Script(TMazeBC):
        resume: bool = False
        out: str = "x"

    first, again = resume_config(Script()), resume_config(Script(resume=True, out="y"))
    assert first == again and "--resume" not in first and first["--episodes"] == 2000
    assert resume_config(Script(episodes=10))["--episodes"] == 10
