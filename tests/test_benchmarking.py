"""The benchmark scripts' shared machinery (torchrl_elmur.training.benchmarking) beyond its doctests."""
from __future__ import annotations

import os
import time

import pytest

from torchrl_elmur.training.benchmarking import in_processes


def _job(seconds: float, fail: bool, tag: str) -> tuple[str, int]:
    """A job of in_processes' tests (module level: spawned processes import it)."""
    time.sleep(seconds)
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
