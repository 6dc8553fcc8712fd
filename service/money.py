"""Money as exact decimal strings."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MAX_EVENT_COST = Decimal("1000000")  # Decimal(18, 12) holds less than a million per event


def money_str(value: Decimal) -> str:
    """Plain decimal notation without trailing zeros: 0.00045, 12, 0."""
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


def parse_money(text: str) -> Decimal:
    """A non-negative amount with at most 12 decimal places, from its string form."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ValueError("not a decimal number") from exc
    if not value.is_finite():
        raise ValueError("not a finite number")
    if value < 0:
        raise ValueError("must not be negative")
    if value >= MAX_EVENT_COST:
        raise ValueError("must be below 1000000")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        raise ValueError("more than 12 decimal places")
    return value
