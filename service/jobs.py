"""In-process job runner: the embedded mode's stand-in for arq workers.

Runs the same job functions the workers run, on the same intervals, inside the
API process. A job never overlaps itself; a failing run is logged and counted
and the schedule goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from service.metrics import JOB_RUNS, JOB_SECONDS

log = logging.getLogger("finops.jobs")


@dataclass
class ScheduledJob:
    name: str
    interval_s: float
    function: Callable[[], Any]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    triggered: bool = False
    first_after_s: float = 0


class JobRunner:
    def __init__(self) -> None:
        self._jobs: dict[str, ScheduledJob] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._triggered: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Future[Any]] = set()

    def every(self, name: str, interval_s: float, function: Callable[[], Any], *, first_after_s: float = 0) -> None:
        """Run `function` (blocking; it runs on a worker thread) `first_after_s` after start (at
        once by default) and then every `interval_s`."""
        self._jobs[name] = ScheduledJob(name, interval_s, function, first_after_s=first_after_s)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop(job), name=f"job-{job.name}") for job in self._jobs.values()]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._triggered]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # a cancelled await leaves its worker thread running: let it finish before
        # the caller closes what the job uses (the database)
        await asyncio.gather(*self._running, return_exceptions=True)
        self._tasks = []
        self._triggered.clear()

    def alive(self) -> bool:
        """Whether every scheduled job's loop is still running."""
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    def trigger(self, name: str, delay_s: float) -> None:
        """Run a job soon, once for any number of triggers within `delay_s` (call on the event loop).

        A trigger during a run schedules one more run after it, so nothing that
        caused a trigger is missed.
        """
        job = self._jobs[name]
        if job.triggered or not self._tasks:
            return
        job.triggered = True
        task = asyncio.get_running_loop().create_task(self._run_triggered(job, delay_s))
        self._triggered.add(task)
        task.add_done_callback(self._triggered.discard)

    async def _run_triggered(self, job: ScheduledJob, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        job.triggered = False
        try:
            await self.run(job.name)
        except Exception:
            log.exception("triggered job %s failed", job.name)

    async def run(self, name: str) -> Any:
        """Run a job now (waiting for a run in progress to finish first); raises what the job raised."""
        job = self._jobs[name]
        async with job.lock:
            started = time.perf_counter()
            inner = asyncio.ensure_future(anyio.to_thread.run_sync(job.function))
            self._running.add(inner)
            inner.add_done_callback(self._running.discard)
            try:
                result = await asyncio.shield(inner)
            except Exception:
                JOB_RUNS.labels(name, "failed").inc()
                raise
            finally:
                JOB_SECONDS.labels(name).observe(time.perf_counter() - started)
            JOB_RUNS.labels(name, "succeeded").inc()
            return result

    async def _loop(self, job: ScheduledJob) -> None:
        if job.first_after_s:
            await asyncio.sleep(job.first_after_s)
        while True:
            try:
                await self.run(job.name)
            except Exception:
                log.exception("job %s failed; next run in %ss", job.name, job.interval_s)
            await asyncio.sleep(job.interval_s)
