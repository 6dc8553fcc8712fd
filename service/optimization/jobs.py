"""The refresh job, as the in-process runner and the arq worker run it."""

from __future__ import annotations

from typing import Any

import msgspec

from service.optimization.service import OptimizationService
from service.settings import OptimizationSettings, Settings
from service.storage.clickhouse import ClickHouse


def refresh_optimization(db: ClickHouse, settings: Settings, optimization: OptimizationSettings) -> dict[str, Any]:
    """Recompute every tenant's suggestions for the default window; returns what it did."""
    result: dict[str, Any] = msgspec.to_builtins(OptimizationService(db, settings, optimization).refresh())
    return result
