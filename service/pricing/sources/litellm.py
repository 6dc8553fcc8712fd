"""LiteLLM's public price map (`model_prices_and_context_window.json`) mapped onto our catalog.

Keys are model names; each entry carries `litellm_provider`, `mode` and
per-token (or per-character, per-image) costs as JSON numbers. Numbers are
decoded straight to `Decimal` from their JSON text — never through a binary
float — and scaled exactly: per token times 10^6 → per Mtok, per character
times 10^3 → per 1K characters.

Mapping (documented choices):

- Providers: `openai`, `text-completion-openai` → openai; `gemini` and
  `vertex_ai-*` entries whose model starts with `gemini` → gemini (one price
  per model: Gemini API token rates win, Vertex AI fills what they lack, e.g.
  the per-character rates of Gemini 1.0/1.5); `bedrock`, `bedrock_converse` →
  bedrock. Every other provider is ignored.
- Names: the `gemini/`, `vertex_ai/` and `openai/` key prefixes are dropped.
  `bedrock/<region>/<model>` gives a regional Bedrock price; a Bedrock key
  without a region is the default for every region (`region: ""`).
  Provisioned-throughput keys (`bedrock/<region>/1-month-commitment/...`),
  cross-region profiles (`us.`, `eu.`, `apac.`, `global.` — the catalog
  prices them as the base model in the caller's region), fine-tune templates
  (`ft:`) and `sample_spec` are ignored.
- Modes: chat, completion, responses and embedding (or none given) are
  priced; image generation, audio, moderation, rerank and the rest are ignored.
- Fields: `input_cost_per_token`, `output_cost_per_token`,
  `cache_read_input_token_cost`, `cache_creation_input_token_cost`,
  `input_cost_per_character`, `output_cost_per_character`,
  `input_cost_per_image`; `*_above_128k_tokens` / `*_above_200k_tokens` give
  the long-context tier (threshold 128,000 or 200,000 tokens);
  `input_cost_per_token_batches` / `output_cost_per_token_batches` give
  `batch_discount_pct` when both imply the same exact percentage.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import msgspec

from service.pricing.catalog import CatalogPrice, LongContextRates, Provider
from service.pricing.sources.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT_S,
    SourceError,
    SourceResult,
    batch_discount,
    check_price,
    decode_json,
    http_get,
    plain,
)

LITELLM_URL = "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"
SOURCE = "litellm"

_PROVIDERS: dict[str, Provider] = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "gemini": "gemini",
    "bedrock": "bedrock",
    "bedrock_converse": "bedrock",
}
_PRICED_MODES = {None, "chat", "completion", "responses", "embedding"}
_REGION = re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-\d{1,2}$")
_PROFILE_PREFIX = re.compile(r"^(?:us|eu|apac|ap|jp|au|ca|us-gov|global)\.")
_PER_MTOK = 6  # per token → per 1,000,000 tokens
_PER_KCHAR = 3  # per character → per 1,000 characters

# our field: (litellm field, power of ten to scale by)
_BASE_FIELDS: dict[str, tuple[str, int]] = {
    "input_per_mtok": ("input_cost_per_token", _PER_MTOK),
    "output_per_mtok": ("output_cost_per_token", _PER_MTOK),
    "cached_input_per_mtok": ("cache_read_input_token_cost", _PER_MTOK),
    "cache_write_per_mtok": ("cache_creation_input_token_cost", _PER_MTOK),
    "input_per_kchar": ("input_cost_per_character", _PER_KCHAR),
    "output_per_kchar": ("output_cost_per_character", _PER_KCHAR),
    "per_image": ("input_cost_per_image", 0),
}
_LC_FIELDS: dict[str, tuple[str, int]] = {
    "input_per_mtok": ("input_cost_per_token", _PER_MTOK),
    "output_per_mtok": ("output_cost_per_token", _PER_MTOK),
    "cached_input_per_mtok": ("cache_read_input_token_cost", _PER_MTOK),
    "input_per_kchar": ("input_cost_per_character", _PER_KCHAR),
    "output_per_kchar": ("output_cost_per_character", _PER_KCHAR),
    "per_image": ("input_cost_per_image", 0),
}
_LC_THRESHOLDS = {"128k": 128_000, "200k": 200_000}


def fetch_litellm(
    url: str = LITELLM_URL,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    now: datetime | None = None,
    client: httpx.Client | None = None,
) -> SourceResult:
    """Fetch a LiteLLM-format price map from `url` and map it."""
    body = http_get(SOURCE, url, timeout=timeout, max_bytes=max_bytes, client=client)
    return parse_litellm(body, origin=url, now=now)


def parse_litellm(data: bytes, *, origin: str = "", now: datetime | None = None) -> SourceResult:
    """Map a LiteLLM-format document (also for `finops pricing import FILE`)."""
    fetched_at = now or datetime.now(UTC)
    result = SourceResult(source=SOURCE, fetched_at=fetched_at)
    document = decode_json(SOURCE, data, "the price map", decimals=True)
    if not isinstance(document, dict):
        raise SourceError(f"{SOURCE}: the price map is not a JSON object of models")
    # (provider, model, region) → [(priority, key, price)]
    found: dict[tuple[str, str, str], list[tuple[int, str, CatalogPrice]]] = {}
    for key, entry in document.items():
        if key == "sample_spec":
            continue
        mapped = _map_entry(key, entry, result, fetched_at, origin)
        if mapped is None:
            continue
        priority, price = mapped
        found.setdefault((price.provider, price.model, price.region), []).append((priority, key, price))
    for variants in found.values():
        result.prices.append(_merge(sorted(variants, key=lambda v: v[0]), result))
    return result


def _map_entry(
    key: str, entry: Any, result: SourceResult, fetched_at: datetime, origin: str
) -> tuple[int, CatalogPrice] | None:
    if not isinstance(entry, dict):
        result.problem(f"{key!r}: entry is not an object")
        return None
    litellm_provider = entry.get("litellm_provider")
    if not isinstance(litellm_provider, str):
        result.problem(f"{key!r}: no litellm_provider")
        return None
    name = key.strip()
    provider: Provider | None = _PROVIDERS.get(litellm_provider)
    priority = 0
    if provider is None and litellm_provider.startswith("vertex_ai"):
        provider, priority = "gemini", 1
    if provider is None:
        result.ignored += 1
        return None
    mode = entry.get("mode")
    if mode not in _PRICED_MODES:
        result.ignored += 1
        return None
    region = ""
    for prefix in ("openai/", "gemini/", "vertex_ai/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if provider == "gemini" and not name.startswith("gemini"):
        result.ignored += 1
        return None
    if provider == "openai" and name.startswith("ft:"):
        result.ignored += 1
        return None
    if provider == "bedrock":
        parts = name.split("/")
        if parts[0] in ("bedrock", "bedrock_converse"):
            parts = parts[1:]
        if len(parts) == 2 and _REGION.match(parts[0]):
            region, name = parts
        elif len(parts) != 1:
            result.ignored += 1  # provisioned throughput, invoke/converse routes
            return None
        if _PROFILE_PREFIX.match(name):
            result.ignored += 1
            return None
    if not name or len(name) > 256 or "/" in name:
        result.problem(f"{key!r}: model name {name!r} is not usable")
        return None

    rates: dict[str, Decimal | None] = {}
    for field, (their_field, power) in _BASE_FIELDS.items():
        value, error = _rate(entry, their_field, power)
        if error:
            result.problem(f"{key!r}: {error}")
            return None
        rates[field] = value
    long_context = None
    for suffix, threshold in _LC_THRESHOLDS.items():
        lc_rates: dict[str, Decimal | None] = {}
        for field, (their_field, power) in _LC_FIELDS.items():
            value, error = _rate(entry, f"{their_field}_above_{suffix}_tokens", power)
            if error:
                result.problem(f"{key!r}: {error}")
                return None
            lc_rates[field] = value
        if any(value is not None for value in lc_rates.values()):
            if long_context is not None:
                result.problem(f"{key!r}: long-context rates above both 128k and 200k; kept 128k")
                continue
            long_context = LongContextRates(threshold_tokens=threshold, **lc_rates)
    batch_in, error_in = _rate(entry, "input_cost_per_token_batches", _PER_MTOK)
    batch_out, error_out = _rate(entry, "output_cost_per_token_batches", _PER_MTOK)
    if error_in or error_out:
        result.problem(f"{key!r}: {error_in or error_out}")
        return None
    discount, why = batch_discount([(rates["input_per_mtok"], batch_in), (rates["output_per_mtok"], batch_out)])
    if why:
        result.problem(f"{key!r}: batch discount left out: {why}")
    price = CatalogPrice(
        provider=provider,
        model=name,
        region=region,
        effective_from=fetched_at,
        long_context=long_context,
        batch_discount_pct=discount,
        source=f"{origin or 'LiteLLM price map'} [{key}]",
        input_per_mtok=rates["input_per_mtok"],
        output_per_mtok=rates["output_per_mtok"],
        cached_input_per_mtok=rates["cached_input_per_mtok"],
        cache_write_per_mtok=rates["cache_write_per_mtok"],
        input_per_kchar=rates["input_per_kchar"],
        output_per_kchar=rates["output_per_kchar"],
        per_image=rates["per_image"],
    )
    problem = check_price(price)
    if problem:
        result.problem(f"{key!r}: {problem}")
        return None
    return priority, price


def _rate(entry: dict[str, Any], field: str, power: int) -> tuple[Decimal | None, str | None]:
    raw = entry.get(field)
    if raw is None:
        return None, None
    if isinstance(raw, bool) or not isinstance(raw, Decimal | int):
        return None, f"{field} is not a number ({raw!r:.40})"
    value = Decimal(raw)
    if not value.is_finite() or value < 0:
        return None, f"{field} is negative ({value})"
    return plain(value.scaleb(power)), None


_MERGED = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
    "input_per_kchar",
    "output_per_kchar",
    "per_image",
    "batch_discount_pct",
    "long_context",
)


def _merge(variants: list[tuple[int, str, CatalogPrice]], result: SourceResult) -> CatalogPrice:
    """One price from several keys naming the same model: the first wins, later ones fill gaps."""
    _, first_key, merged = variants[0]
    for _, key, other in variants[1:]:
        updates: dict[str, Any] = {}
        for field in _MERGED:
            mine, theirs = getattr(merged, field), getattr(other, field)
            same_threshold = isinstance(mine, LongContextRates) and isinstance(theirs, LongContextRates)
            if same_threshold and mine.threshold_tokens == theirs.threshold_tokens:
                updates[field] = _merge_long_context(mine, theirs)
                continue
            if mine is None and theirs is not None:
                updates[field] = theirs
            elif mine is not None and theirs is not None and mine != theirs:
                result.problem(
                    f"{merged.provider}/{merged.model}: {key!r} gives {field} {theirs}, "
                    f"{first_key!r} gives {mine}; kept {first_key!r}"
                )
        if updates:
            merged = msgspec.structs.replace(merged, source=f"{merged.source} + [{key}]", **updates)
    return merged


def _merge_long_context(mine: LongContextRates, theirs: LongContextRates) -> LongContextRates:
    """Long-context rates at one threshold: mine, with what only theirs has."""
    filled = {name: getattr(theirs, name) for name in _LC_FIELDS if getattr(mine, name) is None}
    return msgspec.structs.replace(mine, **filled)
