"""Litestar middleware and guards: bearer token → Principal, role checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

from service.auth.principal import Principal, Role
from service.auth.tokens import TokenVerifier
from service.errors import Forbidden, Unauthenticated

Guard = Callable[[ASGIConnection, BaseRouteHandler], Awaitable[None]]  # type: ignore[type-arg]


class BearerTokenMiddleware(AbstractAuthenticationMiddleware):
    """Sets `request.user` to the token's Principal; 401 without a valid token."""

    def __init__(self, app: ASGIApp, verifier: TokenVerifier, exclude: list[str]) -> None:
        super().__init__(app, exclude=exclude)
        self.verifier = verifier

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:  # type: ignore[type-arg]
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing bearer token (Authorization: Bearer <JWT>)")
        principal = self.verifier.verify(token.strip())
        return AuthenticationResult(user=principal, auth=token)


def principal_of(connection: ASGIConnection) -> Principal:  # type: ignore[type-arg]
    user = connection.scope.get("user")
    if not isinstance(user, Principal):
        raise Unauthenticated("not authenticated")
    return user


def require_roles(*roles: Role) -> Guard:
    """A guard admitting only the given roles (403 for the others)."""
    allowed = frozenset(roles)
    names = ", ".join(sorted(str(r) for r in roles))

    # async, so Litestar calls it on the event loop instead of a worker thread
    async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
        principal = principal_of(connection)
        if principal.role not in allowed:
            raise Forbidden(f"this operation needs one of the roles: {names}")

    return guard
