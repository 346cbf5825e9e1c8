"""Jobs in processes of their own: a dataset's shards (:func:`~torchrl_elmur.data.make_mikasa_dataset`),
a benchmark's rows (``benchmarks/mikasa_robo.py --jobs``)."""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait


def in_processes(fn: Callable, jobs: Sequence[tuple], processes: int, *common,
                 on_wait: Callable[[], None] | None = None) -> Iterator[tuple[tuple, object]]:
    """``fn(*job, *common)`` for every job, ``processes`` at a time, in spawned processes (fresh
    interpreters: nothing of this one's state, threads or CUDA context is inherited; each runs
    several jobs in turn, so a job must set what it depends on, e.g. its seed); yields
    ``(job, result)`` as each job finishes, in the order they finish. ``fn``, the jobs and
    ``common`` must pickle (``fn`` a module-level function; a script's own functions pickle too,
    under its ``if __name__ == "__main__":`` guard). ``on_wait``: called about once a second while
    jobs run (e.g. to move a progress bar fed by the jobs through a queue).

    An error in a job is raised here once the jobs finished with it have been yielded; the other
    jobs end at once (their processes are terminated, killed if they do not stop). A process that
    dies (a kill, out of memory) raises :class:`~concurrent.futures.process.BrokenProcessPool`.
    """
    if processes < 1:
        raise ValueError(f"in_processes: processes must be >= 1, received {processes}.")
    if not jobs:
        return
    pool = ProcessPoolExecutor(min(processes, len(jobs)), mp_context=mp.get_context("spawn"))
    finished = False
    try:
        running = {pool.submit(fn, *job, *common): job for job in jobs}
        while running:
            done, _ = wait(running, timeout=None if on_wait is None else 1.0, return_when=FIRST_COMPLETED)
            if on_wait is not None:
                on_wait()
            failed = [future for future in done if future.exception() is not None]
            for future in done:
                if future not in failed:
                    yield running.pop(future), future.result()
            if failed:
                failed[0].result()  # raises the job's error
        finished = True
    finally:
        if not finished:  # an error, or the caller stopped early: end the other jobs now, not when they finish
            workers = list((getattr(pool, "_processes", None) or {}).values())  # (the executor has no public kill)
            for process in workers:
                process.terminate()
            for process in workers:
                process.join(10)
                if process.is_alive():
                    process.kill()
        pool.shutdown(wait=True, cancel_futures=True)
