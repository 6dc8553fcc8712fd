"""Who is calling, and the one place that decides which tenants they may see."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from service.errors import Forbidden, InvalidInput


class Role(StrEnum):
    ADMIN = "admin"
    TENANT_ADMIN = "tenant-admin"
    USER = "user"
    SERVICE = "service"


READERS = (Role.ADMIN, Role.TENANT_ADMIN, Role.USER)
WRITERS = (Role.ADMIN, Role.SERVICE)


@dataclass(frozen=True, slots=True)
class TenantScope:
    """The tenants a query may touch: one tenant, or every tenant (admin only)."""

    tenant_id: str | None

    @property
    def all_tenants(self) -> bool:
        return self.tenant_id is None

    def allows(self, tenant_id: str) -> bool:
        return self.tenant_id is None or self.tenant_id == tenant_id


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    tenant_id: str | None

    def read_scope(self, requested_tenant: str | None = None) -> TenantScope:
        """Tenants this caller may read, narrowed to `requested_tenant` if given.

        A non-admin naming another tenant in a filter is refused (403); a
        non-admin that names none reads only its own tenant.
        """
        if self.role is Role.ADMIN:
            return TenantScope(requested_tenant)
        if self.role is Role.SERVICE or self.tenant_id is None:
            raise Forbidden(f"role {self.role} cannot read tenant data")
        if requested_tenant is not None and requested_tenant != self.tenant_id:
            raise Forbidden("tenant_id filter names a tenant outside your token's tenant")
        return TenantScope(self.tenant_id)

    def write_tenant(self, event_tenant: str | None) -> str:
        """The tenant an event is recorded for, checked against the token's tenant claim."""
        if self.role not in WRITERS:
            raise Forbidden(f"role {self.role} cannot record usage events")
        if self.tenant_id is not None:
            if event_tenant is not None and event_tenant != self.tenant_id:
                raise Forbidden(f"token is limited to tenant {self.tenant_id!r}; event names {event_tenant!r}")
            return self.tenant_id
        if event_tenant is None:
            raise InvalidInput(
                "tenant_id is required",
                errors=[{"field": "tenant_id", "reason": "required when the token names no tenant"}],
            )
        return event_tenant
