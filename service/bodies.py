"""Decoding request bodies with msgspec: 400 for what is not JSON, 422 naming the field."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from service.errors import InvalidInput, MalformedRequest

T = TypeVar("T")
_MSGSPEC_PATH = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def problem_from_msgspec(exc: msgspec.ValidationError, index: int | None = None) -> dict[str, Any]:
    """{"index"?, "field", "reason"} from msgspec's `reason - at `$.path`` message."""
    match = _MSGSPEC_PATH.match(str(exc))
    reason = match.group("reason") if match else str(exc)
    path = (match.group("path") if match else None) or ""
    problem: dict[str, Any] = {"field": path.lstrip(".") or None, "reason": reason}
    if problem["field"] is None and reason.startswith("Object missing required field"):
        problem["field"] = reason.split("`")[1]
    if index is not None:
        problem = {"index": index, **problem}
    return problem


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes, what: str) -> T:
    """The body as `decoder`'s type; 422 naming the field, or 400 when it is not JSON."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        # msgspec validates while it parses, so a schema error can surface before a syntax error further on
        try:
            msgspec.json.decode(body)
        except msgspec.DecodeError as syntax:
            raise MalformedRequest(f"body is not valid JSON: {syntax}") from syntax
        problem = problem_from_msgspec(exc)
        raise InvalidInput(f"invalid {what}: {problem['reason']}", errors=[problem]) from exc
    except msgspec.DecodeError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from exc
