"""Collectors that end with the run: worker processes and weight-sync queues closed on any exit.

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
import gc
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable


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

