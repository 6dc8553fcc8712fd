"""The audit log: who changed what, kept in ClickHouse."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from service.auth.principal import Principal
from service.storage.clickhouse import ClickHouse

AUDIT_COLUMNS = (
    "event_time",
    "request_id",
    "actor",
    "role",
    "tenant_id",
    "action",
    "target_type",
    "target_id",
    "before",
    "after",
)


def record_audit(
    db: ClickHouse,
    principal: Principal,
    *,
    action: str,
    target_type: str,
    target_id: str,
    tenant_id: str | None,
    before: Any = None,
    after: Any = None,
    request_id: str = "",
) -> None:
    """One audit row; `before` and `after` are summarised as JSON."""
    db.insert(
        "audit_log",
        [
            [
                datetime.now(UTC),
                request_id,
                principal.subject,
                str(principal.role),
                tenant_id or "",
                action,
                target_type,
                target_id,
                "" if before is None else msgspec.json.encode(before).decode(),
                "" if after is None else msgspec.json.encode(after).decode(),
            ]
        ],
        AUDIT_COLUMNS,
        label="audit.write",
    )
