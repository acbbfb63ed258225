"""Inputs that some tests need and that need no Ray, computed in the background from the session start.

The suite runs on 2 cores and leaves them idle about a fifth of its time: Ray tests wait on a round
deadline, on a raylet's death being noticed, on a process to start. Two inputs take ~3 min of one
core and no Ray: the privacy audit's trainings and SmolLM2's conversion from its GGUF. When the
tests start, they are submitted to two worker processes at idle priority (``SCHED_IDLE``: a core
runs them only when nothing else wants it, so the other tests' timings are not disturbed), and the
tests that use them run late in the session (``conftest.pytest_collection_modifyitems``). A test
that finds its input unfinished just waits: while it waits the cores are the workers'.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edgefleet.config import default_cache_dir
from edgefleet.platform.model_cache import ensure_smollm2

# SmolLM2 in the user's cache (the fetch and conversion are paid once per machine), for the tests
# that serve it: ``BACKGROUND = FETCH_SMOLLM2`` in their module, then ``background.result("smollm2")``.
FETCH_SMOLLM2 = {"smollm2": functools.partial(ensure_smollm2, default_cache_dir())}


def _idle_worker() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not permitted: the jobs still run, at normal priority
        pass
    import torch

    torch.set_num_threads(1)  # two workers, two cores: one thread each


@dataclass
class Background:
    """Jobs by name, each a function call run in a worker process; :meth:`result` waits for one."""

    jobs: dict[str, Callable[[], Any]]  # picklable zero-argument callables (functools.partial)
    _pool: ProcessPoolExecutor | None = None
    _futures: dict[str, Future] = field(default_factory=dict)

    def start(self) -> None:
        if not self.jobs or self._pool is not None:
            return
        self._pool = ProcessPoolExecutor(
            min(2, len(self.jobs)), mp_context=multiprocessing.get_context("spawn"), initializer=_idle_worker
        )
        self._futures = {name: self._pool.submit(job) for name, job in self.jobs.items()}

    def result(self, name: str, timeout_s: float = 900) -> Any:
        if name not in self._futures:  # not started (a plugin reordered or re-ran the session): compute it here
            return self.jobs[name]()
        try:
            return self._futures[name].result(timeout=timeout_s)
        finally:
            if all(f.done() for f in self._futures.values()):  # the workers hold torch: give the memory back
                self.shutdown()

    def shutdown(self) -> None:
        """Stop now, jobs still running included: a session that ends early (-x, Ctrl-C, a failed
        fixture) must not wait minutes at exit for inputs no test will read."""
        if self._pool is None:
            return
        import psutil

        workers = []  # taken before the pool lets them go: a psutil.Process never kills a reused pid
        for p in (getattr(self._pool, "_processes", None) or {}).values():
            try:
                workers.append(psutil.Process(p.pid))
            except (psutil.Error, TypeError):  # already gone, or never started
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        for worker in workers:
            try:
                for process in [*worker.children(recursive=True), worker]:  # `pip download`'s too
                    process.kill()
            except psutil.Error:  # already gone
                pass
