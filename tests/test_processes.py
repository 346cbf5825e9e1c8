"""Jobs in processes of their own (torchrl_elmur.processes)."""
from __future__ import annotations

import os
import time

import pytest

from torchrl_elmur.processes import in_processes


def _job(seconds: float, fail: bool, tag: str, ticks=None) -> tuple[str, int]:
    """A job of in_processes' tests (module level: spawned processes import it)."""
    for _ in range(round(seconds * 10)):
        time.sleep(0.1)
        if ticks is not None:
            ticks.put(1)
    if fail:
        raise ValueError(f"job {tag} failed")
    return tag, os.getpid()


def test_in_processes_yields_each_job_as_it_finishes_in_another_process():
    results = list(in_processes(_job, [(3.0, False), (0.0, False)], 2, "x"))
    assert [job for job, _ in results] == [(0.0, False), (3.0, False)]  # the quick one first
    assert all(tag == "x" and pid != os.getpid() for _, (tag, pid) in results)
    assert list(in_processes(_job, [], 2)) == []
    with pytest.raises(ValueError, match="processes must be >= 1, received 0"):
        list(in_processes(_job, [(0.0, False)], 0, "x"))


def test_in_processes_ends_the_other_jobs_on_an_error():
    """A failing job's error comes back at once; the other job (a minute long) does not run on."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match="job y failed"):
        list(in_processes(_job, [(60.0, False), (1.0, True)], 2, "y"))
    assert time.perf_counter() - start < 40


def test_in_processes_calls_on_wait_while_jobs_run():
    """A job reports progress through a queue; on_wait drains it while the job runs, not only at its end."""
    import multiprocessing as mp
    import queue

    drained = []  # ticks drained at each on_wait call; the last call comes after the job has finished

    with mp.get_context("spawn").Manager() as manager:
        ticks = manager.Queue()

        def drain() -> None:
            count = 0
            while True:
                try:
                    count += ticks.get_nowait()
                except queue.Empty:
                    break
            drained.append(count)

        results = list(in_processes(_job, [(3.0, False)], 1, "z", ticks, on_wait=drain))
    assert [job for job, _ in results] == [(3.0, False)]
    assert len(drained) >= 2 and any(count > 0 for count in drained[:-1])  # progress came in before the job ended
    assert sum(drained) == 30  # every tick of the 3-s job, once
