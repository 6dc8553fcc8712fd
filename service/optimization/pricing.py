"""List prices for what-if costs: the catalog in force at one moment, applied to window volumes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from service.pricing.calculator import Price, PriceBook, Rates
from service.pricing.catalog import StoredPrice

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


@dataclass(frozen=True)
class Volume:
    """Usage of one group over the window, as the rollups sum it."""

    events: int = 0
    unpriced_events: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    input_characters: int = 0
    output_characters: int = 0
    images: int = 0
    cost_usd: Decimal = ZERO

    def minus(self, other: Volume) -> Volume:
        return Volume(
            self.events - other.events,
            self.unpriced_events - other.unpriced_events,
            self.input_tokens - other.input_tokens,
            self.output_tokens - other.output_tokens,
            self.cached_input_tokens - other.cached_input_tokens,
            self.cache_write_tokens - other.cache_write_tokens,
            self.input_characters - other.input_characters,
            self.output_characters - other.output_characters,
            self.images - other.images,
            self.cost_usd - other.cost_usd,
        )


def list_cost(rates: Rates, volume: Volume) -> Decimal | None:
    """What `volume` costs at `rates` (exact, unrounded), or None when a unit it uses is not charged
    by these rates: a what-if on another model must price everything the traffic uses.

    Like the calculator, characters are billed instead of tokens when the traffic reports
    characters and the rates charge them. Aggregates are priced linearly, so long-context tiers
    (a per-request rule) are priced separately by the long-context check.
    """
    total = ZERO
    by_characters = bool(volume.input_characters or volume.output_characters) and (
        rates.input_char is not None or rates.output_char is not None
    )
    if not by_characters:
        if volume.input_tokens:
            if rates.input is None:
                return None
            cached, written = volume.cached_input_tokens, volume.cache_write_tokens
            total += (volume.input_tokens - cached - written) * rates.input
            total += cached * (rates.cached_input if rates.cached_input is not None else rates.input)
            total += written * (rates.cache_write if rates.cache_write is not None else rates.input)
        if volume.output_tokens:
            if rates.output is None:
                return None
            total += volume.output_tokens * rates.output
    for count, rate in (
        (volume.input_characters, rates.input_char),
        (volume.output_characters, rates.output_char),
        (volume.images, rates.image),
    ):
        if count:
            if rate is None:
                return None
            total += count * rate
    return total


def per_mtok(rate: Decimal | None) -> str:
    """A per-token rate as USD per million tokens, the way price lists show it."""
    if rate is None:
        return "n/a"
    value = (rate * MILLION).normalize()
    return format(value, "f") if not value.is_zero() else "0"


class Prices:
    """The catalog as it stands at one moment (the run's), for what-if costs."""

    def __init__(self, stored: list[StoredPrice], at: datetime, bedrock_default_region: str) -> None:
        self.at = at
        self.bedrock_default_region = bedrock_default_region
        self.book = PriceBook.from_catalog(
            [(s.price, s.version) for s in stored], bedrock_default_region=bedrock_default_region
        )
        regions: dict[tuple[str, str], set[str]] = defaultdict(set)
        for s in stored:
            if s.price.region:
                regions[(s.price.provider, s.price.model)].add(s.price.region)
        self._regions = regions
        self.long_context_thresholds = sorted(
            {s.price.long_context.threshold_tokens for s in stored if s.price.long_context is not None}
        )

    def current(self, provider: str, model: str, region: str) -> Price | None:
        """The price in force now for traffic reported as (provider, model, region)."""
        return self.book.price_for(provider, model, region or None, self.at)

    def region_of(self, provider: str, region: str) -> str:
        """The region traffic is billed in (Bedrock traffic without one: the default region)."""
        if provider == "bedrock" and not region:
            return self.bedrock_default_region
        return region

    def regions(self, provider: str, canonical: str) -> list[str]:
        """Every region the catalog prices this model in, sorted."""
        return sorted(self._regions.get((provider, canonical), set()))
