"""The price catalog format, the bundled catalog, and the `provider_pricing` table.

The catalog format is documented in CATALOG_FORMAT.md beside this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from service.storage.clickhouse import ClickHouse

Provider = Literal["openai", "gemini", "bedrock"]
PROVIDERS: tuple[str, ...] = ("openai", "gemini", "bedrock")
Rate = Decimal | None
BUNDLED_CATALOG = Path(__file__).with_name("catalog.json")


class LongContextRates(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    threshold_tokens: Annotated[int, msgspec.Meta(gt=0)]
    input_per_mtok: Rate = None
    output_per_mtok: Rate = None
    cached_input_per_mtok: Rate = None
    input_per_kchar: Rate = None
    output_per_kchar: Rate = None
    per_image: Rate = None


class CatalogPrice(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One effective-dated price for a (provider, model, region)."""

    provider: Provider
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    effective_from: Annotated[datetime, msgspec.Meta(tz=True)]
    region: str = ""
    aliases: list[str] = msgspec.field(default_factory=list)
    input_per_mtok: Rate = None
    output_per_mtok: Rate = None
    cached_input_per_mtok: Rate = None
    cache_write_per_mtok: Rate = None
    input_per_kchar: Rate = None
    output_per_kchar: Rate = None
    per_image: Rate = None
    batch_discount_pct: Decimal | None = None
    long_context: LongContextRates | None = None
    source: str = ""

    @property
    def key(self) -> tuple[str, str, str, datetime]:
        return (self.provider, self.model, self.region, self.effective_from.astimezone(UTC))


class Catalog(msgspec.Struct, forbid_unknown_fields=True):
    format: Literal["finops-catalog/1"]
    prices: list[CatalogPrice]


def parse_catalog(data: bytes) -> list[CatalogPrice]:
    """Decode and check a catalog document; raises msgspec.ValidationError or ValueError."""
    catalog = msgspec.json.decode(data, type=Catalog)
    seen: set[tuple[str, str, str, datetime]] = set()
    for price in catalog.prices:
        check_rates(price)
        if price.key in seen:
            raise ValueError(f"duplicate price for {price.key}")
        seen.add(price.key)
    return catalog.prices


def check_rates(price: CatalogPrice) -> None:
    """Rates are finite and non-negative; a batch discount is a percentage."""
    where = f"{price.provider}/{price.model}/{price.region or '*'}"
    figures = {name: getattr(price, name) for name in (*_RATE_COLUMNS, "batch_discount_pct")}
    if price.long_context:
        figures.update({f"long_context.{name}": getattr(price.long_context, name) for name in _LC_COLUMNS})
    for name, value in figures.items():
        if value is not None and (not value.is_finite() or value < 0):
            raise ValueError(f"{where}: {name} must be a non-negative number, got {value}")
    if price.batch_discount_pct is not None and price.batch_discount_pct > 100:
        raise ValueError(f"{where}: batch_discount_pct above 100")


def load_bundled_catalog() -> list[CatalogPrice]:
    return parse_catalog(BUNDLED_CATALOG.read_bytes())


# -- table rows --------------------------------------------------------------

_RATE_COLUMNS = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
    "input_per_kchar",
    "output_per_kchar",
    "per_image",
)
RATE_COLUMNS = _RATE_COLUMNS  # the rate fields of a price, in column order
_LC_COLUMNS = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "input_per_kchar",
    "output_per_kchar",
    "per_image",
)
PRICING_COLUMNS: tuple[str, ...] = (
    "provider",
    "model",
    "region",
    "effective_from",
    "aliases",
    *_RATE_COLUMNS,
    "batch_discount_pct",
    "long_context_threshold",
    *(f"lc_{name}" for name in _LC_COLUMNS),
    "source",
    "origin",
    "version",
)


def to_row(price: CatalogPrice, *, origin: str, version: int) -> list[Any]:
    lc = price.long_context
    return [
        price.provider,
        price.model,
        price.region,
        price.effective_from.astimezone(UTC),
        list(price.aliases),
        *(getattr(price, name) for name in _RATE_COLUMNS),
        price.batch_discount_pct,
        lc.threshold_tokens if lc else None,
        *((getattr(lc, name) if lc else None) for name in _LC_COLUMNS),
        price.source,
        origin,
        version,
    ]


def from_row(row: dict[str, Any]) -> CatalogPrice:
    lc = None
    if row["long_context_threshold"] is not None:
        lc = LongContextRates(
            threshold_tokens=int(row["long_context_threshold"]),
            **{name: _norm(row[f"lc_{name}"]) for name in _LC_COLUMNS},
        )
    effective = row["effective_from"]
    if effective.tzinfo is None:
        effective = effective.replace(tzinfo=UTC)
    return CatalogPrice(
        provider=row["provider"],
        model=row["model"],
        region=row["region"],
        effective_from=effective,
        aliases=list(row["aliases"]),
        **{name: _norm(row[name]) for name in _RATE_COLUMNS},
        batch_discount_pct=_norm(row["batch_discount_pct"]),
        long_context=lc,
        source=row["source"],
    )


def _norm(value: Decimal | None) -> Decimal | None:
    """Drop the column's trailing zeros so stored and catalog figures compare equal."""
    if value is None:
        return None
    normalized = value.normalize()
    exponent = normalized.as_tuple().exponent
    return normalized.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else normalized


class StoredPrice(msgspec.Struct, frozen=True):
    price: CatalogPrice
    origin: str
    version: int


def read_prices(db: ClickHouse) -> list[StoredPrice]:
    """Every current price row (latest version of each key, deletions dropped)."""
    rows = db.query_dicts(
        f"SELECT {', '.join(PRICING_COLUMNS)} FROM provider_pricing FINAL WHERE is_deleted = 0 "
        "ORDER BY provider, model, region, effective_from",
        label="pricing.read",
    )
    return [StoredPrice(from_row(row), row["origin"], int(row["version"])) for row in rows]


def _fingerprint(price: CatalogPrice) -> tuple[Any, ...]:
    row = to_row(price, origin="", version=0)
    return tuple(_norm(value) if isinstance(value, Decimal) else value for value in row)


def write_prices(
    db: ClickHouse, prices: Sequence[CatalogPrice], *, origin: str, replace_origins: Iterable[str] = ()
) -> tuple[int, int]:
    """Write prices as new rows or new versions of changed rows; returns (added, changed).

    A stored row whose origin is not `origin` and not in `replace_origins` is
    left alone (an imported negotiated price is not undone by the bundled file).
    """
    current = {stored.price.key: stored for stored in read_prices(db)}
    replaceable = {origin, *replace_origins}
    rows: list[list[Any]] = []
    added = changed = 0
    for price in prices:
        stored = current.get(price.key)
        if stored is None:
            rows.append(to_row(price, origin=origin, version=1))
            added += 1
        elif stored.origin in replaceable and _fingerprint(stored.price) != _fingerprint(price):
            rows.append(to_row(price, origin=origin, version=stored.version + 1))
            changed += 1
    if rows:
        db.insert("provider_pricing", rows, PRICING_COLUMNS, label="pricing.write")
    return added, changed


def sync_bundled_catalog(db: ClickHouse) -> tuple[int, int]:
    """Load the catalog shipped with the service into `provider_pricing`."""
    return write_prices(db, load_bundled_catalog(), origin="bundled")
