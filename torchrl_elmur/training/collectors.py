"""Collectors for online runs: built in one place (:func:`make_popgym_collector`), and ended with the run
(worker processes and weight-sync queues closed on any exit).

TorchRL's ``MultiSyncCollector.shutdown()`` (torchrl 0.14) stops the workers but leaves its
weight-sync scheme (``SharedMemWeightSyncScheme``) open; the scheme shuts itself down in
``__del__``, which puts "stop" on a multiprocessing queue. When that happens during interpreter
finalization (a run that ended with an exception keeps the collector alive in the traceback until
then; Ctrl-C while the collector is being built leaves a half-built one), the queue cannot start its
feeder thread and the process never exits. Importing this module registers an ``atexit`` hook that
closes every scheme still open while the interpreter can still start threads.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Literal

COLLECTORS = ("multisync", "distributed")


def make_worker_env(task: str, envs_per_worker: int, policy, seed: int | None = None):
    """One worker's envs: ``envs_per_worker`` POPGym envs stepped together (``InitTracker``), the
    episode return (``RewardSum``: ``episode_reward`` at done steps) and the policy's primers (its
    recurrent state keys, zeros at every reset); sub-env ``i`` seeded ``seed + i``."""
    from torchrl.envs import RewardSum
    from torchrl.modules.utils import get_primers_from_module

    from ..envs import make_popgym_env

    env = make_popgym_env(task, num_envs=envs_per_worker)
    if seed is not None:
        env.set_seed(seed)
    env.append_transform(RewardSum())
    primers = get_primers_from_module(policy)
    if primers is not None:
        env.append_transform(primers)
    return env


def make_popgym_collector(task: str, policy, *, num_workers: int, envs_per_worker: int, rollout: int, frames: int,
                          seed: int, kind: Literal["multisync", "distributed"] = "multisync"):
    """``num_workers`` processes, each stepping ``envs_per_worker`` envs of ``task`` with a copy of
    ``policy`` (weights pushed by ``update_policy_weights_()``); each batch is
    ``[num_workers, envs_per_worker, rollout]`` frames, ``frames`` in all. Worker ``w``'s sub-env ``i``
    plays seed ``seed * 10_000 + w * envs_per_worker + i``. End it with :func:`close_collector`.

    ``kind="multisync"``: TorchRL's MultiSyncCollector (pipes and shared memory, one machine).
    ``kind="distributed"``: TorchRL's DistributedCollector (``sync=True``; workers joined by
    ``torch.distributed`` with gloo over TCP, launched here as local processes; on a cluster its
    ``launcher="submitit"`` or ``"submitit_delayed"`` starts them on other machines).
    """
    from torchrl.collectors import MultiSyncCollector
    from torchrl.collectors.distributed import DistributedCollector

    if kind not in COLLECTORS:
        raise ValueError(f"make_popgym_collector: kind={kind!r} is invalid: expected one of {COLLECTORS}.")
    k = envs_per_worker
    make_envs = [functools.partial(make_worker_env, task, k, policy, seed * 10_000 + w * k) for w in range(num_workers)]
    sizes = dict(frames_per_batch=num_workers * k * rollout, total_frames=frames)
    if kind == "distributed":  # its set_seed times out in torchrl 0.14.1: the envs are seeded above
        return DistributedCollector(make_envs, policy, sync=True, launcher="mp", tcp_port=str(free_port()), **sizes)
    collector = MultiSyncCollector(make_envs, policy, **sizes)
    collector.set_seed(seed)  # also seeds each worker's torch (the policy's action sampling)
    return collector


def free_port() -> int:
    """A TCP port free on localhost now."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def close_collector(collector) -> None:
    """Stop ``collector``'s workers and close its weight-sync schemes' queues. Safe to call twice."""
    try:
        collector.shutdown()
    finally:
        for scheme in (getattr(collector, "_weight_sync_schemes", None) or {}).values():
            scheme.shutdown()


def close_open_schemes() -> int:
    """Close every TorchRL weight-sync scheme alive in this process; returns how many were found."""
    from torchrl.weight_update.weight_sync_schemes import WeightSyncScheme

    schemes = [obj for obj in gc.get_objects() if issubclass(type(obj), WeightSyncScheme)]  # type(): no __class__ lookups
    for scheme in schemes:
        try:
            scheme.shutdown()
        except Exception:  # noqa: BLE001 - at exit, a scheme that cannot close must not stop the others
            pass
    return len(schemes)


atexit.register(close_open_schemes)


