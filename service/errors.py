"""Domain errors. Services raise these; `service.app` maps them to HTTP once."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base for errors a caller can act on."""

    status_code = 400

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class InvalidInput(DomainError):
    """The request is well-formed JSON but a field breaks a rule."""

    status_code = 422


class MalformedRequest(DomainError):
    """The body is not JSON, or not JSON of the expected shape."""

    status_code = 400


class NotFound(DomainError):
    """The resource does not exist, or the caller may not know it exists."""

    status_code = 404


class Forbidden(DomainError):
    """The caller is authenticated but its role or tenant does not allow this."""

    status_code = 403


class Unauthenticated(DomainError):
    """No valid bearer token."""

    status_code = 401


class Overloaded(DomainError):
    """A bounded queue is full; retry after `retry_after` seconds."""

    status_code = 503

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class StorageUnavailable(DomainError):
    """ClickHouse did not answer or refused the operation; nothing was acknowledged."""

    status_code = 503


class DataPathInUse(StorageUnavailable):
    """The embedded ClickHouse data path is held by another process."""


def error_body(status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The one error shape every route answers with."""
    body: dict[str, Any] = {"status_code": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return body


def error_headers(exc: DomainError) -> dict[str, str]:
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers
