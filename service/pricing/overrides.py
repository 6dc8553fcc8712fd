"""Tenant-specific negotiated prices, applied at ingest (and by repricing) for that tenant.

An override is either a whole price for one (provider, model, region) —
the catalog's rates, in force from `effective_from` — or a discount off the
list price (`discount_pct`, for one model or `model: "*"` for every model of a
provider). A tenant's own price wins over the list price; a discount applies to
whichever price is in force. Overrides are effective-dated like list prices: a
change is a new override from a later time.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated

import msgspec

from service.pricing.calculator import Metered, Price, PriceBook
from service.pricing.catalog import CatalogPrice, LongContextRates, Provider, check_rates
from service.storage.clickhouse import ClickHouse, as_utc

TWELVE = Decimal("0.000000000001")
OVERRIDE_COLUMNS = (
    "tenant_id",
    "provider",
    "model",
    "region",
    "effective_from",
    "discount_pct",
    "price",
    "created_by",
    "created_at",
    "version",
    "is_deleted",
)


class Rates(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A negotiated price's rates, as in the catalog format."""

    input_per_mtok: Decimal | None = None
    output_per_mtok: Decimal | None = None
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    input_per_kchar: Decimal | None = None
    output_per_kchar: Decimal | None = None
    per_image: Decimal | None = None
    batch_discount_pct: Decimal | None = None
    long_context: LongContextRates | None = None


class OverrideIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenant_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    provider: Provider
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    region: str = ""
    effective_from: Annotated[datetime, msgspec.Meta(tz=True)]
    discount_pct: Decimal | None = None
    rates: Rates | None = None


class Override(msgspec.Struct, kw_only=True):
    tenant_id: str
    provider: str
    model: str
    region: str
    effective_from: datetime
    discount_pct: str | None
    rates: Rates | None
    created_by: str
    created_at: datetime


def check_override(data: OverrideIn) -> str | None:
    """What is wrong with an override (a field and reason), or None."""
    if (data.discount_pct is None) == (data.rates is None):
        return "discount_pct: give either discount_pct or rates"
    if data.discount_pct is not None and not (0 < data.discount_pct < 100):
        return "discount_pct: must be above 0 and below 100"
    if data.rates is not None:
        if data.model == "*":
            return "model: a whole price names one model"
        try:
            check_rates(as_catalog(data))
        except ValueError as exc:
            return f"rates: {exc}"
    return None


def as_catalog(data: OverrideIn | Override) -> CatalogPrice:
    rates = data.rates or Rates()
    return CatalogPrice(
        provider=data.provider,  # type: ignore[arg-type]
        model=data.model,
        region=data.region,
        effective_from=data.effective_from,
        **{f: getattr(rates, f) for f in Rates.__struct_fields__},
        source=f"negotiated price of tenant {data.tenant_id}",
    )


def write_override(db: ClickHouse, data: OverrideIn, actor: str) -> Override:
    current = db.query(
        "SELECT max(version) FROM pricing_overrides WHERE tenant_id = {t:String} AND provider = {p:String}"
        " AND model = {m:String} AND region = {r:String} AND effective_from = {e:DateTime64(3, 'UTC')}",
        {"t": data.tenant_id, "p": data.provider, "m": data.model, "r": data.region, "e": data.effective_from},
        label="pricing.override_version",
    )
    version = int(current[0][0] or 0) + 1 if current else 1
    now = datetime.now(UTC)
    override = Override(
        tenant_id=data.tenant_id,
        provider=data.provider,
        model=data.model,
        region=data.region,
        effective_from=data.effective_from.astimezone(UTC),
        discount_pct=str(data.discount_pct) if data.discount_pct is not None else None,
        rates=data.rates,
        created_by=actor,
        created_at=now,
    )
    db.insert(
        "pricing_overrides",
        [
            [
                override.tenant_id,
                override.provider,
                override.model,
                override.region,
                override.effective_from,
                data.discount_pct,
                msgspec.json.encode(data.rates).decode() if data.rates else "",
                actor,
                now,
                version,
                0,
            ]
        ],
        OVERRIDE_COLUMNS,
        label="pricing.override_write",
    )
    return override