class WorkerDied(BaseException):
    """A collector's worker process ended while the learner was collecting or pushing weights.

    A ``BaseException``, as ``KeyboardInterrupt`` is: it is raised asynchronously (see
    :func:`watch_workers`), and library code that waits inside ``try: ... except Exception:``
    (TorchRL 0.14's weight push logs and carries on) must not swallow it and wait again.
    """


@contextlib.contextmanager
def watch_workers(poll: float = 0.5, resend: float = 5.0, exit_after: float | None = None):
    """Raise :class:`WorkerDied` in the main thread, within ``poll`` seconds, if a worker process this
    process started dies (non-zero exit code) inside the block (children started inside the block are
    seen at the next poll; one that starts and dies between two polls is missed).

    Why: TorchRL 0.14's ``update_policy_weights_()`` waits for every worker's acknowledgement with no
    time-out (``SharedMemWeightSyncScheme._wait_for_ack``), so a worker killed by the system (out of
    memory, SIGKILL) leaves the learner waiting for ever. A thread watches the children and, when one
    dies, sends the main thread SIGUSR1 (``pthread_kill``: a signal sent to the process may be taken
    by any of its threads, and then a main thread asleep in a blocking read is never woken); its
    handler raises there, interrupting the wait. SIGUSR1 is unblocked in the main thread for the
    block. If the block is still running ``resend`` seconds later (a bare ``except:`` took the first
    one), the signal is sent again, until the block ends. Main thread only.

    ``exit_after`` (seconds, default off): a last resort for scripts. If the process is still alive
    that long after a worker's death (stuck in code that no signal interrupts, or in a teardown that
    waits on the dead worker), it prints every thread's stack to stderr and exits with status 1.
    Leave it off where the caller catches :class:`WorkerDied` and goes on.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("watch_workers: call it from the main thread (it raises there by a signal).")
    if exit_after is not None and not exit_after > 0:
        raise ValueError(f"watch_workers: exit_after={exit_after!r} is invalid: expected a number of seconds > 0 or None.")
    died: list[str] = []
    stop = threading.Event()
    seen: dict[int, multiprocessing.Process] = {}
    main = threading.main_thread().ident

    def look() -> None:  # active_children() forgets the children that ended: remember each one seen alive
        for child in multiprocessing.active_children():
            seen.setdefault(child.pid, child)

    def watch() -> None:
        while not stop.wait(poll):
            look()
            dead = [c for c in seen.values() if c.exitcode not in (None, 0)]
            if dead:
                died.extend(f"{c.name} (pid {c.pid}) ended with exit code {c.exitcode}" for c in dead)
                if exit_after is not None:
                    threading.Thread(target=_exit_later, args=(exit_after, died[0]), name="watch_workers-exit",
                                     daemon=True).start()
                while not stop.is_set():
                    signal.pthread_kill(main, signal.SIGUSR1)
                    stop.wait(resend)
                return

    def on_death(signum, frame):
        if not stop.is_set():  # the block is over: its exit is under way, raise nothing into it
            raise WorkerDied("a collector worker process died: " + "; ".join(died))

    look()  # the workers started before the block, at once (one killed before the first poll is seen too)
    previous = signal.signal(signal.SIGUSR1, on_death)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    watcher = threading.Thread(target=watch, name="watch_workers", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGUSR1, previous)


def _exit_later(seconds: float, why: str) -> None:
    """Sleep ``seconds`` (a daemon thread: a process that ends first ends it), then print every thread's
    stack and end the process with status 1, whatever its other threads are doing."""
    import faulthandler
    import time

    time.sleep(seconds)
    print(f"watch_workers: the run had not ended {seconds:g} s after a worker died ({why}); "
          "every thread's stack follows, then exit status 1", file=sys.__stderr__, flush=True)
    faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
    os._exit(1)


def stop_children(timeout: float = 3.0) -> int:
    """Terminate every worker process this process started (then kill what is left after
    ``timeout`` seconds); returns how many there were."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=timeout)
        if child.is_alive():
            child.kill()
    return len(children)


def exit_on_interrupt(main: Callable[[], None], name: str) -> None:
    """Run ``main()`` so that a run with worker processes always ends, and ends them.

    On Ctrl-C (SIGINT; wherever it lands: in the learner, or in a collector still starting its
    workers, which may turn it into another error): stop every worker process this process
    started and exit at once with status 130 and one line, skipping the interpreter's
    finalization (where a half-built collector's queues can block for ever). On any other error:
    stop the workers, then let the error end the run as usual (traceback, status 1).
    """
    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        main()
    except BaseException:
        stopped = stop_children()
        if not interrupted:
            raise
        print(f"{name}: interrupted; stopped {stopped} worker process(es)", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)

