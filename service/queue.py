"""Job execution as the API sees it: in-process (embedded) or on arq workers (REDIS_URL).

Both offer `run(name)` (now, waiting for the result) and `trigger(name, delay)`
(soon, once for any number of triggers within the delay).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Protocol, runtime_checkable

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.exceptions import RedisError

from service.errors import StorageUnavailable
from service.logs import request_id_var

log = logging.getLogger("finops.jobs")


@runtime_checkable
class Jobs(Protocol):
    async def run(self, name: str) -> Any: ...

    def trigger(self, name: str, delay_s: float) -> None: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class ArqJobs:
    """Enqueues onto arq workers through Redis; results come back through Redis too."""

    def __init__(self, redis_url: str, result_timeout_s: float = 120) -> None:
        self.redis_settings = RedisSettings.from_dsn(redis_url)
        self.result_timeout_s = result_timeout_s
        self.pool: ArqRedis | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        self.pool = await create_pool(self.redis_settings)

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.pool is not None:
            await self.pool.aclose()
            self.pool = None

    async def run(self, name: str) -> Any:
        assert self.pool is not None, "connect() first"
        try:
            job = await self.pool.enqueue_job(
                name, request_id=request_id_var.get(), _job_id=f"{name}:now:{uuid.uuid4().hex}"
            )
            assert job is not None
            return await job.result(timeout=self.result_timeout_s, poll_delay=0.05)
        except TimeoutError as exc:
            raise StorageUnavailable(f"no worker finished {name} within {self.result_timeout_s:.0f} s") from exc
        except RedisError as exc:
            raise StorageUnavailable(f"Redis refused the job: {exc}") from exc
        except Exception as exc:  # the job itself failed on the worker
            raise StorageUnavailable(f"{name} failed on the worker: {exc}") from exc

    def trigger(self, name: str, delay_s: float) -> None:
        """One job per `delay_s` slot: its id makes repeats within the slot harmless."""
        slot = int(time.time() / max(delay_s, 0.05))
        task = asyncio.get_running_loop().create_task(self._enqueue(name, f"{name}:slot:{slot}", delay_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _enqueue(self, name: str, job_id: str, delay_s: float) -> None:
        if self.pool is None:
            return
        try:
            await self.pool.enqueue_job(name, request_id=request_id_var.get(), _job_id=job_id, _defer_by=delay_s)
        except Exception:  # Redis down: the scheduled pass still runs on the workers
            log.exception("could not enqueue %s", name)
