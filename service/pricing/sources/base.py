"""What every pricing source returns, and the helpers they share.

A source fetches one provider's published data and maps it onto
`CatalogPrice`; it never touches storage. One bad entry never fails a source:
it is skipped and described in `SourceResult.problems`. A source that cannot
be read at all (HTTP error, timeout, not JSON, wrong shape, a paging loop)
raises `SourceError`, whose message never carries a credential.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, Inexact, InvalidOperation, localcontext
from typing import Any

import httpx
import msgspec

from service.pricing.catalog import CatalogPrice

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# A per-million-token rate above this is taken for a unit mix-up (a per-1K or
# per-token figure read in the wrong unit), not a price: the dearest list
# prices are in the hundreds of dollars per million tokens.
MAX_PER_MTOK = Decimal(10_000)
MAX_PER_KCHAR = Decimal(100)
MAX_PER_IMAGE = Decimal(100)
MAX_PROBLEMS = 500


class SourceError(Exception):
    """The source failed as a whole; prices stay as they were."""


class SourceResult(msgspec.Struct, kw_only=True):
    """What one fetch of one source found."""

    source: str
    fetched_at: datetime
    prices: list[CatalogPrice] = msgspec.field(default_factory=list)
    # (provider, model) the source lists but cannot price (OpenAI's model list).
    discovered_models: list[tuple[str, str]] = msgspec.field(default_factory=list)
    # Entries skipped and why (malformed, unit mix-ups, negative, non-USD, unknown units).
    problems: list[str] = msgspec.field(default_factory=list)
    # Entries deliberately outside the catalog's model (provisioned throughput,
    # fine-tuning, audio, other providers...): not problems, only counted.
    ignored: int = 0

    def problem(self, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append("further problems omitted")


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret (and any `key=` query value) replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(?i)([?&](?:key|access_token|token)=)[^&\s\"']+", r"\1***", text)


def plain(value: Decimal) -> Decimal:
    """A Decimal without trailing zeros or a positive exponent: `3.000000` → `3`, `1E+1` → `10`."""
    normalized = value.normalize()
    exponent = normalized.as_tuple().exponent
    return normalized.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else normalized


def exact_div(value: Decimal, divisor: Decimal) -> Decimal | None:
    """`value / divisor` when it is exact in 60 digits, else None (never a rounded money figure)."""
    with localcontext() as ctx:
        ctx.prec = 60
        ctx.traps[Inexact] = True
        try:
            return plain(value / divisor)
        except (Inexact, InvalidOperation, ZeroDivisionError):
            return None


def exact_mul(value: Decimal, factor: Decimal) -> Decimal | None:
    with localcontext() as ctx:
        ctx.prec = 60
        ctx.traps[Inexact] = True
        try:
            return plain(value * factor)
        except (Inexact, InvalidOperation):
            return None


def parse_money(raw: Any) -> Decimal | None:
    """A money figure from a JSON string or number (never a float); None when it is not one."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, Decimal | int):
        value = Decimal(raw)
    elif isinstance(raw, str):
        try:
            value = Decimal(raw.strip())
        except InvalidOperation:
            return None
    else:
        return None
    return value if value.is_finite() else None


def batch_discount(standard: list[tuple[Decimal | None, Decimal | None]]) -> tuple[Decimal | None, str | None]:
    """The batch discount percentage implied by (standard, batch) rate pairs.

    Returns (pct, None) when every pair with both rates gives the same exact
    discount, (None, reason) when they disagree or make no sense.
    """
    pcts: set[Decimal] = set()
    for base, batch in standard:
        if base is None or batch is None:
            continue
        if base <= 0:
            continue
        if batch > base:
            return None, f"batch rate {batch} above the standard rate {base}"
        ratio = exact_div(batch * 100, base)
        if ratio is None:
            return None, f"batch rate {batch} is not an exact percentage of {base}"
        pcts.add(plain(100 - ratio))
    if not pcts:
        return None, None
    if len(pcts) > 1:
        return None, f"batch rates imply different discounts {sorted(pcts)}"
    return pcts.pop(), None


