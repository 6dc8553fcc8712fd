"""Exact cost of one usage event from the price in force at its timestamp.

Rules (also in the README):

- `input_tokens` is the whole prompt. Of it, `cached_input_tokens` are billed
  at the cached-input rate and `cache_write_tokens` at the cache-write rate
  (each falls back to the input rate when the price has none); the rest at the
  input rate.
- Characters are billed per 1,000 and images per image where the price has
  those rates. A price with both character and token rates (Gemini 1.0 and
  1.5: Vertex AI bills characters, the Gemini API bills tokens) bills the
  characters when the event reports any, and the tokens otherwise, never both.
- A count whose unit the price does not charge adds nothing, but an event
  with usage where none of its non-zero counts has a rate is `unpriced`,
  never $0.
- Long-context rates replace the base rates for the whole request when
  `input_tokens` exceeds the price's threshold.
- `batch` applies the price's batch discount to the whole cost.
- The result is rounded half-even to 12 decimal places (`Decimal(18, 12)`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Protocol

from service.pricing.catalog import CatalogPrice

ZERO = Decimal(0)
TWELVE_PLACES = Decimal("0.000000000001")
_MILLION = Decimal(1_000_000)
_THOUSAND = Decimal(1000)
_HUNDRED = Decimal(100)

# Cross-region inference profiles prefix Bedrock model ids: us.anthropic..., eu.meta...
_BEDROCK_PROFILE = re.compile(r"^(us|eu|apac|us-gov|ca|jp|au|global)\.")
# Dated or versioned snapshots: gpt-4o-2024-08-06, gpt-4-0613, gemini-1.5-pro-002, -latest.
_SNAPSHOT_SUFFIXES = (
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),
    re.compile(r"-\d{4}$"),
    re.compile(r"-\d{3}$"),
    re.compile(r"-latest$"),
)
_MAX_RESOLUTION_CACHE = 10_000


class Metered(Protocol):
    """The usage counts of one event, as the calculator reads them."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    input_characters: int
    output_characters: int
    images: int
    batch: bool


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per single unit (token, character, image); None where not charged."""

    input: Decimal | None
    output: Decimal | None
    cached_input: Decimal | None
    cache_write: Decimal | None
    input_char: Decimal | None
    output_char: Decimal | None
    image: Decimal | None


def _per(value: Decimal | None, unit: Decimal) -> Decimal | None:
    return None if value is None else value / unit


@dataclass(frozen=True, slots=True)
class Price:
    """A catalog price prepared for fast, exact arithmetic."""

    provider: str
    model: str
    region: str
    effective_from: datetime
    version_id: str
    base: Rates
    long_context: Rates | None
    long_context_threshold: int | None
    batch_multiplier: Decimal | None

    @classmethod
    def from_catalog(cls, entry: CatalogPrice, version: int = 1) -> Price:
        lc = entry.long_context
        effective = entry.effective_from.astimezone(UTC)
        return cls(
            provider=entry.provider,
            model=entry.model,
            region=entry.region,
            effective_from=effective,
            version_id=(
                f"{entry.provider}/{entry.model}/{entry.region or '*'}/{effective:%Y-%m-%dT%H:%M:%SZ}/v{version}"
            ),
            base=Rates(
                input=_per(entry.input_per_mtok, _MILLION),
                output=_per(entry.output_per_mtok, _MILLION),
                cached_input=_per(entry.cached_input_per_mtok, _MILLION),
                cache_write=_per(entry.cache_write_per_mtok, _MILLION),
                input_char=_per(entry.input_per_kchar, _THOUSAND),
                output_char=_per(entry.output_per_kchar, _THOUSAND),
                image=_per(entry.per_image, Decimal(1)),
            ),
            long_context=None
            if lc is None
            else Rates(
                input=_per(lc.input_per_mtok if lc.input_per_mtok is not None else entry.input_per_mtok, _MILLION),
                output=_per(lc.output_per_mtok if lc.output_per_mtok is not None else entry.output_per_mtok, _MILLION),
                cached_input=_per(
                    lc.cached_input_per_mtok if lc.cached_input_per_mtok is not None else entry.cached_input_per_mtok,
                    _MILLION,
                ),
                cache_write=_per(entry.cache_write_per_mtok, _MILLION),
                input_char=_per(
                    lc.input_per_kchar if lc.input_per_kchar is not None else entry.input_per_kchar, _THOUSAND
                ),
                output_char=_per(
                    lc.output_per_kchar if lc.output_per_kchar is not None else entry.output_per_kchar,
                    _THOUSAND,
                ),
                image=lc.per_image if lc.per_image is not None else entry.per_image,
            ),
            long_context_threshold=lc.threshold_tokens if lc else None,
            batch_multiplier=None
            if entry.batch_discount_pct is None
            else (_HUNDRED - entry.batch_discount_pct) / _HUNDRED,
        )

    def cost(self, usage: Metered) -> Decimal | None:
        """Cost in USD rounded to 12 places, or None when no used unit is priced."""
        rates = self.base
        if (
            self.long_context is not None
            and self.long_context_threshold is not None
            and usage.input_tokens > self.long_context_threshold
        ):
            rates = self.long_context
        total = ZERO
        charged = False
        used = False
        by_characters = (usage.input_characters or usage.output_characters) and (
            rates.input_char is not None or rates.output_char is not None
        )
        if by_characters:
            used = True
        elif usage.input_tokens:
            used = True
            if rates.input is not None:
                charged = True
                cached = usage.cached_input_tokens
                written = usage.cache_write_tokens
                total += (usage.input_tokens - cached - written) * rates.input
                if cached:
                    total += cached * (rates.cached_input if rates.cached_input is not None else rates.input)
                if written:
                    total += written * (rates.cache_write if rates.cache_write is not None else rates.input)
        if usage.output_tokens and not by_characters:
            used = True
            if rates.output is not None:
                charged = True
                total += usage.output_tokens * rates.output
        if usage.input_characters:
            used = True
            if rates.input_char is not None:
                charged = True
                total += usage.input_characters * rates.input_char
        if usage.output_characters:
            used = True
            if rates.output_char is not None:
                charged = True
                total += usage.output_characters * rates.output_char
        if usage.images:
            used = True
            if rates.image is not None:
                charged = True
                total += usage.images * rates.image
        if used and not charged:
            return None
        if usage.batch and self.batch_multiplier is not None:
            total *= self.batch_multiplier
        return total.quantize(TWELVE_PLACES, rounding=ROUND_HALF_EVEN)


class PriceBook:
    """An in-memory snapshot of every price, looked up by model name and time."""

    def __init__(self, prices: Iterable[Price], *, bedrock_default_region: str = "us-east-1") -> None:
        self.bedrock_default_region = bedrock_default_region
        timelines: dict[tuple[str, str, str], list[Price]] = {}
        names: dict[tuple[str, str], str] = {}
        for price in prices:
            timelines.setdefault((price.provider, price.model, price.region), []).append(price)
            names[(price.provider, price.model.lower())] = price.model
        self._starts: dict[tuple[str, str, str], list[datetime]] = {}
        self._prices: dict[tuple[str, str, str], list[Price]] = {}
        for key, timeline in timelines.items():
            timeline.sort(key=lambda p: p.effective_from)
            self._starts[key] = [p.effective_from for p in timeline]
            self._prices[key] = timeline
        self._names = names
        self._resolved: dict[tuple[str, str], str | None] = {}

    @classmethod
    def from_catalog(
        cls, entries: Iterable[tuple[CatalogPrice, int]], *, bedrock_default_region: str = "us-east-1"
    ) -> PriceBook:
        entries = list(entries)
        book = cls(
            (Price.from_catalog(entry, version) for entry, version in entries),
            bedrock_default_region=bedrock_default_region,
        )
        for entry, _ in entries:
            for alias in entry.aliases:
                book._names.setdefault((entry.provider, alias.lower()), entry.model)
        return book

    def __len__(self) -> int:
        return sum(len(timeline) for timeline in self._prices.values())

    def resolve_model(self, provider: str, model: str) -> str | None:
        """The catalog's name for what a caller reported, or None if unknown."""
        key = (provider, model)
        if key in self._resolved:
            return self._resolved[key]
        found = self._resolve(provider, model)
        if len(self._resolved) >= _MAX_RESOLUTION_CACHE:
            self._resolved.clear()
        self._resolved[key] = found
        return found

    def _resolve(self, provider: str, model: str) -> str | None:
        name = model.strip().lower()
        for prefix in (f"{provider}/", "models/"):
            name = name.removeprefix(prefix)
        candidates = [name]
        if provider == "bedrock":
            bare = _BEDROCK_PROFILE.sub("", name)
            candidates.append(bare)
            candidates.extend(f"{c}:0" for c in (name, bare) if ":" not in c)
        else:
            stripped = name
            for pattern in _SNAPSHOT_SUFFIXES:
                stripped = pattern.sub("", stripped)
            candidates.append(stripped)
        for candidate in candidates:
            found = self._names.get((provider, candidate))
            if found is not None:
                return found
        return None

    def price_for(self, provider: str, model: str, region: str | None, at: datetime) -> Price | None:
        """The price in force at `at` for this model and region, or None."""
        canonical = self.resolve_model(provider, model)
        if canonical is None:
            return None
        regions: tuple[str, ...]
        if region:
            regions = (region, "")
        elif provider == "bedrock":
            regions = (self.bedrock_default_region, "")
        else:
            regions = ("",)
        for candidate in regions:
            key = (provider, canonical, candidate)
            starts = self._starts.get(key)
            if starts is None:
                continue
            index = bisect.bisect_right(starts, at) - 1
            if index < 0:
                return None
            return self._prices[key][index]
        return None
