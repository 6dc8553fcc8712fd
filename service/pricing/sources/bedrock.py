"""AWS Bedrock: the AWS Price List API (`pricing` GetProducts) through boto3.

Each PriceList entry is a JSON string: `product.attributes` names the model
(`model`, `titanModel`, or for Marketplace-sold models `servicename`), the
region (`regionCode`), what is billed (`inferenceType`, `usagetype`,
`feature`, `service_tier`), and `terms.OnDemand.*.priceDimensions.*` carry
`unit` and `pricePerUnit.USD` (a decimal string) with the term's
`effectiveDate`, which becomes the price's `effective_from`.

Mapping (documented choices):

- In scope: on-demand and batch rows for input, output, cache-read and
  cache-write tokens, regional (in-region) routing, standard tier. Rates per
  `1K tokens` are times 1,000 per Mtok, `1M tokens` as they are; Marketplace
  rows in `Units` are per million tokens only when their description says so.
- Batch rows give `batch_discount_pct` when batch input and output imply the
  same exact discount off the on-demand rates.
- Ignored (counted, not problems): provisioned throughput, model
  customization, flex/priority tiers, latency-optimized, cross-region
  global/geo routing (the catalog prices a cross-region profile as the base
  model in the caller's region), images, video, audio and everything else.
- Long-context rows are problems: the Price List does not state the
  threshold, so they cannot be mapped onto our tier.
- Model names map to Bedrock model ids through `BEDROCK_MODEL_IDS` (display
  names as the Price List spells them, compared case-insensitively without a
  vendor prefix, an ` Instruct` suffix or ` (Amazon Bedrock Edition)`); a
  name that already is a model id is used as it is; an unmapped name is a
  problem, never a guess.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from service.pricing.catalog import CatalogPrice
from service.pricing.sources.base import (
    DEFAULT_TIMEOUT_S,
    SourceError,
    SourceResult,
    batch_discount,
    check_price,
    exact_div,
    parse_money,
    redact,
)

SOURCE = "bedrock"
DEFAULT_SERVICE_CODES: tuple[str, ...] = ("AmazonBedrock", "AmazonBedrockService", "AmazonBedrockFoundationModels")
DEFAULT_MAX_PAGES = 500
PRICE_LIST_URL = "https://aws.amazon.com/bedrock/pricing/ (AWS Price List API)"

# Price List display name (lower case, see `_normalize_name`) → Bedrock model id.
BEDROCK_MODEL_IDS: dict[str, str] = {
    "claude instant": "anthropic.claude-instant-v1",
    "claude 2.0": "anthropic.claude-v2",
    "claude 2.1": "anthropic.claude-v2:1",
    "claude 3 haiku": "anthropic.claude-3-haiku-20240307-v1:0",
    "claude 3 sonnet": "anthropic.claude-3-sonnet-20240229-v1:0",
    "claude 3 opus": "anthropic.claude-3-opus-20240229-v1:0",
    "claude 3.5 sonnet": "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "claude 3.5 sonnet v2": "anthropic.claude-3-5-sonnet-20241022-v2:0",
    "claude 3.5 haiku": "anthropic.claude-3-5-haiku-20241022-v1:0",
    "claude 3.7 sonnet": "anthropic.claude-3-7-sonnet-20250219-v1:0",
    "claude sonnet 4": "anthropic.claude-sonnet-4-20250514-v1:0",
    "claude opus 4": "anthropic.claude-opus-4-20250514-v1:0",
    "claude opus 4.1": "anthropic.claude-opus-4-1-20250805-v1:0",
    "claude sonnet 4.5": "anthropic.claude-sonnet-4-5-20250929-v1:0",
    "claude haiku 4.5": "anthropic.claude-haiku-4-5-20251001-v1:0",
    "llama 3 8b": "meta.llama3-8b-instruct-v1:0",
    "llama 3 70b": "meta.llama3-70b-instruct-v1:0",
    "llama 3.1 8b": "meta.llama3-1-8b-instruct-v1:0",
    "llama 3.1 70b": "meta.llama3-1-70b-instruct-v1:0",
    "llama 3.1 405b": "meta.llama3-1-405b-instruct-v1:0",
    "llama 3.2 1b": "meta.llama3-2-1b-instruct-v1:0",
    "llama 3.2 3b": "meta.llama3-2-3b-instruct-v1:0",
    "llama 3.2 11b": "meta.llama3-2-11b-instruct-v1:0",
    "llama 3.2 90b": "meta.llama3-2-90b-instruct-v1:0",
    "llama 3.3 70b": "meta.llama3-3-70b-instruct-v1:0",
    "nova micro": "amazon.nova-micro-v1:0",
    "nova lite": "amazon.nova-lite-v1:0",
    "nova pro": "amazon.nova-pro-v1:0",
    "nova premier": "amazon.nova-premier-v1:0",
    "titan text express": "amazon.titan-text-express-v1",
    "titan text g1 - express": "amazon.titan-text-express-v1",
    "titan text lite": "amazon.titan-text-lite-v1",
    "titan text g1 - lite": "amazon.titan-text-lite-v1",
    "titan text premier": "amazon.titan-text-premier-v1:0",
    "titan text g1 - premier": "amazon.titan-text-premier-v1:0",
    "titan embeddings g1 - text": "amazon.titan-embed-text-v1",
    "titan text embeddings": "amazon.titan-embed-text-v1",
    "titan text embeddings v2": "amazon.titan-embed-text-v2:0",
}

_MODEL_ID = re.compile(r"^[a-z0-9-]+\.[a-z0-9][a-z0-9.:-]*$")
_PROFILE_PREFIX = re.compile(r"^(?:us|eu|apac|ap|jp|au|ca|us-gov|global)\.(?=[a-z0-9-]+\.)")
_VENDOR_PREFIX = re.compile(r"^(?:anthropic|meta|amazon|aws)\s+")
_REGION = re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-\d{1,2}$")
_FIELDS = ("input", "output", "cached_input", "cache_write")


@dataclass
class _Group:
    """Rates found for one (model id, region)."""

    standard: dict[str, Decimal] = field(default_factory=dict)
    batch: dict[str, Decimal] = field(default_factory=dict)
    effective: datetime | None = None
    names: set[str] = field(default_factory=set)


def fetch_bedrock(
    access_key_id: str,
    secret_access_key: str,
    *,
    session_token: str | None = None,
    endpoint_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    regions: Sequence[str] | None = None,
    service_codes: Sequence[str] = DEFAULT_SERVICE_CODES,
    max_pages: int = DEFAULT_MAX_PAGES,
    now: datetime | None = None,
    client: Any = None,
) -> SourceResult:
    """Fetch Bedrock list prices from the AWS Price List API.

    `regions` narrows the query to those region codes (default: every
    region). `endpoint_url` points the client elsewhere (tests); `client`
    replaces it altogether.
    """
    secrets = [access_key_id, secret_access_key, session_token]
    if client is None:
        if not access_key_id or not secret_access_key:
            raise SourceError(f"{SOURCE}: no AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
        client = _pricing_client(access_key_id, secret_access_key, session_token, endpoint_url, timeout)
    fetched_at = now or datetime.now(UTC)
    entries: list[Any] = []
    missing: list[str] = []
    for service_code in service_codes:
        region_filters: list[str | None] = list(regions) if regions else [None]
        for region in region_filters:
            try:
                entries += _get_products(client, service_code, region, max_pages, secrets)
            except _ServiceMissing:
                missing.append(service_code)
                break
    result = parse_price_list(entries, now=fetched_at)
    for service_code in missing:
        result.problem(f"service code {service_code} is not in the Price List")
    return result


class _ServiceMissing(Exception):
    pass


def _pricing_client(
    access_key_id: str, secret_access_key: str, session_token: str | None, endpoint_url: str | None, timeout: float
) -> Any:
    boto3 = importlib.import_module("boto3")
    config = importlib.import_module("botocore.config")
    return boto3.client(
        "pricing",
        region_name="us-east-1",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        config=config.Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def _get_products(
    client: Any, service_code: str, region: str | None, max_pages: int, secrets: list[str | None]
) -> list[Any]:
    filters = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}] if region else []
    entries: list[Any] = []
    token: str | None = None
    seen_tokens: set[str] = set()
    for _ in range(max_pages):
        request: dict[str, Any] = {
            "ServiceCode": service_code,
            "Filters": filters,
            "FormatVersion": "aws_v1",
            "MaxResults": 100,
        }
        if token:
            request["NextToken"] = token
        try:
            page = client.get_products(**request)
        except Exception as exc:  # the SDK boundary: every failure of the call is the source's failure
            response = getattr(exc, "response", None)
            error = response.get("Error") if isinstance(response, dict) else None
            code = error.get("Code") if isinstance(error, dict) else None
            if code == "NotFoundException" and token is None:
                raise _ServiceMissing(service_code) from None
            message = redact(str(exc), secrets)[:300]
            raise SourceError(
                f"{SOURCE}: GetProducts({service_code}) failed: {type(exc).__name__}: {message}"
            ) from None
        if not isinstance(page, dict) or not isinstance(page.get("PriceList"), list):
            raise SourceError(f"{SOURCE}: GetProducts({service_code}) answered without a PriceList array")
        entries += page["PriceList"]
        token = page.get("NextToken")
        if not token:
            return entries
        if not isinstance(token, str) or token in seen_tokens:
            raise SourceError(f"{SOURCE}: GetProducts({service_code}) paging loops (NextToken repeats)")
        seen_tokens.add(token)
    raise SourceError(f"{SOURCE}: GetProducts({service_code}) did not end within {max_pages} pages")


def parse_price_list(entries: Sequence[Any], *, now: datetime | None = None) -> SourceResult:
    """Map Price List entries (JSON strings, as GetProducts returns them) to catalog prices."""
    fetched_at = now or datetime.now(UTC)
    result = SourceResult(source=SOURCE, fetched_at=fetched_at)
    groups: dict[tuple[str, str], _Group] = {}
    unmapped: set[str] = set()
    for index, raw in enumerate(entries):
        _map_entry(index, raw, groups, unmapped, result)
    for name in sorted(unmapped):
        result.problem(f"model {name!r} has no Bedrock model id in BEDROCK_MODEL_IDS")
    for (model_id, region), group in sorted(groups.items()):
        price = _price(model_id, region, group, fetched_at, result)
        if price is not None:
            result.prices.append(price)
    return result


def _map_entry(
    index: int, raw: Any, groups: dict[tuple[str, str], _Group], unmapped: set[str], result: SourceResult
) -> None:
    where = f"PriceList[{index}]"
    try:
        entry = msgspec.json.decode(raw) if isinstance(raw, str | bytes) else None
    except msgspec.DecodeError:
        entry = None
    if not isinstance(entry, dict):
        result.problem(f"{where}: not a JSON price entry")
        return
    product = entry.get("product")
    attrs = product.get("attributes") if isinstance(product, dict) else None
    if not isinstance(attrs, dict):
        result.problem(f"{where}: no product.attributes")
        return
    sku = product.get("sku") if isinstance(product, dict) else None
    if isinstance(sku, str):
        where = f"{where} (sku {sku[:40]})"
    kind = _classify(attrs)
    if kind is None:
        result.ignored += 1
        return
    if kind == "long_context":
        result.problem(f"{where}: long-context rate left out (the Price List states no threshold)")
        return
    batch, rate_field = kind.split(":")
    region = attrs.get("regionCode")
    if not isinstance(region, str) or not _REGION.match(region):
        result.problem(f"{where}: no usable regionCode ({region!r:.40})")
        return
    name = _display_name(attrs)
    if name is None:
        result.problem(f"{where}: names no model")
        return
    model_id = _model_id(name)
    if model_id is None:
        unmapped.add(name)
        return
    dimension = _one_dimension(entry, where, result)
    if dimension is None:
        return
    effective, unit, usd, description = dimension
    per_mtok = _per_mtok(usd, unit, description)
    if isinstance(per_mtok, str):
        result.problem(f"{where}: {per_mtok}")
        return
    group = groups.setdefault((model_id, region), _Group())
    rates = group.batch if batch == "batch" else group.standard
    if rate_field in rates and rates[rate_field] != per_mtok:
        result.problem(
            f"{where}: {model_id} {region} {batch} {rate_field} listed twice "
            f"({rates[rate_field]} and {per_mtok}); kept the first"
        )
        return
    rates[rate_field] = per_mtok
    group.names.add(name)
    if effective is not None and (group.effective is None or effective > group.effective):
        group.effective = effective


def _classify(attrs: dict[str, Any]) -> str | None:
    """'standard:<field>' / 'batch:<field>' / 'long_context' for rows in scope, None for the rest."""

    def text(key: str) -> str:
        value = attrs.get(key)
        return " ".join(value.lower().split()) if isinstance(value, str) else ""

    feature, inference, usagetype = text("feature"), text("inferenceType"), text("usagetype")
    tier = text("service_tier") or text("serviceTier")
    batch = feature.replace(" ", "") == "batchinference" or "batch" in inference or "batch" in usagetype
    if feature and not batch and feature != "on-demand inference":
        return None  # provisioned throughput, model customization, ...
    if tier not in ("", "standard") or re.search(r"\b(flex|priority)\b", inference):
        return None
    if "flex" in usagetype or "priority" in usagetype or "latency" in usagetype or "latency" in inference:
        return None
    if "custom" in usagetype or "provisioned" in usagetype:
        return None
    if "cross-region" in usagetype or "_global" in usagetype or "cross-region" in inference or "global" in inference:
        return None
    words = f"{inference} {usagetype}"
    if "long context" in words or "longcontext" in words or "long-context" in words:
        return "long_context"
    compact = words.replace("-", " ").replace("_", " ")
    if re.search(r"cache ?read", compact):
        rate_field = "cached_input"
    elif re.search(r"cache ?write", compact):
        rate_field = "cache_write"
    elif re.search(r"\binput ?tokens?\b|inputtokencount", compact):
        rate_field = "input"
    elif re.search(r"\boutput ?tokens?\b|outputtokencount", compact):
        rate_field = "output"
    else:
        return None  # images, video, audio, search units, ...
    return f"{'batch' if batch else 'standard'}:{rate_field}"


def _display_name(attrs: dict[str, Any]) -> str | None:
    for key in ("model", "titanModel", "servicename"):
        value = attrs.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return None


def _normalize_name(name: str) -> str:
    name = " ".join(name.lower().split())
    name = name.removesuffix(" (amazon bedrock edition)")
    name = _VENDOR_PREFIX.sub("", name)
    return name.removesuffix(" instruct")


def _model_id(name: str) -> str | None:
    if _MODEL_ID.match(name):
        return _PROFILE_PREFIX.sub("", name)
    return BEDROCK_MODEL_IDS.get(_normalize_name(name))


def _one_dimension(
    entry: dict[str, Any], where: str, result: SourceResult
) -> tuple[datetime | None, str, Decimal, str] | None:
    terms = entry.get("terms")
    on_demand = terms.get("OnDemand") if isinstance(terms, dict) else None
    if not isinstance(on_demand, dict) or not on_demand:
        result.problem(f"{where}: no terms.OnDemand")
        return None
    found: list[tuple[datetime | None, str, Decimal, str]] = []
    for term in on_demand.values():
        dimensions = term.get("priceDimensions") if isinstance(term, dict) else None
        if not isinstance(dimensions, dict):
            result.problem(f"{where}: an OnDemand term has no priceDimensions")
            return None
        effective = _effective_date(term.get("effectiveDate"))
        for dimension in dimensions.values():
            if not isinstance(dimension, dict):
                result.problem(f"{where}: a price dimension is not an object")
                return None
            unit = dimension.get("unit")
            per_unit = dimension.get("pricePerUnit")
            if not isinstance(unit, str) or not isinstance(per_unit, dict):
                result.problem(f"{where}: a price dimension has no unit or pricePerUnit")
                return None
            if "USD" not in per_unit:
                currencies = ", ".join(sorted(str(key) for key in per_unit)[:5])
                result.problem(f"{where}: priced in {currencies or 'no currency'}, not USD")
                return None
            usd = parse_money(per_unit["USD"])
            if usd is None:
                result.problem(f"{where}: pricePerUnit.USD {per_unit['USD']!r:.40} is not a number")
                return None
            if usd < 0:
                result.problem(f"{where}: negative price {usd}")
                return None
            begin = dimension.get("beginRange", "0")
            if begin not in ("0", 0, None):
                result.problem(f"{where}: volume tiers are not modelled (beginRange {begin!r:.20})")
                return None
            description = dimension.get("description")
            found.append((effective, unit, usd, description if isinstance(description, str) else ""))
    if len(found) != 1:
        result.problem(f"{where}: {len(found)} price dimensions where one was expected")
        return None
    return found[0]


def _effective_date(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


_UNIT_TOKENS = {
    "1ktokens": Decimal(1000),
    "1000tokens": Decimal(1000),
    "1mtokens": Decimal(1_000_000),
    "1000000tokens": Decimal(1_000_000),
    "1milliontokens": Decimal(1_000_000),
    "milliontokens": Decimal(1_000_000),
}


def _per_mtok(usd: Decimal, unit: str, description: str) -> Decimal | str:
    """USD per million tokens, or why the unit cannot be read."""
    key = re.sub(r"[\s,]", "", unit.lower())
    tokens = _UNIT_TOKENS.get(key)
    if tokens is None and key == "units":
        # Marketplace rows: the unit is "Units"; only the description says per what.
        stated = re.search(r"per\s*(1\s*m|1,?000,?000|million|1\s*k|1,?000)\s*(?:\w+\s+)?tokens", description.lower())
        if stated:
            tokens = Decimal(1_000) if stated.group(1).replace(" ", "") in ("1k", "1000", "1,000") else Decimal(10**6)
    if tokens is None:
        return f"unknown unit {unit!r:.40}"
    value = exact_div(usd * 1_000_000, tokens)
    if value is None:
        return f"{usd} per {unit} has no exact per-Mtok figure"
    return value


def _price(
    model_id: str, region: str, group: _Group, fetched_at: datetime, result: SourceResult
) -> CatalogPrice | None:
    std = group.standard
    if not std:
        result.problem(f"{model_id} {region}: batch rates without on-demand rates")
        return None
    discount, why = batch_discount([(std.get(name), group.batch.get(name)) for name in ("input", "output")])
    if why:
        result.problem(f"{model_id} {region}: batch discount left out: {why}")
    price = CatalogPrice(
        provider="bedrock",
        model=model_id,
        region=region,
        effective_from=group.effective or fetched_at,
        input_per_mtok=std.get("input"),
        output_per_mtok=std.get("output"),
        cached_input_per_mtok=std.get("cached_input"),
        cache_write_per_mtok=std.get("cache_write"),
        batch_discount_pct=discount,
        source=f"{PRICE_LIST_URL}: {', '.join(sorted(group.names))} in {region}",
    )
    problem = check_price(price)
    if problem:
        result.problem(f"{model_id} {region}: {problem}")
        return None
    return price
