"""What every benchmark prints: timestamped progress lines and a summary table."""

from __future__ import annotations

import time
from collections.abc import Sequence

_started = time.perf_counter()
HEADERS = ("figure", "value", "target / detail", "verdict")


def elapsed() -> float:
    """Seconds since the benchmark started."""
    return time.perf_counter() - _started


def say(message: str) -> None:
    """A progress line, stamped with the seconds since the benchmark started."""
    print(f"[bench {elapsed():6.1f}s] {message}", flush=True)


def verdict(ok: bool) -> str:
    return "meets target" if ok else "below target"


def render_table(rows: Sequence[tuple[str, str, str, str]], footer: str) -> str:
    """(figure, value, target / detail, verdict) rows as aligned text, then a footer line."""
    widths = [max(len(r[i]) for r in (HEADERS, *rows)) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([*lines, "", footer])
