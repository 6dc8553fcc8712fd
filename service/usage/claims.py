"""Claims on idempotency keys shared by API replicas, in Redis.

Within one process the group-commit buffer claims a key in memory while its
write is in flight. Replicas behind a load balancer do the same through Redis:
a key is claimed (SET NX with an expiry) before the duplicate check and the
INSERT, and released after the write, whether it succeeded or not. A replica
that finds a key claimed waits for the release; its own duplicate check then
sees the stored event. Nothing is claimed longer than one write (or the expiry,
if a replica dies mid-write), so a failed write never leaves a key taken.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.errors import Overloaded, StorageUnavailable

log = logging.getLogger("finops.ingest")

# Delete a claim only if it is still ours (it may have expired and been taken).
_RELEASE = """
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    released = released + redis.call('DEL', key)
  end
end
return released
"""


def claim_key(tenant_id: str, event_id: str) -> str:
    return f"finops:claim:{len(tenant_id)}:{tenant_id}:{event_id}"


class SharedClaims:
    def __init__(self, redis: Redis, *, ttl_ms: int = 60_000, wait_s: float = 30.0, poll_s: float = 0.02) -> None:
        self.redis = redis
        self.ttl_ms = ttl_ms
        self.wait_s = wait_s
        self.poll_s = poll_s

    async def claim(self, keys: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
        """Claim every key, waiting while another replica holds some; returns (token, redis keys)."""
        token = uuid.uuid4().hex
        waiting = [claim_key(tenant, event_id) for tenant, event_id in keys]
        held: list[str] = []
        deadline = time.monotonic() + self.wait_s
        while waiting:
            pipe = self.redis.pipeline(transaction=False)
            for name in waiting:
                pipe.set(name, token, nx=True, px=self.ttl_ms)
            try:
                results = await pipe.execute()
            except RedisError as exc:
                await self.release(token, held)
                raise StorageUnavailable(f"Redis refused the idempotency claims: {exc}") from exc
            held += [name for name, ok in zip(waiting, results, strict=True) if ok]
            waiting = [name for name, ok in zip(waiting, results, strict=True) if not ok]
            if waiting:
                if time.monotonic() > deadline:
                    await self.release(token, held)
                    raise Overloaded("these event ids are being written by another replica; retry", retry_after=1)
                await asyncio.sleep(self.poll_s)
        return token, held

    async def release(self, token: str, names: Sequence[str]) -> None:
        if not names:
            return
        try:
            await self.redis.eval(_RELEASE, len(names), *names, token)  # type: ignore[misc]
        except RedisError:  # the claims expire on their own
            log.warning("could not release %d idempotency claims; they expire in %d ms", len(names), self.ttl_ms)
