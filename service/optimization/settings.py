"""Settings for optimization suggestions, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from service.settings import SettingsError


def _seconds(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


@dataclass(frozen=True)
class OptimizationSettings:
    refresh_interval_s: int = field(default_factory=lambda: _seconds("OPTIMIZATION_REFRESH_INTERVAL", 3600, 60))
    """How often the job recomputes the default window's suggestions for every tenant."""
    max_age_s: int = field(default_factory=lambda: _seconds("OPTIMIZATION_MAX_AGE", 7200, 1))
    """A cached run older than this is stale (its window has slid too far)."""
    new_events_grace_s: int = field(default_factory=lambda: _seconds("OPTIMIZATION_NEW_EVENTS_GRACE", 900))
    """A cached run younger than this is served even when events arrived after it was computed."""
    default_window_days: int = field(default_factory=lambda: _seconds("OPTIMIZATION_WINDOW_DAYS", 30, 1))
    """The window the job keeps cached (the endpoint's default `window_days`)."""