_rates = msgspec.json.Decoder(Rates)


def read_overrides(db: ClickHouse, tenant_id: str | None = None) -> list[Override]:
    where = "is_deleted = 0" + (" AND tenant_id = {t:String}" if tenant_id else "")
    rows = db.query_dicts(
        f"SELECT {', '.join(OVERRIDE_COLUMNS)} FROM pricing_overrides FINAL WHERE {where}"
        " ORDER BY tenant_id, provider, model, region, effective_from",
        {"t": tenant_id} if tenant_id else {},
        label="pricing.overrides",
    )
    return [
        Override(
            tenant_id=row["tenant_id"],
            provider=row["provider"],
            model=row["model"],
            region=row["region"],
            effective_from=as_utc(row["effective_from"]),
            discount_pct=_plain(row["discount_pct"]),
            rates=_rates.decode(row["price"]) if row["price"] else None,
            created_by=row["created_by"],
            created_at=as_utc(row["created_at"]),
        )
        for row in rows
    ]


def _plain(value: Decimal | None) -> str | None:
    if value is None:
        return None
    return format(value.normalize(), "f")


@dataclass(frozen=True)
class Discount:
    starts: list[datetime]
    multipliers: list[Decimal]

    def at(self, when: datetime) -> Decimal | None:
        index = bisect.bisect_right(self.starts, when) - 1
        return self.multipliers[index] if index >= 0 else None


class TenantPrices:
    """Every tenant's overrides, ready for lookups at ingest."""

    def __init__(self, overrides: Sequence[Override], book: PriceBook) -> None:
        own: dict[str, list[tuple[CatalogPrice, int]]] = {}
        discounts: dict[tuple[str, str, str], list[tuple[datetime, Decimal]]] = {}
        for override in overrides:
            if override.rates is not None:
                own.setdefault(override.tenant_id, []).append((as_catalog(override), 1))
            elif override.discount_pct is not None:
                model = (
                    override.model
                    if override.model == "*"
                    else (book.resolve_model(override.provider, override.model) or override.model)
                )
                multiplier = (100 - Decimal(override.discount_pct)) / 100
                discounts.setdefault((override.tenant_id, override.provider, model), []).append(
                    (override.effective_from, multiplier)
                )
        self.books = {
            tenant: PriceBook.from_catalog(entries, bedrock_default_region=book.bedrock_default_region)
            for tenant, entries in own.items()
        }
        self.discounts = {
            key: Discount([s for s, _ in sorted(values)], [m for _, m in sorted(values)])
            for key, values in discounts.items()
        }

    def __bool__(self) -> bool:
        return bool(self.books or self.discounts)


class PricingState:
    """The current price book and tenant overrides; swapped whole when prices change."""

    def __init__(self, book: PriceBook, tenants: TenantPrices | None = None) -> None:
        self.book = book
        self.tenants = tenants or TenantPrices([], book)

    def cost(
        self, tenant_id: str, provider: str, model: str, region: str | None, at: datetime, usage: Metered
    ) -> tuple[Decimal | None, str | None]:
        """(cost, price version) for one event: the tenant's own price if it has one, else the
        list price; then the tenant's discount, if any. (None, None) when unpriced."""
        price: Price | None = None
        own = self.tenants.books.get(tenant_id) if self.tenants else None
        if own is not None:
            price = own.price_for(provider, model, region, at)
        version_prefix = "tenant:" if price is not None else ""
        if price is None:
            price = self.book.price_for(provider, model, region, at)
        if price is None:
            return None, None
        cost = price.cost(usage)
        if cost is None:
            return None, None
        version = version_prefix + price.version_id
        if self.tenants.discounts:
            for key in ((tenant_id, provider, price.model), (tenant_id, provider, "*")):
                found = self.tenants.discounts.get(key)
                multiplier = found.at(at) if found else None
                if multiplier is not None:
                    cost = (cost * multiplier).quantize(TWELVE, rounding=ROUND_HALF_EVEN)
                    version += f"|discount:{(1 - multiplier) * 100:f}%"
                    break
        return cost, version
