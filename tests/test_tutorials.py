"""Smoke runs of the tutorials and benchmarks through a subprocess, as a user would run them."""
import json
import os
import signal
import subprocess
import sys
import threading
import warnings
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(path: str, *flags: str, timeout: int = 300) -> list[str]:
    """Run a script as a user would; on time-out kill its whole process group: a grandchild (torchrun's
    ranks, collector workers) that outlives it would keep the pipes open and ``communicate`` waiting."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    proc = subprocess.Popen([sys.executable, str(ROOT / path), *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{path} ran past {timeout} s; its stderr ends with:\n{stderr[-3000:]}") from None
    assert proc.returncode == 0, stderr[-3000:]
    return stdout.strip().splitlines()


def test_quickstart():
    lines = run_script("tutorials/quickstart.py", "--steps", "40")
    diff = next(line for line in lines if line.startswith("max |streaming - sequence|"))
    assert float(diff.rsplit(":", 1)[1]) < 1e-4


@pytest.mark.parametrize("mode", [["--policy", "elmur"], ["--compare"]])
def test_offline_bc_smoke(tmp_path, mode):
    out = tmp_path / "bc"
    lines = run_script("tutorials/offline_bc.py", *mode, "--steps", "3", "--episodes", "12", "--batch", "4",
                       "--eval-lengths", "3", "12", "--eval-episodes", "4", "--wandb", "offline", "--out", str(out),
                       "--threads", "1", "--select-corridor", "12", "--select-every", "2", "--select-episodes", "2")
    result = json.loads(lines[-1])  # the last line is one JSON object
    policies = ["elmur"] if mode[0] == "--policy" else ["elmur", "lstm", "gru"]
    assert list(result) == policies
    for p in policies:
        assert set(result[p]["success"]) == {"3", "12"}
        assert all(0.0 <= v <= 1.0 for v in result[p]["success"].values())
        assert result[p]["train_seconds"] > 0
        assert result[p]["selected_step"] in (2, 3)  # probes after steps 2 and 3 (the last)
        assert [q["step"] for q in result[p]["probes"]] == [2, 3]
        good = any(q["success"] >= 0.95 for q in result[p]["probes"])
        assert result[p]["good_probe"] is good
        assert any(line.startswith(f"WARNING: {p}: no validation probe reached") for line in lines) is not good
        assert (out / f"{p}.pt").stat().st_size > 0
    assert any(line.startswith("Success rate") for line in lines)  # the table
    assert (out / "success_vs_length.png").stat().st_size > 0
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "policy,corridor_length,success,train_seconds,eval_seconds" and len(rows) == 1 + 2 * len(policies)
    assert (out / "wandb").is_dir()
    if mode[0] == "--policy":  # the saved policy loads by one call; --resume finds the run complete and ends as it did
        from torchrl_elmur.training.checkpoint import load_policy

        assert load_policy(out / "elmur.pt").in_keys == ["observation", "recurrent_state", "is_init"]
        again = run_script("tutorials/offline_bc.py", *mode, "--steps", "3", "--episodes", "12", "--batch", "4",
                           "--eval-lengths", "3", "12", "--eval-episodes", "4", "--wandb", "disabled", "--out", str(out),
                           "--threads", "1", "--select-corridor", "12", "--select-every", "2", "--select-episodes", "2",
                           "--resume")
        assert any("resumed from" in line and "at step 3 of 3" in line for line in again)
        assert json.loads(again[-1])["elmur"]["success"] == result["elmur"]["success"]


def test_offline_bc_rejects_odd_episode_count(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials/offline_bc.py"), "--eval-episodes", "3"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 2 and "--eval-episodes must be even" in proc.stderr


def test_tmaze_seeds_table_reads_each_tutorial_run(tmp_path):
    """The seed table holds one row per seed with what that seed's tutorial run reported."""
    tiny = ["--steps", "3", "--episodes", "12", "--batch", "4", "--eval-lengths", "3", "12", "--eval-episodes", "4",
            "--select-corridor", "12", "--select-every", "2", "--select-episodes", "2"]
    lines = run_script("benchmarks/tmaze_seeds.py", "--seeds", "5", "6", "--out", str(tmp_path), "--", *tiny)
    result = json.loads(lines[-1])
    assert result["benchmark"] == "tmaze_seeds" and result["extra_flags"] == tiny
    assert [r["seed"] for r in result["runs"]] == [5, 6]
    for run in result["runs"]:
        log = (tmp_path / f"seed_{run['seed']}" / "log.txt").read_text().splitlines()
        own = json.loads(next(line for line in log if line.startswith('{"elmur"')))["elmur"]
        assert run["success"] == own["success"] and [p["step"] for p in run["probes"]] == [2, 3]
    ok = sum(all(v >= 0.95 for v in r["success"].values()) for r in result["runs"])
    assert result["generalised"] == ok
    assert "| 5 |" in (tmp_path / "tmaze_seeds.md").read_text()