def check_price(price: CatalogPrice) -> str | None:
    """Why a mapped price cannot be used (negative, absurd unit), or None."""
    checks: list[tuple[str, Decimal | None, Decimal]] = [
        ("input_per_mtok", price.input_per_mtok, MAX_PER_MTOK),
        ("output_per_mtok", price.output_per_mtok, MAX_PER_MTOK),
        ("cached_input_per_mtok", price.cached_input_per_mtok, MAX_PER_MTOK),
        ("cache_write_per_mtok", price.cache_write_per_mtok, MAX_PER_MTOK),
        ("input_per_kchar", price.input_per_kchar, MAX_PER_KCHAR),
        ("output_per_kchar", price.output_per_kchar, MAX_PER_KCHAR),
        ("per_image", price.per_image, MAX_PER_IMAGE),
    ]
    lc = price.long_context
    if lc is not None:
        checks += [
            ("long_context.input_per_mtok", lc.input_per_mtok, MAX_PER_MTOK),
            ("long_context.output_per_mtok", lc.output_per_mtok, MAX_PER_MTOK),
            ("long_context.cached_input_per_mtok", lc.cached_input_per_mtok, MAX_PER_MTOK),
            ("long_context.input_per_kchar", lc.input_per_kchar, MAX_PER_KCHAR),
            ("long_context.output_per_kchar", lc.output_per_kchar, MAX_PER_KCHAR),
            ("long_context.per_image", lc.per_image, MAX_PER_IMAGE),
        ]
    for name, value, cap in checks:
        if value is None:
            continue
        if not value.is_finite() or value < 0:
            return f"{name} is negative or not a number ({value})"
        if value > cap:
            return f"{name} {value} is above {cap}: a unit mix-up, not a price"
    if price.batch_discount_pct is not None and not (0 <= price.batch_discount_pct <= 100):
        return f"batch_discount_pct {price.batch_discount_pct} is not a percentage"
    rates = [value for _, value, _ in checks]
    if all(value is None for value in rates):
        return "no rate at all"
    return None


def http_get(
    source: str,
    url: str,
    *,
    timeout: float,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    secrets: Iterable[str | None] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
    client: httpx.Client | None = None,
) -> bytes:
    """GET `url` and return the body of a 200 answer; anything else raises SourceError.

    The body is read as a stream and refused past `max_bytes`; a truncated
    body (shorter than its Content-Length) is an error, not a partial read.
    """
    secrets = list(secrets)
    shown = redact(url.split("?", 1)[0], secrets)
    own = client is None
    http = client or httpx.Client(timeout=timeout, follow_redirects=False)
    try:
        with http.stream("GET", url, params=params, headers=headers) as response:
            if response.status_code != 200:
                head = b""
                for chunk in response.iter_bytes():
                    head += chunk
                    if len(head) >= 300:
                        break
                snippet = head[:300].decode("utf-8", "replace")
                snippet = redact(" ".join(snippet.split()), secrets)
                raise SourceError(f"{source}: HTTP {response.status_code} from {shown}: {snippet}")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise SourceError(f"{source}: response from {shown} is larger than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException:
        raise SourceError(f"{source}: timed out after {timeout}s fetching {shown}") from None
    except httpx.HTTPError as exc:
        raise SourceError(f"{source}: {type(exc).__name__} fetching {shown}: {redact(str(exc), secrets)}") from None
    finally:
        if own:
            http.close()


def decode_json(source: str, body: bytes, what: str, *, decimals: bool = False) -> Any:
    """Decode a JSON body (floats as exact Decimals when `decimals`); not JSON raises SourceError."""
    try:
        if decimals:
            return msgspec.json.Decoder(float_hook=Decimal).decode(body)
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        start = body[:40].decode("utf-8", "replace").strip()
        raise SourceError(f"{source}: {what} is not JSON ({exc}); it starts {start!r}") from None
