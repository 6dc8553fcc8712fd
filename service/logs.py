"""Logging: one JSON object per line, with the request id, tenant and principal.

The request id (`X-Request-ID`, accepted or generated) and the caller live in
context variables: set once per request by the operations middleware, copied
by asyncio into tasks and by anyio into worker threads started from the
request, and passed to arq jobs, so a job's lines carry the id of the request
that started it. Log records never carry tokens or secrets: nothing logs
headers or channel configs.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
tenant_var: ContextVar[str | None] = ContextVar("tenant_id", default=None)
principal_var: ContextVar[str | None] = ContextVar("principal", default=None)


class ContextFilter(logging.Filter):
    """Adds request_id, tenant_id and principal (when known) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.tenant_id = tenant_var.get()
        record.principal = principal_var.get()
        return True


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Root logging for `finops` commands: JSON lines (LOG_FORMAT=json) or text, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{message}{name}{request_id}{tenant_id}{principal}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp=True,
                json_ensure_ascii=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