def test_default_options_runs_each_family_script_once(tmp_path):
    """One (family, option set) runs the family's script; a second invocation reads its result instead."""
    flags = ["--options", "bare", "--families", "popgym", "--seeds", "0", "--out", str(tmp_path)]
    first = json.loads(run_script("benchmarks/default_options.py", *flags)[-1])
    log = tmp_path / "popgym" / "bare" / "log.txt"
    own = json.loads((tmp_path / "popgym" / "bare" / "popgym_suite.json").read_text())
    (row,) = first["rows"]
    assert row["options"] == "bare" and row["popgym_sum"] == own["sums"]["sum: All (1 tasks)"]["elmur"]
    assert row["macs_x_gru"] == pytest.approx(569_446 / 73_728)  # core/cost.py's doctest numbers
    stamp = log.stat().st_mtime_ns
    second = json.loads(run_script("benchmarks/default_options.py", *flags)[-1])
    assert second["rows"] == first["rows"] and log.stat().st_mtime_ns == stamp


def test_tmaze_seeds_names_the_seed_of_a_failed_run(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/tmaze_seeds.py"), "--seeds", "7", "--out", str(tmp_path),
                           "--", "--eval-episodes", "3"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "seed 7:" in proc.stderr and "--eval-episodes must be even" in proc.stderr


@pytest.mark.parametrize(
    "script, flags, benchmark",
    [
        ("benchmarks/step_cost.py", ["--rounds", "1", "--batches", "2", "--no-compile", "--loop-batch", "2",
                                     "--loop-corridor", "3"], "step_cost"),
        ("benchmarks/dropin_cost.py", ["--rounds", "1", "--batches", "2", "--steps", "3", "--no-compile", "--window", "4"],
         "dropin_cost"),
        ("benchmarks/throughput.py", ["--repeats", "1", "--batches", "2", "--segment-lens", "3", "--train-batch", "2",
                                      "--train-len", "4"], "throughput"),
        ("benchmarks/collector_throughput.py", ["--frames-per-batch", "8", "--batches", "1"], "collector_throughput"),
        ("benchmarks/tmaze_horizon.py", ["--lengths", "3", "5", "--eval-episodes", "2", "--train-steps", "1",
                                         "--checkpoints", "no-such-folder", "--no-compile"], "tmaze_horizon"),
        pytest.param("benchmarks/device_parity.py", ["--device", "cpu"], "device_parity",
                     marks=pytest.mark.slow),  # ~40 s; it matters on a GPU (gpu_check.sh runs it there)
        ("benchmarks/replay_bytes.py", ["--frames", "60", "--slice-len", "5"], "replay_bytes"),
        ("benchmarks/scaling.py", ["--procs", "2", "--memories", "gru", "--steps", "1", "--batches", "1", "--batch", "4",
                                   "--seq-len", "10", "--rollout", "8", "--envs-per-worker", "2"], "scaling"),
        ("benchmarks/popgym_oracles.py", ["--tasks", "RepeatFirstEasy", "BattleshipEasy", "--episodes", "2"],
         "popgym_oracles"),
        ("benchmarks/popgym_suite.py", ["--tasks", "RepeatPreviousEasy", "PositionOnlyPendulumEasy", "--policies", "elmur",
                                        "mlp", "--steps", "2", "--episodes", "3", "--eval-episodes", "3", "--window", "10",
                                        "--chunk", "5", "--no-progress"], "popgym_suite"),
        ("benchmarks/tmaze_fidelity.py", ["--variants", "published", "released", "--recipe", "released", "--steps", "2",
                                          "--episodes", "20", "--probe-every", "1", "--probe-episodes", "2",
                                          "--lengths", "3", "5", "--eval-episodes", "2", "--no-separation"],
         "tmaze_fidelity"),
    ],
)
def test_benchmark_smoke(tmp_path, script, flags, benchmark):
    """Each benchmark runs on tiny settings and ends with its JSON line."""
    out = [] if benchmark == "device_parity" else ["--out", str(tmp_path)]
    if benchmark == "popgym_suite":
        out += ["--cache", str(tmp_path / "cache")]
    lines = run_script(script, *flags, *out)
    assert json.loads(lines[-1])["benchmark"] == benchmark
    if benchmark == "tmaze_horizon":
        assert {p.name for p in tmp_path.iterdir()} >= {"tmaze_horizon.csv", "tmaze_horizon.md", "tmaze_horizon.png"}
    if benchmark == "scaling":  # torchrun training and DistributedCollector collection, each with 2 processes
        rows = json.loads(lines[-1])["rows"]
        assert [(r["what"], r["procs"]) for r in rows] == [("training tokens/s", 2), ("collection frames/s", 2)]
        assert all(r["rate"] > 0 for r in rows) and (tmp_path / "scaling.md").exists()
    if benchmark == "replay_bytes":  # every memory replays its stored slices exactly; the tokens layout is the smaller
        rows = {r["memory"]: r for r in json.loads(lines[-1])["rows"]}
        assert all(r["replay_max_abs_diff"] < 1e-4 for r in rows.values())
        assert rows["elmur-tokens"]["bytes_per_transition"] < rows["elmur-cache"]["bytes_per_transition"] / 3
        assert {p.name for p in tmp_path.iterdir()} >= {"replay_bytes.csv", "replay_bytes.md", "replay_bytes.png"}
    if benchmark == "popgym_suite":  # per task and policy a mean return, sums in the paper's form, the files
        result = json.loads(lines[-1])
        assert set(result["tasks"]) == {"RepeatPreviousEasy", "PositionOnlyPendulumEasy"}
        assert {"oracle", "random", "elmur", "mlp"} <= set(result["tasks"]["RepeatPreviousEasy"])
        assert set(result["sums"]) == {"sum: All (2 tasks)", "sum: Puzzle (1 tasks)", "sum: Reactive (1 tasks)"}
        assert {p.name for p in tmp_path.iterdir()} >= {"popgym_suite.csv", "popgym_suite.md", "popgym_suite.png",
                                                       "popgym_suite.json"}
        merged = json.loads(run_script(script, "--merge", str(tmp_path / "popgym_suite.json"), "--out",
                                       str(tmp_path / "merged"))[-1])  # one report from saved runs, no training
        assert merged["tasks"] == result["tasks"] and merged["sums"] == result["sums"]
        proc = subprocess.run([sys.executable, str(ROOT / script), "--merge", *[str(tmp_path / "popgym_suite.json")] * 2],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        assert proc.returncode != 0 and "are in" in proc.stderr and "and in an earlier file" in proc.stderr
    if benchmark == "tmaze_fidelity":
        rows = (tmp_path / "tmaze_fidelity.csv").read_text().splitlines()
        assert len(rows) == 3 and rows[1].startswith("published,,0,released,2,")  # variant, options (no set equals it), seed
        assert len(list((tmp_path / "checkpoints").glob("released_*.pt"))) == 2


@pytest.mark.slow  # ~70 s: --compare over four memories; test_online_ppo runs the tutorial four times by default
def test_online_ppo_smoke(tmp_path):
    """--compare: four policies on a tiny budget, through the worker processes; table, files, JSON."""
    out = tmp_path / "ppo"
    lines = run_script("tutorials/online_ppo.py", "--compare", "--frames", "512", "--envs-per-worker", "2",
                       "--rollout", "64", "--epochs", "1", "--minibatch-rows", "2", "--width", "16",
                       "--eval-episodes", "2", "--wandb", "offline", "--out", str(out), "--no-progress")
    result = json.loads(lines[-1])
    assert result["task"] == "RepeatFirstEasy" and result["frames"] == 512
    for p in ("elmur", "gru", "lstm", "mlp"):
        assert result[p]["max_replay_error"] < 1e-4
        assert -1.0 <= result[p]["eval_return"]["mean"] <= 1.0 and result[p]["collect_fps"]["mean"] > 0
        assert (out / f"{p}_seed0.pt").stat().st_size > 0
    assert any(line.lstrip().startswith("policy") and "x GRU" in line for line in lines)  # the table
    rows = (out / "curves.csv").read_text().splitlines()
    assert rows[0].startswith("policy,seed,frames,return") and len(rows) == 1 + 4 * 2  # 2 updates per policy
    assert (out / "curves.png").stat().st_size > 0 and (out / "wandb").is_dir()


def test_online_ppo_rejects_continuous_tasks_and_bad_sizes():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials/online_ppo.py"), "--minibatch-rows", "99"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2 and "--minibatch-rows (99) must be <= the envs per batch (16)" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials/online_ppo.py"), "--task", "NoSuchTask"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2 and "--task" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials/online_ppo.py"), "--task", "PositionOnlyPendulumEasy"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2 and "PositionOnlyPendulumEasy has continuous actions" in proc.stderr


def _group_alive(pgid: int) -> list[str]:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()


PPO_LONG = ["--frames", "100000", "--wandb", "disabled", "--eval-episodes", "0", "--no-progress"]


def _workers(pid: int) -> list[int]:
    """The collector's worker processes: children of ``pid`` started by multiprocessing's spawn (not its
    resource tracker). ``-ww``: with COLUMNS set (as under CI) ps cuts the command line, and a cut line
    once hid "resource_tracker", so the test killed the tracker instead of a worker."""
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if "spawn_main" in line and "resource_tracker" not in line]


