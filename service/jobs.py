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


class JobRunner:
    def __init__(self) -> None:
        self._jobs: dict[str, ScheduledJob] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def every(self, name: str, interval_s: float, function: Callable[[], Any]) -> None:
        """Run `function` (blocking; it runs on a worker thread) at start and then every `interval_s`."""
        self._jobs[name] = ScheduledJob(name, interval_s, function)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop(job), name=f"job-{job.name}") for job in self._jobs.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def run(self, name: str) -> Any:
        """Run a job now (waiting for a run in progress to finish first); raises what the job raised."""
        job = self._jobs[name]
        async with job.lock:
            started = time.perf_counter()
            try:
                result = await anyio.to_thread.run_sync(job.function)
            except Exception:
                JOB_RUNS.labels(name, "failed").inc()
                raise
            finally:
                JOB_SECONDS.labels(name).observe(time.perf_counter() - started)
            JOB_RUNS.labels(name, "succeeded").inc()
            return result

    async def _loop(self, job: ScheduledJob) -> None:
        while True:
            try:
                await self.run(job.name)
            except Exception:
                log.exception("job %s failed; next run in %ss", job.name, job.interval_s)
            await asyncio.sleep(job.interval_s)
