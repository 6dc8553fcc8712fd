"""The in-process job runner: schedules, no overlap, failures counted and survived."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import REGISTRY

from service.jobs import JobRunner


def runs(job: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("finops_job_runs_total", {"job": job, "outcome": outcome}) or 0.0


def test_a_failing_job_is_counted_and_runs_again() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        return "ok"

    async def scenario() -> None:
        runner = JobRunner()
        runner.every("flaky-test", 0.05, flaky)
        runner.start()
        try:
            for _ in range(100):
                if len(calls) >= 3:
                    break
                await asyncio.sleep(0.02)
        finally:
            await runner.stop()

    failed, succeeded = runs("flaky-test", "failed"), runs("flaky-test", "succeeded")
    asyncio.run(scenario())
    assert len(calls) >= 3
    assert runs("flaky-test", "failed") - failed == 1
    assert runs("flaky-test", "succeeded") - succeeded == len(calls) - 1


def test_runs_of_one_job_never_overlap_and_errors_reach_the_caller() -> None:
    active = 0
    most = 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.05)
        with lock:
            active -= 1

    def broken() -> None:
        raise ValueError("nope")

    async def scenario() -> None:
        runner = JobRunner()
        runner.every("slow-test", 3600, slow)
        runner.every("broken-test", 3600, broken)
        await asyncio.gather(*(runner.run("slow-test") for _ in range(4)))
        with pytest.raises(ValueError, match="nope"):
            await runner.run("broken-test")

    asyncio.run(scenario())
    assert most == 1


def test_stop_waits_for_a_run_in_progress() -> None:
    finished: list[bool] = []

    def slow() -> None:
        time.sleep(0.3)
        finished.append(True)

    async def scenario() -> None:
        runner = JobRunner()
        runner.every("slow-stop-test", 3600, slow)
        runner.start()
        await asyncio.sleep(0.05)  # the run at start is in its thread now
        await runner.stop()
        assert finished == [True]  # stop returned only after the thread finished

    asyncio.run(scenario())
