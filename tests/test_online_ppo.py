"""Online recurrent PPO: the collector's stored states replay exactly, with and without RowStartStates."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictSequential
from torchrl.collectors import Collector
from torchrl.modules import set_recurrent_mode
from torchrl.modules.utils import get_primers_from_module
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

pytest.importorskip("popgym")

from torchrl_elmur import ELMURConfig  # noqa: E402
from torchrl_elmur.data.row_states import RowStartStates, recurrent_state_keys  # noqa: E402
from torchrl_elmur.envs import make_popgym_env  # noqa: E402
from torchrl_elmur.training.policies import make_actor_critic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = ELMURConfig.popgym(input_size=16, d_model=16, num_layers=2, num_heads=2, segment_len=5, memory_slots=2,
                            detach_memory=False)
T = 64  # RepeatFirstEasy episodes last 51 steps: every row holds an episode end


def collect_rows(memory: str, n_envs: int = 3, batches: int = 2, layout: str = "tokens"):
    """Two consecutive collector batches as rows [n_envs, T] (the second starts mid-episode)."""
    torch.manual_seed(0)
    actor, critic = make_actor_critic(memory, 4, 4, width=16, config=CONFIG if memory == "elmur" else None,
                                      state_layout=layout)
    policy = TensorDictSequential(actor, critic)
    env = make_popgym_env("RepeatFirstEasy", num_envs=n_envs)
    primers = get_primers_from_module(policy)
    if primers is not None:
        env.append_transform(primers)
    collector = Collector(env, policy, frames_per_batch=n_envs * T, total_frames=batches * n_envs * T)
    collector.set_seed(0)
    try:
        out = [b.reshape(-1, T).exclude("state_value").clone() for b in collector]
    finally:
        collector.shutdown()
    return actor, critic, out


def replayed_log_prob(actor, rows):
    with torch.no_grad(), set_recurrent_mode(True):
        return actor.get_dist(rows.copy()).log_prob(rows["action"])


@pytest.mark.parametrize("memory, layout", [("elmur", "tokens"), ("elmur", "cache"), ("gru", None), ("lstm", None)])
def test_row_start_states_replay_the_collection_exactly(memory, layout):
    actor, critic, batches = collect_rows(memory, layout=layout or "tokens")
    keys = recurrent_state_keys(actor, critic)
    assert keys == ({"lstm": ["actor_rs_h", "actor_rs_c", "critic_rs_h", "critic_rs_c"]}.get(memory, ["actor_rs", "critic_rs"]))
    rows = batches[1]
    assert rows["is_init"][:, 1:].any() and not rows["is_init"][:, 0].all(), "episode ends inside rows, rows mid-episode"
    stored = RowStartStates(rows, keys)
    assert stored.bytes() < rows.bytes()
    for view in (rows, stored[:], stored[torch.tensor([2, 0])]):  # every state / row-starts only / a minibatch
        ids = torch.tensor([0, 1, 2]) if view.shape[0] == 3 else torch.tensor([2, 0])
        torch.testing.assert_close(replayed_log_prob(actor, view), rows["action_log_prob"][ids], rtol=0, atol=1e-5)
    with torch.no_grad(), set_recurrent_mode(True):  # GAE on the compact rows equals GAE on the full batch?
        full_values = critic(rows.copy())["state_value"]
        compact_values = critic(stored[:])["state_value"]
    torch.testing.assert_close(compact_values, full_values, rtol=0, atol=1e-6)


def test_ppo_loss_on_row_starts_has_ratio_one_and_trains_the_memory():
    actor, critic, batches = collect_rows("elmur", batches=1)
    rows = batches[0]
    with torch.no_grad(), set_recurrent_mode(True):
        GAE(gamma=0.99, lmbda=0.95, value_network=critic, deactivate_vmap=True)(rows)
    stored = RowStartStates(rows, recurrent_state_keys(actor, critic))
    loss = ClipPPOLoss(actor, critic, entropy_coeff=0.0, normalize_advantage=False)
    out = loss(stored[:])
    # at ratio 1 the clipped objective is -mean(advantage)
    torch.testing.assert_close(out["loss_objective"], -rows["advantage"].mean(), rtol=0, atol=1e-5)
    out["loss_objective"].backward()
    write = [p for n, p in actor.named_parameters() if "write" in n or "mem" in n]
    assert write and any(float(p.grad.abs().sum()) > 0 for p in write if p.grad is not None)


def test_row_start_states_errors():
    rows = TensorDict({"is_init": torch.zeros(2, 4, 1, dtype=torch.bool), "rs": torch.ones(2, 4, 3)}, [2, 4])
    with pytest.raises(KeyError, match=r"state keys \['h'\] not found"):
        RowStartStates(rows, ["h"])
    with pytest.raises(ValueError, match=r"batch of rows \[N, T\], received batch size \[8\]"):
        RowStartStates(rows.reshape(-1), ["rs"])
    rows["is_init"][0, 2] = True  # an episode start inside a row whose stored state is not the fresh one
    with pytest.raises(ValueError, match="'rs' is not all zeros where is_init is True"):
        RowStartStates(rows, ["rs"])
    rows["rs"][0, 2] = 0
    stored = RowStartStates(rows, ["rs"])
    rebuilt = stored[:]
    assert rebuilt["rs"][:, 0].eq(1).all() and rebuilt["rs"][:, 1:].eq(0).all()
    with pytest.raises(IndexError, match="must select rows"):
        stored[0]


@pytest.mark.parametrize("policy, collector, shared", [
    pytest.param("elmur", "multisync", False, marks=pytest.mark.slow),  # ~20 s; the separate trunks: distributed's run
    ("lstm", "multisync", False), ("elmur", "distributed", False), ("elmur", "multisync", True)])
def test_tutorial_checks_the_replay_at_every_update(policy, collector, shared, tmp_path):
    """Each update of the tutorial's loop replays its whole batch before the first step (it raises
    above 1e-4): two updates, the second from states carried over from the first batch and collected
    by worker processes with the weights of the first update (pushed through shared memory: a
    per-process weight cache, keyed on version counters that such writes do not move, once made this
    replay differ by 6e-4 and growing). The tutorial runs as a user runs it (a subprocess)."""
    flags = ["--policy", policy, "--frames", str(2 * 4 * T), "--num-workers", "2", "--envs-per-worker", "2",
             "--rollout", str(T), "--epochs", "1", "--minibatch-rows", "2", "--width", "16", "--segment-len", "5",
             "--memory-slots", "2", "--eval-episodes", "4", "--wandb", "disabled", "--out", str(tmp_path),
             "--no-progress", "--collector", collector, *([] if shared else ["--no-shared-trunk"])]
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials" / "online_ppo.py"), *flags], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])[policy]
    assert summary["max_replay_error"] < 1e-4  # float32 log-probs
    assert -1.0 <= summary["eval_return"]["mean"] <= 1.0
    with open(tmp_path / "curves.csv") as f:
        curve = list(csv.DictReader(f))
    assert len(curve) == 2
    # states at row starts only: most of ELMUR's batch was state; an LSTM's (width 16) was not
    assert float(curve[0]["stored_bytes"]) < float(curve[0]["batch_bytes"]) / (4 if policy == "elmur" else 1)


def _sleep_forever() -> None:
    import time

    time.sleep(600)


def _swallow(block, caught):
    """``block()`` inside ``try: ... except caught: pass``: library code that logs an error and carries on."""
    try:
        block()
    except caught:
        pass


@pytest.mark.parametrize("waits", ["plain", "except Exception", "bare except, then waits again",
                                   "SIGUSR1 blocked", "threads beside"])
def test_watch_workers_ends_a_wait_on_a_dead_worker(waits):
    """What TorchRL 0.14's weight push does when a worker has died (a queue get with no time-out) ends
    with WorkerDied naming the worker, within a second or two, instead of waiting for ever; also when
    the wait sits inside ``except Exception`` (as TorchRL's ack wait does: WorkerDied is a
    BaseException), when a bare ``except:`` takes the first one and the code waits again (the
    signal is sent again after ``resend`` seconds), when the main thread came in with SIGUSR1 blocked
    (a mask inherited from the parent process), and beside other threads that could take a signal
    sent to the process instead of the main thread (it is sent to the main thread)."""
    import functools
    import multiprocessing
    import os
    import signal
    import threading
    import time

    from torchrl_elmur.training.collectors import WorkerDied, watch_workers

    before = signal.getsignal(signal.SIGUSR1)
    if waits == "SIGUSR1 blocked":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    idle = threading.Event()
    if waits == "threads beside":  # threads sleeping in Python, as a progress bar's monitor does
        for _ in range(4):
            threading.Thread(target=idle.wait, daemon=True).start()
    context = multiprocessing.get_context("spawn")
    worker, queue = context.Process(target=_sleep_forever, name="worker-0", daemon=True), context.Queue()
    worker.start()
    threading.Timer(1.0, lambda: os.kill(worker.pid, signal.SIGKILL)).start()
    start = time.monotonic()
    with pytest.raises(WorkerDied, match=rf"worker-0 \(pid {worker.pid}\) ended with exit code -9"):
        with watch_workers(poll=0.2, resend=1.0):
            wait = functools.partial(queue.get, timeout=30)  # an answer the dead worker will never send
            if waits == "except Exception":
                _swallow(wait, Exception)
                pytest.fail("an `except Exception` around the wait took WorkerDied (or it waited 30 s)")
            elif waits == "bare except, then waits again":
                _swallow(wait, BaseException)
                wait()  # the second signal ends this one
            else:
                wait()
    assert time.monotonic() - start < 10
    idle.set()
    if waits == "SIGUSR1 blocked":  # the caller's mask is given back
        assert signal.SIGUSR1 in signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    with watch_workers(poll=0.05):  # a worker that ends normally inside the block is no error
        time.sleep(0.2)
    assert signal.getsignal(signal.SIGUSR1) is before  # the handler is given back


def test_watch_workers_exit_after_ends_a_process_that_ignores_the_death(tmp_path):
    """With ``exit_after``, a process that takes every WorkerDied and waits on (no signal can end it)
    still ends, with status 1, a line naming the dead worker and every thread's stack."""
    import os
    import time

    script = tmp_path / "stuck.py"
    script.write_text(
        "import multiprocessing, os, signal, time\n"
        "from torchrl_elmur.training.collectors import watch_workers\n"
        "if __name__ == '__main__':\n"
        "    worker = multiprocessing.get_context('spawn').Process(target=time.sleep, args=(600,), name='worker-0')\n"
        "    worker.start()\n"
        "    with watch_workers(poll=0.1, resend=0.5, exit_after=3):\n"
        "        os.kill(worker.pid, signal.SIGKILL)\n"
        "        while True:\n"
        "            try:\n"
        "                time.sleep(600)\n"
        "            except BaseException:\n"
        "                pass\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1, result.stderr[-2000:]
    assert "the run had not ended 3 s after a worker died (worker-0 (pid" in result.stderr, result.stderr[-2000:]
    assert "ended with exit code -9)" in result.stderr and "stuck.py" in result.stderr  # the main thread's stack
    assert 3 < time.monotonic() - start < 30


def test_watch_workers_rejects_a_bad_exit_after():
    from torchrl_elmur.training.collectors import watch_workers

    with pytest.raises(ValueError, match=r"exit_after=0 is invalid: expected a number of seconds > 0 or None"):
        with watch_workers(exit_after=0):
            pass