@pytest.mark.parametrize("fault", ["exception", "sigint", "worker-multisync",
                                   pytest.param("worker-distributed", marks=pytest.mark.slow)])  # ~70 s: its 10 s store time-out
def test_online_ppo_ends_with_its_workers_on_a_fault(tmp_path, fault):
    """An exception in the learner after the collector's workers started, Ctrl-C (SIGINT to the whole
    process group, as a terminal sends it), or a collector worker killed (SIGKILL; MultiSyncCollector and
    DistributedCollector) ends the run with an error, within the time-out, and leaves no process behind."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true", "PYTHONFAULTHANDLER": "1"}
    if fault == "exception":  # the script as run from the command line, with the optimizer step failing
        inject = ("import runpy, sys, torch\n"
                  "def fail(*a, **k): raise RuntimeError('injected learner fault')\n"
                  "torch.optim.Adam.step = fail\n"
                  f"sys.argv = ['online_ppo.py', *{PPO_LONG + ['--out', str(tmp_path)]!r}]\n"
                  f"runpy.run_path({str(ROOT / 'tutorials/online_ppo.py')!r}, run_name='__main__')\n")
        command = [sys.executable, "-c", inject]
    elif fault.startswith("worker"):  # with its progress bar: the first update's line says training has begun
        collector = ["--collector", "distributed"] if fault == "worker-distributed" else []
        flags = [f for f in PPO_LONG if f != "--no-progress"]
        command = [sys.executable, str(ROOT / "tutorials/online_ppo.py"), *flags, *collector, "--out", str(tmp_path)]
    else:
        command = [sys.executable, str(ROOT / "tutorials/online_ppo.py"), *PPO_LONG, "--out", str(tmp_path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        if fault.startswith("worker"):
            # kill a worker once the learner has taken an update (the bar shows fps): then the learner waits on
            # the workers inside TorchRL's weight push, which has no time-out of its own
            chunks = []
            reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(64), "")), daemon=True)
            reader.start()
            deadline = time.monotonic() + 150
            while "fps=" not in "".join(chunks) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert "fps=" in "".join(chunks), "".join(chunks)[-2000:]
            workers = _workers(proc.pid)
            assert workers, f"no collector worker process found among the children of {proc.pid}"
            os.kill(workers[0], signal.SIGKILL)
            start = time.monotonic()
            try:  # a watchdog raises within ~1 s (MultiSync) or the store's 10 s time-out (distributed)
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:  # SIGABRT: faulthandler prints every thread's stack, to say where it waits
                os.kill(proc.pid, signal.SIGABRT)
                proc.wait(timeout=20)
                reader.join(timeout=10)
                pytest.fail("the run did not end within 90 s of its worker's death; its threads' stacks:\n"
                            + "".join(chunks)[-6000:])
            reader.join(timeout=10)
            stderr = "".join(chunks)
            # whichever notices first: the watchdog (the learner pushing weights), MultiSyncCollector (the learner
            # collecting) or DistributedCollector's store
            assert any(m in stderr for m in ("WorkerDied: a collector worker process died", "At least one process failed: "
                                             "worker", "DistStoreError")), stderr[-2000:]
            if "watch_workers: the run had not ended" in stderr:  # ended by the last resort: say where it was stuck
                warnings.warn("online_ppo ended by watch_workers' exit_after, stuck after the worker's death:\n"
                              + stderr[-6000:])
        elif fault == "sigint":
            deadline = time.monotonic() + 120
            while len(_group_alive(proc.pid)) < 3 and time.monotonic() < deadline:  # the two collector workers run
                time.sleep(0.5)
            assert len(_group_alive(proc.pid)) >= 3, "the collector's workers never started"
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGINT)
            start = time.monotonic()
            _, stderr = proc.communicate(timeout=30)
            assert proc.returncode == 130 and "online_ppo: interrupted" in stderr, stderr[-2000:]
        else:
            start = time.monotonic()
            _, stderr = proc.communicate(timeout=150)
            assert "injected learner fault" in stderr
        assert proc.returncode != 0
        time.sleep(2)
        assert _group_alive(proc.pid) == [], "worker processes outlived the run"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - start < 150


@pytest.mark.parametrize("script, flags, message", [
    ("tutorials/offline_bc.py", ["--steps", "-3"], "--steps must be in [1, inf), received -3"),
    ("tutorials/offline_bc.py", ["--batch", "0"], "--batch must be in [1, inf), received 0"),
    ("tutorials/offline_bc.py", ["--lru-blend", "2"], "--lru-blend must be in [0, 1], received 2.0"),
    ("tutorials/offline_bc.py", ["--width", "31"], "ELMURConfig.d_model=31 is invalid: expected a multiple of num_heads=2."),
    ("tutorials/offline_iql.py", ["--steps", "0"], "--steps must be in [1, inf), received 0"),
    ("tutorials/offline_iql.py", ["--oracle", "nan"], "--oracle must be in [0, 1], received nan"),
    ("tutorials/offline_iql.py", ["--width", "31"], "ELMURConfig.d_model=31 is invalid: expected a multiple of num_heads=2."),
    ("benchmarks/popgym_suite.py", ["--width", "30"], "ELMURConfig.d_model=30 is invalid: expected a multiple of num_heads=4."),
    ("benchmarks/popgym_suite.py", ["--eval-episodes", "0"], "--eval-episodes must be in [1, inf), received 0"),
    ("benchmarks/mikasa_robo.py", ["--tasks", "Foo"],
     "--tasks: MIKASA task: unknown task 'Foo'. Valid ids: ['RememberColor3-v0', 'RememberColor5-v0', 'RememberColor9-v0', 'TakeItBack-v0']."),
    ("tutorials/online_ppo.py", ["--lr", "nan"], "--lr must be in (0, inf), received nan"),
    ("tutorials/online_ppo.py", ["--lr", "-1"], "--lr must be in (0, inf), received -1.0"),
    ("tutorials/online_ppo.py", ["--options", "released"],
     "received {'dropout': 0.1, 'attn_dropout': 0.17, 'memory_dropout': 0.01}"),
])
def test_tutorials_refuse_bad_values_in_one_line(script, flags, message):
    """A bad value ends before any work with a usage error: exit 2, one line, the flag, what was received."""
    proc = subprocess.run([sys.executable, str(ROOT / script), *flags], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(message), proc.stderr[-500:]
    assert "Traceback" not in proc.stderr
