"""Google Gemini: the Cloud Billing Catalog API (services, then their SKUs).

`GET {base}/v1/services` finds the billing services by display name (default
"Vertex AI" and "Gemini API"); `GET {base}/v1/services/{id}/skus?currencyCode=USD`
lists their SKUs, page by page (`nextPageToken`). A SKU has a `description`
("Gemini 1.5 Flash Input Text", "Gemini 2.5 Pro Output Token Count (Prompts >
200K)"), `serviceRegions`, and `pricingInfo[].pricingExpression` with
`usageUnit` ("k{char}", "M{token}", "count"...), `usageUnitDescription`,
`baseUnit`/`baseUnitConversionFactor` and `tieredRates[].unitPrice`
(`currencyCode`, whole `units` plus `nanos` billionths — read as exact
Decimals).

Mapping (documented choices):

- Model: "Gemini <version> <Pro|Flash>[ Lite| 8B| Vision]" in the
  description → `gemini-<version>-<variant>` (`gemini-1.5-flash`,
  `gemini-2.0-flash-lite`, `gemini-1.0-pro-vision`), the catalog's names.
- What is billed: input/prompt, output/response, cached input (tokens),
  per image (input), by token or character according to the unit;
  "> 128K" / "> 200K" / "long context" SKUs fill the long-context tier with
  that threshold; "Batch" SKUs give `batch_discount_pct` when batch input
  and output imply the same exact discount. Tuning, grounding, search, cache
  storage, provisioned throughput, thinking, priority/flex, audio, video and
  live SKUs are ignored.
- Regions: Gemini prices are catalogued for every region (`region: ""`):
  a SKU counts when its `serviceRegions` include one of `regions` (default
  `global`, then `us-central1`); where two SKUs give one rate, the earlier
  region in that list, then the earlier service, wins.
- Volume tiers (more than one tiered rate) are not modelled: such SKUs are
  problems. `effective_from` is the fetch time: the catalog states no
  effective date of a list price.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import msgspec

from service.pricing.catalog import CatalogPrice, LongContextRates
from service.pricing.sources.base import (
    DEFAULT_TIMEOUT_S,
    SourceError,
    SourceResult,
    batch_discount,
    check_price,
    decode_json,
    exact_div,
    http_get,
)

SOURCE = "gemini"
BILLING_URL = "https://cloudbilling.googleapis.com"
DEFAULT_SERVICE_NAMES: tuple[str, ...] = ("Vertex AI", "Gemini API")
DEFAULT_REGIONS: tuple[str, ...] = ("global", "us-central1")
DEFAULT_MAX_PAGES = 100
SCOPE = "https://www.googleapis.com/auth/cloud-platform"

_MODEL = re.compile(r"\bgemini\s+(\d+(?:\.\d+)?)\s+(pro|flash)(?:[\s-]+(lite|8b|vision))?\b")
_IGNORED = re.compile(
    r"tuning|tuned|grounding|search|storage|provisioned|thinking|priority|flex|audio|video|\blive\b|"
    r"embedding|\btts\b|training|code execution|agent"
)
_LONG = re.compile(r"(?:>|above|over|longer than|greater than)\s*(\d+)\s*k\b")
_UNIT = re.compile(
    r"^(?P<n>\d[\d,]*)?\s*(?P<scale>k|m|thousand|million)?\s*\{?"
    r"(?P<what>tokens?|chars?|characters?|images?)\}?$"
)
_SCALE = {None: 1, "k": 1_000, "thousand": 1_000, "m": 1_000_000, "million": 1_000_000}


@dataclass
class _Model:
    """Rates found for one model: (tier, batch, field) → (rank, value)."""

    rates: dict[tuple[str, bool, str], tuple[int, Decimal]] = field(default_factory=dict)
    threshold: int | None = None
    skus: set[str] = field(default_factory=set)


def fetch_gemini(
    *,
    api_key: str | None = None,
    credentials_file: str | None = None,
    access_token: str | None = None,
    base_url: str = BILLING_URL,
    timeout: float = DEFAULT_TIMEOUT_S,
    service_names: Sequence[str] = DEFAULT_SERVICE_NAMES,
    regions: Sequence[str] = DEFAULT_REGIONS,
    max_pages: int = DEFAULT_MAX_PAGES,
    now: datetime | None = None,
    client: httpx.Client | None = None,
) -> SourceResult:
    """Fetch Gemini list prices from the Cloud Billing Catalog.

    Auth: an `access_token`, else a token from `credentials_file`
    (GOOGLE_APPLICATION_CREDENTIALS, through google-auth), else `api_key`
    (GOOGLE_API_KEY, sent as `key=`).
    """
    if access_token is None and credentials_file:
        access_token = google_access_token(credentials_file, timeout=timeout)
    if not access_token and not api_key:
        raise SourceError(f"{SOURCE}: no credentials (GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_API_KEY)")
    secrets = [api_key, access_token]
    headers = {"Accept": "application/json"}
    auth_params: dict[str, str] = {}
    if access_token:
        headers["Authorization"] = f"Bearer {access_token}"
    elif api_key:
        auth_params["key"] = api_key
    base = base_url.rstrip("/")

    def pages(path: str, params: dict[str, str], items: str) -> list[Any]:
        found: list[Any] = []
        token = ""
        seen: set[str] = set()
        for _ in range(max_pages):
            query = {**params, **auth_params, **({"pageToken": token} if token else {})}
            body = http_get(
                SOURCE, f"{base}/{path}", timeout=timeout, params=query, headers=headers, secrets=secrets, client=client
            )
            page = decode_json(SOURCE, body, path)
            if not isinstance(page, dict) or not isinstance(page.get(items, []), list):
                raise SourceError(f"{SOURCE}: {path} answered without a `{items}` array")
            found += page.get(items, [])
            token = page.get("nextPageToken") or ""
            if not token:
                return found
            if not isinstance(token, str) or token in seen:
                raise SourceError(f"{SOURCE}: {path} paging loops (nextPageToken repeats)")
            seen.add(token)
        raise SourceError(f"{SOURCE}: {path} did not end within {max_pages} pages")

    services = pages("v1/services", {"pageSize": "5000"}, "services")
    wanted = [name.lower() for name in service_names]
    chosen: list[tuple[int, str, str]] = []
    for service in services:
        if not isinstance(service, dict):
            continue
        display, name = service.get("displayName"), service.get("name")
        if isinstance(display, str) and isinstance(name, str) and display.lower() in wanted:
            if not re.fullmatch(r"services/[A-Za-z0-9-]{1,64}", name):
                raise SourceError(f"{SOURCE}: service {display!r} has an unusable name {name!r:.60}")
            chosen.append((wanted.index(display.lower()), name, display))
    if not chosen:
        raise SourceError(f"{SOURCE}: no billing service named {' or '.join(service_names)}")
    skus: list[tuple[str, Any]] = []
    for _, name, display in sorted(chosen):
        skus += [
            (display, sku) for sku in pages(f"v1/{name}/skus", {"currencyCode": "USD", "pageSize": "5000"}, "skus")
        ]
    return parse_skus(skus, regions=regions, now=now)


def google_access_token(credentials_file: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """An OAuth access token from a service-account (or authorized-user) JSON file, via google-auth."""
    try:
        transport = importlib.import_module("google.auth.transport.requests")
        auth_errors = importlib.import_module("google.auth.exceptions")
        service_account = importlib.import_module("google.oauth2.service_account")
        user_credentials = importlib.import_module("google.oauth2.credentials")
    except ImportError:
        raise SourceError(f"{SOURCE}: google-auth is not installed; use GOOGLE_API_KEY") from None
    try:
        with open(credentials_file, "rb") as file:
            info = msgspec.json.decode(file.read())
    except (OSError, msgspec.DecodeError):
        raise SourceError(f"{SOURCE}: cannot read the credentials file as JSON") from None
    kind = info.get("type") if isinstance(info, dict) else None
    session = transport.Request()

    def request(*args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = timeout  # google-auth's own default is 120 s
        return session(*args, **kwargs)

    try:
        if kind == "service_account":
            credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        elif kind == "authorized_user":
            credentials = user_credentials.Credentials.from_authorized_user_info(info, scopes=[SCOPE])
        else:
            raise SourceError(f"{SOURCE}: credentials of type {kind!r:.40} are not supported")
        credentials.refresh(request)
    except (auth_errors.GoogleAuthError, ValueError) as exc:
        raise SourceError(f"{SOURCE}: cannot get a token from the credentials file: {type(exc).__name__}") from None
    token = credentials.token
    if not isinstance(token, str) or not token:
        raise SourceError(f"{SOURCE}: the credentials gave no access token")
    return token


def parse_skus(
    skus: Sequence[tuple[str, Any]], *, regions: Sequence[str] = DEFAULT_REGIONS, now: datetime | None = None
) -> SourceResult:
    """Map (service display name, SKU) pairs to catalog prices."""
    fetched_at = now or datetime.now(UTC)
    result = SourceResult(source=SOURCE, fetched_at=fetched_at)
    models: dict[str, _Model] = {}
    services: list[str] = []
    for index, (service, sku) in enumerate(skus):
        if service not in services:
            services.append(service)
        _map_sku(index, sku, services.index(service), regions, models, result)
    for model_id, found in sorted(models.items()):
        price = _price(model_id, found, fetched_at, result)
        if price is not None:
            result.prices.append(price)
    return result


def _map_sku(
    index: int, sku: Any, service_rank: int, regions: Sequence[str], models: dict[str, _Model], result: SourceResult
) -> None:
    if not isinstance(sku, dict) or not isinstance(sku.get("description"), str):
        result.problem(f"skus[{index}]: not a SKU with a description")
        return
    description = sku["description"][:300]
    text = " ".join(description.lower().split())
    where = f"SKU {description!r}"
    if "gemini" not in text or _IGNORED.search(text):
        result.ignored += 1
        return
    match = _MODEL.search(text)
    if match is None:
        result.problem(f"{where}: names no versioned Gemini model")
        return
    version, family, variant = match.groups()
    model_id = f"gemini-{version}-{family}" + (f"-{variant}" if variant else "")
    if re.search(r"\bcached?\b|\bcache\b", text) and re.search(r"\binput|prompt", text):
        direction = "cached_input"
    elif re.search(r"\boutput|response|completion", text):
        direction = "output"
    elif re.search(r"\binput|prompt", text):
        direction = "input"
    else:
        result.ignored += 1
        return
    sku_regions = sku.get("serviceRegions")
    if not isinstance(sku_regions, list):
        result.problem(f"{where}: no serviceRegions")
        return
    ranks = [regions.index(region) for region in sku_regions if isinstance(region, str) and region in regions]
    if not ranks:
        result.ignored += 1
        return
    rank = min(ranks) * 100 + service_rank
    expression = _pricing_expression(sku, where, result)
    if expression is None:
        return
    unit = _unit(expression, text)
    if isinstance(unit, str):
        result.problem(f"{where}: {unit}")
        return
    quantity, what = unit
    unit_price = _unit_price(expression, where, result)
    if unit_price is None:
        return
    if what == "image":
        if direction != "input":
            result.ignored += 1
            return
        rate_field, value = "per_image", exact_div(unit_price, quantity)
    elif what == "char":
        if direction == "cached_input":
            result.problem(f"{where}: cached input by character has no field in the catalog")
            return
        rate_field, value = f"{direction}_per_kchar", exact_div(unit_price * 1000, quantity)
    else:
        rate_field, value = f"{direction}_per_mtok", exact_div(unit_price * 1_000_000, quantity)
    if value is None:
        result.problem(f"{where}: {unit_price} per {quantity} has no exact figure")
        return
    found = models.setdefault(model_id, _Model())
    tier = "base"
    long_match = _LONG.search(text)
    if long_match or "long context" in text:
        if long_match is None:
            result.problem(f"{where}: long-context SKU states no threshold")
            return
        threshold = int(long_match.group(1)) * 1000
        if found.threshold is not None and found.threshold != threshold:
            result.problem(f"{where}: long-context threshold {threshold} differs from {found.threshold}")
            return
        found.threshold = threshold
        tier = "long"
    key = (tier, "batch" in text, rate_field)
    previous = found.rates.get(key)
    if previous is not None and previous[1] != value and previous[0] // 100 == rank // 100:
        result.problem(f"{where}: {model_id} {rate_field} {value} differs from {previous[1]} in the same region")
    if previous is None or rank < previous[0]:
        found.rates[key] = (rank, value)
    found.skus.add(description)


def _pricing_expression(sku: dict[str, Any], where: str, result: SourceResult) -> dict[str, Any] | None:
    infos = sku.get("pricingInfo")
    if not isinstance(infos, list) or not infos or not all(isinstance(info, dict) for info in infos):
        result.problem(f"{where}: no pricingInfo")
        return None
    # Several entries are several effective times: the latest applies.
    info = max(infos, key=lambda item: str(item.get("effectiveTime") or ""))
    expression = info.get("pricingExpression")
    if not isinstance(expression, dict):
        result.problem(f"{where}: no pricingExpression")
        return None
    return expression


def _parse_unit(raw: Any) -> tuple[Decimal, str | None] | None:
    if not isinstance(raw, str):
        return None
    text = " ".join(raw.lower().replace("per ", "").split())
    if text in ("count", "1 count", "unit", "units"):
        return Decimal(1), None
    match = _UNIT.match(text)
    if match is None:
        return None
    n = Decimal(match.group("n").replace(",", "")) if match.group("n") else Decimal(1)
    what = match.group("what").rstrip("s")
    what = "char" if what.startswith("char") else what
    return n * _SCALE[match.group("scale")], what


def _unit(expression: dict[str, Any], text: str) -> tuple[Decimal, str] | str:
    """(quantity, token|char|image) the unit price is for, or why not."""
    usage_unit = expression.get("usageUnit")
    parsed = [p for p in (_parse_unit(usage_unit), _parse_unit(expression.get("usageUnitDescription"))) if p]
    if not parsed:
        base = _parse_unit(expression.get("baseUnit"))
        factor = expression.get("baseUnitConversionFactor")
        if base is None or isinstance(factor, bool) or not isinstance(factor, int | float | str):
            return f"unknown unit {usage_unit!r:.40}"
        try:
            factor_value = Decimal(str(factor))
        except ArithmeticError:
            return f"unknown unit {usage_unit!r:.40}"
        if not factor_value.is_finite() or factor_value <= 0 or factor_value != factor_value.to_integral_value():
            return f"unusable baseUnitConversionFactor {factor!r:.20}"
        parsed = [(base[0] * factor_value, base[1])]
    quantities = {quantity for quantity, _ in parsed}
    kinds = {kind for _, kind in parsed if kind}
    if len(quantities) > 1 or len(kinds) > 1:
        return f"unit mix-up: usageUnit {usage_unit!r:.30} and its description disagree"
    quantity = quantities.pop()
    said = "image" if "image" in text else "char" if "character" in text else "token" if "token" in text else None
    unit_kind = kinds.pop() if kinds else None
    if unit_kind and said and unit_kind != said:
        return f"unit mix-up: the description bills {said}s, the unit counts {unit_kind}s"
    kind = unit_kind or said
    if kind is None:
        return f"the unit {usage_unit!r:.30} does not say what it counts"
    if quantity <= 0:
        return "a unit of zero"
    return quantity, kind


def _unit_price(expression: dict[str, Any], where: str, result: SourceResult) -> Decimal | None:
    tiers = expression.get("tieredRates")
    if not isinstance(tiers, list) or not tiers:
        result.problem(f"{where}: no tieredRates")
        return None
    if len(tiers) > 1:
        result.problem(f"{where}: {len(tiers)} volume tiers are not modelled")
        return None
    tier = tiers[0]
    unit_price = tier.get("unitPrice") if isinstance(tier, dict) else None
    if not isinstance(unit_price, dict):
        result.problem(f"{where}: no unitPrice")
        return None
    currency = unit_price.get("currencyCode", "USD")
    if currency != "USD":
        result.problem(f"{where}: priced in {currency!r:.10}, not USD")
        return None
    units, nanos = unit_price.get("units", "0"), unit_price.get("nanos", 0)
    if isinstance(units, str) and re.fullmatch(r"-?\d{1,15}", units.strip()):
        units = int(units)
    if isinstance(units, bool) or isinstance(nanos, bool) or not isinstance(units, int) or not isinstance(nanos, int):
        result.problem(f"{where}: unitPrice units/nanos are not integers")
        return None
    if abs(nanos) >= 1_000_000_000 or (units > 0 and nanos < 0) or (units < 0 and nanos > 0):
        result.problem(f"{where}: unitPrice nanos {nanos} out of range")
        return None
    value = Decimal(units) + Decimal(nanos).scaleb(-9)
    if value < 0:
        result.problem(f"{where}: negative price {value}")
        return None
    return value


def _price(model_id: str, found: _Model, fetched_at: datetime, result: SourceResult) -> CatalogPrice | None:
    def rate(tier: str, rate_field: str, batch: bool = False) -> Decimal | None:
        entry = found.rates.get((tier, batch, rate_field))
        return entry[1] if entry else None

    base = {
        name: rate("base", name)
        for name in (
            "input_per_mtok",
            "output_per_mtok",
            "cached_input_per_mtok",
            "input_per_kchar",
            "output_per_kchar",
            "per_image",
        )
    }
    if all(value is None for value in base.values()):
        result.problem(f"{model_id}: only long-context or batch rates found")
        return None
    long_context = None
    if found.threshold is not None:
        long_context = LongContextRates(threshold_tokens=found.threshold, **{name: rate("long", name) for name in base})
    pairs = [(base[name], rate("base", name, batch=True)) for name in ("input_per_mtok", "output_per_mtok")]
    pairs += [(base[name], rate("base", name, batch=True)) for name in ("input_per_kchar", "output_per_kchar")]
    discount, why = batch_discount(pairs)
    if why:
        result.problem(f"{model_id}: batch discount left out: {why}")
    price = CatalogPrice(
        provider="gemini",
        model=model_id,
        effective_from=fetched_at,
        input_per_mtok=base["input_per_mtok"],
        output_per_mtok=base["output_per_mtok"],
        cached_input_per_mtok=base["cached_input_per_mtok"],
        input_per_kchar=base["input_per_kchar"],
        output_per_kchar=base["output_per_kchar"],
        per_image=base["per_image"],
        batch_discount_pct=discount,
        long_context=long_context,
        source="Cloud Billing Catalog API: " + "; ".join(sorted(found.skus))[:900],
    )
    problem = check_price(price)
    if problem:
        result.problem(f"{model_id}: {problem}")
        return None
    return price
