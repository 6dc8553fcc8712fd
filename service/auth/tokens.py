"""Signing and verifying bearer tokens (pyjwt)."""

from __future__ import annotations

import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import jwt

from service.auth.principal import Principal, Role
from service.errors import Unauthenticated

ALLOWED_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
DEVELOPMENT_SECRET = "finops-development-secret-do-not-use-in-production"
TENANT_ROLES = (Role.TENANT_ADMIN, Role.USER)


def issue_token(
    secret: str,
    *,
    role: Role,
    tenant_id: str | None = None,
    subject: str | None = None,
    minutes: int = 60,
    algorithm: str = "HS256",
) -> str:
    """A signed JWT carrying `sub`, `role`, `tenant_id`, `iat` and `exp`."""
    if role in TENANT_ROLES and not tenant_id:
        raise ValueError(f"role {role} needs a tenant")
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": subject or f"{role}@{tenant_id or 'platform'}",
        "role": str(role),
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=minutes)).timestamp()),
    }
    if tenant_id:
        claims["tenant_id"] = tenant_id
    return jwt.encode(claims, secret, algorithm=algorithm)


class TokenVerifier:
    """Verifies tokens; remembers recent good ones until they expire."""

    def __init__(self, secret: str, algorithm: str = "HS256", cache_size: int = 10_000) -> None:
        if algorithm not in ALLOWED_ALGORITHMS:
            raise ValueError(f"JWT_ALGORITHM must be one of {sorted(ALLOWED_ALGORITHMS)}")
        if not secret:
            raise ValueError("JWT_SECRET is empty")
        self._secret = secret
        self._algorithm = algorithm
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                options={"require": ["exp", "sub", "role"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        try:
            role = Role(claims["role"])
        except ValueError as exc:
            raise Unauthenticated(f"unknown role {claims['role']!r}") from exc
        tenant = claims.get("tenant_id")
        if tenant is not None and not isinstance(tenant, str):
            raise Unauthenticated("tenant_id claim must be a string")
        if role in TENANT_ROLES and not tenant:
            raise Unauthenticated(f"role {role} token carries no tenant_id")
        principal = Principal(subject=str(claims["sub"]), role=role, tenant_id=tenant or None)
        if len(self._cache) >= self._cache_size:
            self._cache.popitem(last=False)
        self._cache[token] = (principal, float(claims["exp"]))
        return principal
