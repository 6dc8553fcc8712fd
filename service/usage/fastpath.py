"""POST /usage-events without the framework's per-request work.

This is the hottest route: one request per inference call the platform makes.
A small ASGI wrapper in front of the Litestar app serves it with the same
parts the framework route would use — the same TokenVerifier, role rule,
strict decoder, Ingestor and error shape — and hands every other request to
Litestar. Skipping routing, dependency injection, guards and response
building roughly halves the CPU spent per event. `operation()` documents the
route in the app's OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Reference, RequestBody

from service.auth.principal import WRITERS
from service.auth.tokens import TokenVerifier
from service.errors import DomainError, Forbidden, MalformedRequest, Unauthenticated, error_body, error_headers
from service.openapi import REF_TEMPLATE
from service.usage.ingest import Ingestor, decode_event

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]
PATHS = frozenset({"/usage-events", "/usage-events/"})
_encode = msgspec.json.Encoder().encode
_JSON = (b"content-type", b"application/json")


class UsageEventFastPath:
    """ASGI app: POST /usage-events here, everything else to `app`."""

    def __init__(
        self, app: ASGIApp, verifier: TokenVerifier, ingestor: Callable[[], Ingestor], max_body_bytes: int
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.ingestor = ingestor
        self.max_body_bytes = max_body_bytes

    def __getattr__(self, name: str) -> Any:  # behave as the wrapped app for tooling (state, plugins, ...)
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        scope["path_template"] = "/usage-events"  # the route's metrics label, as Litestar sets it
        try:
            principal = self.verifier.verify(_bearer_token(scope))
            if principal.role not in WRITERS:
                raise Forbidden("this operation needs one of the roles: admin, service")
            event = decode_event(await self._body(receive))
            stored, duplicate = await self.ingestor().record(event, principal)
            status, body, headers = (200 if duplicate else 201), _encode(stored), {}
        except DomainError as exc:
            status = exc.status_code
            body = _encode(error_body(status, exc.detail, exc.errors))
            headers = error_headers(exc)
        raw_headers: list[tuple[bytes, bytes]] = [
            _JSON,
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    async def _body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise MalformedRequest("the client disconnected before sending the body")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise MalformedRequest(f"body is larger than {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _bearer_token(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise Unauthenticated("missing bearer token (Authorization: Bearer <JWT>)")


def _json(description: str, schema: str | None = None) -> OpenAPIResponse:
    content = None
    if schema is not None:
        content = {"application/json": OpenAPIMediaType(schema=Reference(REF_TEMPLATE.format(name=schema)))}
    return OpenAPIResponse(description=description, content=content)


def operation(auth: str) -> Operation:
    """The OpenAPI operation of POST /usage-events."""
    return Operation(
        tags=["usage events"],
        summary="Record one usage event",
        description=(
            "Prices and stores one inference call. 201 with the stored event; the same `event_id` again answers "
            "200 with the originally stored event and stores nothing. " + auth
        ),
        operation_id="recordUsageEvent",
        request_body=RequestBody(
            required=True,
            content={"application/json": OpenAPIMediaType(schema=Reference(REF_TEMPLATE.format(name="UsageEventIn")))},
        ),
        responses={
            "201": _json("Stored; the body is the stored event.", "UsageEvent"),
            "200": _json("A repeat of a stored event_id; nothing stored.", "UsageEvent"),
            "400": _json("The body is not JSON."),
            "401": _json("No valid bearer token."),
            "403": _json("The role may not record events, or the event names another tenant."),
            "422": _json("A field breaks a rule; `errors` names it."),
            "503": _json("The buffer is full or the write failed; nothing stored. Retry after `Retry-After`."),
        },
        security=[{"BearerToken": []}],
    )
