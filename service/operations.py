"""The outermost ASGI layer: request ids, per-request metrics and logs, rate limits.

It wraps every request, the POST /usage-events fast path included:

- `X-Request-ID`: taken from the request when it is a sane token (letters,
  digits, `-_.:`, at most 128), else generated; echoed on the response and
  kept in a context variable for logs and jobs.
- `finops_http_requests_total{route, method, status}` and
  `finops_http_request_duration_seconds{route, method}`, by route template
  (`/budgets/{budget_id:str}`), never by raw path, so label sets stay bounded.
- Rate limits per principal (the token's subject; the client address without
  a valid token) and route group — `ingest` (POST /usage-events[/batch]),
  `write` (other changes), `read` — with the `limits` library: fixed windows
  in Redis when REDIS_URL is set (shared by replicas), in memory otherwise.
  Over the limit: 429 with `Retry-After`; every limited answer carries
  `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter

from service.auth.tokens import TokenVerifier
from service.errors import DomainError, error_body
from service.logs import principal_var, request_id_var, tenant_var
from service.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS, RATE_LIMITED
from service.settings import OperationsSettings

log = logging.getLogger("finops.http")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNLIMITED = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json")
INGEST_PATHS = frozenset({"/usage-events", "/usage-events/", "/usage-events/batch", "/usage-events/batch/"})


def route_group(method: str, path: str) -> str | None:
    """Which limit applies; None for operational routes that are never limited."""
    if path.startswith(UNLIMITED):
        return None
    if method == "POST" and path in INGEST_PATHS:
        return "ingest"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    return "write"


class RateLimits:
    def __init__(self, settings: OperationsSettings, redis_url: str = "") -> None:
        self.items: dict[str, RateLimitItem] = {
            "ingest": parse(settings.rate_limit_ingest),
            "read": parse(settings.rate_limit_read),
            "write": parse(settings.rate_limit_write),
        }
        storage: Storage
        if redis_url:
            uri = redis_url.replace("redis://", "async+redis://", 1).replace("rediss://", "async+rediss://", 1)
            storage = RedisStorage(uri, implementation="redispy", key_prefix="finops:ratelimit")
        else:
            storage = MemoryStorage()
        self.storage = storage
        self.limiter = FixedWindowRateLimiter(storage)

    async def check(self, group: str, key: str) -> tuple[bool, list[tuple[bytes, bytes]], int]:
        """(allowed, headers, seconds until the window resets)."""
        item = self.items[group]
        allowed = await self.limiter.hit(item, group, key)
        stats = await self.limiter.get_window_stats(item, group, key)
        reset = max(math.ceil(stats.reset_time - time.time()), 0)
        headers = [
            (b"ratelimit-limit", str(item.amount).encode()),
            (b"ratelimit-remaining", str(stats.remaining).encode()),
            (b"ratelimit-reset", str(reset).encode()),
        ]
        return allowed, headers, reset


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class Operations:
    def __init__(
        self, app: ASGIApp, verifier: TokenVerifier, settings: OperationsSettings, limits: RateLimits | None
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.settings = settings
        self.limits = limits

    def __getattr__(self, name: str) -> Any:  # behave as the wrapped app for tooling
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given if given and REQUEST_ID.match(given) else uuid.uuid4().hex
        rid_token = request_id_var.set(request_id)
        subject, tenant = self._caller(scope)
        tenant_token = tenant_var.set(tenant)
        principal_token = principal_var.set(subject)
        method: str = scope["method"]
        path: str = scope["path"]
        extra: list[tuple[bytes, bytes]] = [(b"x-request-id", request_id.encode())]
        status = 500

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            group = route_group(method, path) if self.limits is not None else None
            if group is not None and self.limits is not None:
                key = subject or _client(scope)
                try:
                    allowed, headers, reset = await self.limits.check(group, key)
                except Exception:  # the limit store is down: serve rather than refuse everyone
                    log.warning("rate limit store unavailable; request not limited", exc_info=True)
                    allowed, headers, reset = True, [], 0
                extra.extend(headers)
                if not allowed:
                    RATE_LIMITED.labels(group).inc()
                    await self._too_many(send_with_headers, group, reset)
                    return
            await self.app(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or "unmatched"
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_REQUEST_SECONDS.labels(route, method).observe(elapsed)
            if status >= 500 or self.settings.log_requests:
                log.log(
                    logging.WARNING if status >= 500 else logging.INFO,
                    "%s %s %d %.1f ms",
                    method,
                    route,
                    status,
                    elapsed * 1000,
                    extra={"method": method, "route": route, "status": status, "duration_ms": round(elapsed * 1000, 2)},
                )
            principal_var.reset(principal_token)
            tenant_var.reset(tenant_token)
            request_id_var.reset(rid_token)

    def _caller(self, scope: Scope) -> tuple[str | None, str | None]:
        header = _header(scope, b"authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, None
        try:
            principal = self.verifier.verify(token.strip())
        except DomainError:
            return None, None
        return principal.subject, principal.tenant_id

    @staticmethod
    async def _too_many(send: Send, group: str, reset: int) -> None:
        retry = max(reset, 1)
        body = msgspec.json.encode(error_body(429, f"rate limit for {group} requests exceeded; retry in {retry} s", []))
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"ip:{client[0]}" if client else "ip:unknown"
