"""Cost rules of the calculator on a small catalog whose figures are easy to check."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest

from service.pricing.calculator import PriceBook
from service.pricing.catalog import parse_catalog
from service.usage.schemas import UsageEventIn

CATALOG = {
    "format": "finops-catalog/1",
    "prices": [
        {
            "provider": "openai",
            "model": "chat-a",
            "effective_from": "2024-01-01T00:00:00Z",
            "aliases": ["chat-a-2024-01-01"],
            "input_per_mtok": "10",
            "output_per_mtok": "30",
            "batch_discount_pct": "50",
        },
        {
            "provider": "openai",
            "model": "chat-a",
            "effective_from": "2024-06-01T00:00:00Z",
            "input_per_mtok": "2.50",
            "output_per_mtok": "10",
            "cached_input_per_mtok": "1.25",
            "batch_discount_pct": "50",
        },
        {
            "provider": "gemini",
            "model": "long-b",
            "effective_from": "2024-01-01T00:00:00Z",
            "input_per_mtok": "1.25",
            "output_per_mtok": "5",
            "input_per_kchar": "0.0003125",
            "per_image": "0.001315",
            "long_context": {"threshold_tokens": 128000, "input_per_mtok": "2.50", "output_per_mtok": "10"},
        },
        {
            "provider": "gemini",
            "model": "chars-c",
            "effective_from": "2024-01-01T00:00:00Z",
            "input_per_kchar": "0.000125",
            "output_per_kchar": "0.000375",
            "per_image": "0.0025",
        },
        {
            "provider": "bedrock",
            "model": "anthropic.claude-x-v1:0",
            "region": "us-east-1",
            "effective_from": "2024-01-01T00:00:00Z",
            "input_per_mtok": "3",
            "output_per_mtok": "15",
            "cached_input_per_mtok": "0.30",
            "cache_write_per_mtok": "3.75",
        },
        {
            "provider": "bedrock",
            "model": "anthropic.claude-x-v1:0",
            "region": "eu-central-1",
            "effective_from": "2024-01-01T00:00:00Z",
            "input_per_mtok": "3.30",
            "output_per_mtok": "16.50",
        },
    ],
}
AT = datetime(2024, 9, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    entries = parse_catalog(msgspec.json.encode(CATALOG))
    return PriceBook.from_catalog([(entry, 1) for entry in entries])


def usage(**counts: object) -> UsageEventIn:
    return UsageEventIn(service="s", provider="openai", model="m", **counts)  # type: ignore[arg-type]


def cost(
    book: PriceBook, provider: str, model: str, region: str | None = None, at: datetime = AT, **counts: object
) -> Decimal | None:
    price = book.price_for(provider, model, region, at)
    return None if price is None else price.cost(usage(**counts))


@pytest.mark.parametrize(
    ("provider", "model", "region", "at", "counts", "expected"),
    [
        # 1000 x 2.50/M + 500 x 10/M
        ("openai", "chat-a", None, AT, {"input_tokens": 1000, "output_tokens": 500}, "0.0075"),
        # the earlier price is in force before 2024-06-01: 1000 x 10/M + 500 x 30/M
        (
            "openai",
            "chat-a",
            None,
            datetime(2024, 5, 31, 23, 59, tzinfo=UTC),
            {"input_tokens": 1000, "output_tokens": 500},
            "0.025",
        ),
        # a dated alias and a snapshot suffix resolve to the same model
        ("openai", "chat-a-2024-01-01", None, AT, {"input_tokens": 1000}, "0.0025"),
        ("openai", "chat-a-2025-03-04", None, AT, {"input_tokens": 1000}, "0.0025"),
        # 600 uncached x 2.50/M + 400 cached x 1.25/M
        ("openai", "chat-a", None, AT, {"input_tokens": 1000, "cached_input_tokens": 400}, "0.002"),
        # batch halves everything: (1000 x 2.50/M + 1000 x 10/M) / 2
        (
            "openai",
            "chat-a",
            None,
            AT,
            {"input_tokens": 1000, "output_tokens": 1000, "batch": True},
            "0.00625",
        ),
        # at the long-context threshold the base rates apply ...
        ("gemini", "long-b", None, AT, {"input_tokens": 128000, "output_tokens": 1000}, "0.165"),
        # ... above it the tier applies to the whole request: 128001 x 2.50/M + 1000 x 10/M
        ("gemini", "long-b", None, AT, {"input_tokens": 128001, "output_tokens": 1000}, "0.3300025"),
        # characters per 1k and images: 2000 x 0.000125/1k + 3000 x 0.000375/1k + 2 x 0.0025
        (
            "gemini",
            "chars-c",
            None,
            AT,
            {"input_characters": 2000, "output_characters": 3000, "images": 2},
            "0.006375",
        ),
        # Bedrock is priced per region; a cross-region profile prefix is stripped
        ("bedrock", "anthropic.claude-x-v1:0", "us-east-1", AT, {"input_tokens": 1_000_000}, "3"),
        ("bedrock", "eu.anthropic.claude-x-v1:0", "eu-central-1", AT, {"input_tokens": 1_000_000}, "3.3"),
        ("bedrock", "anthropic.claude-x-v1", None, AT, {"output_tokens": 1000}, "0.015"),
        # cache reads and writes: 1000 x 3/M + 2000 x 0.30/M + 1000 x 3.75/M
        (
            "bedrock",
            "anthropic.claude-x-v1:0",
            "us-east-1",
            AT,
            {"input_tokens": 4000, "cached_input_tokens": 2000, "cache_write_tokens": 1000},
            "0.00735",
        ),
        # the eu price has no cache rates: cached tokens bill at the input rate
        (
            "bedrock",
            "anthropic.claude-x-v1:0",
            "eu-central-1",
            AT,
            {"input_tokens": 1000, "cached_input_tokens": 1000},
            "0.0033",
        ),
        # one token at a tiny rate keeps its 12 places
        ("gemini", "long-b", None, AT, {"input_tokens": 1}, "0.00000125"),
    ],
)
def test_cost(
    book: PriceBook,
    provider: str,
    model: str,
    region: str | None,
    at: datetime,
    counts: dict[str, object],
    expected: str,
) -> None:
    result = cost(book, provider, model, region, at, **counts)
    assert result == Decimal(expected)
    assert result is not None
    assert result.as_tuple().exponent == -12


def test_unknown_model_region_or_time_has_no_price(book: PriceBook) -> None:
    assert book.price_for("openai", "gpt-unknown", None, AT) is None
    assert book.price_for("gemini", "chat-a", None, AT) is None  # right name, wrong provider
    assert book.price_for("bedrock", "anthropic.claude-x-v1:0", "ap-south-1", AT) is None
    assert book.price_for("openai", "chat-a", None, datetime(2023, 12, 31, tzinfo=UTC)) is None


def test_usage_in_units_the_price_does_not_charge_is_unpriced_not_zero(book: PriceBook) -> None:
    # chars-c charges characters and images only: a tokens-only event cannot be priced
    assert cost(book, "gemini", "chars-c", input_tokens=1000, output_tokens=10) is None
    # but an event with characters is priced and its tokens add nothing
    assert cost(book, "gemini", "chars-c", input_tokens=1000, input_characters=1000) == Decimal("0.000125")
    # a price with token and character rates bills characters when reported, else tokens
    assert cost(book, "gemini", "long-b", input_tokens=1000, input_characters=8000) == Decimal("0.0025")
    assert cost(book, "gemini", "long-b", input_tokens=1000) == Decimal("0.00125")
    # an event with no usage at all costs exactly zero
    assert cost(book, "openai", "chat-a") == Decimal(0)


def test_version_ids_name_the_price_used(book: PriceBook) -> None:
    early = book.price_for("openai", "chat-a", None, datetime(2024, 2, 1, tzinfo=UTC))
    late = book.price_for("openai", "chat-a", None, AT)
    assert early is not None
    assert late is not None
    assert early.version_id == "openai/chat-a/*/2024-01-01T00:00:00Z/v1"
    assert late.version_id == "openai/chat-a/*/2024-06-01T00:00:00Z/v1"
    eu = book.price_for("bedrock", "anthropic.claude-x-v1:0", "eu-central-1", AT)
    assert eu is not None
    assert eu.version_id.startswith("bedrock/anthropic.claude-x-v1:0/eu-central-1/")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_per_mtok": "-1"}, "non-negative"),
        ({"batch_discount_pct": "150"}, "above 100"),
        ({"input_per_mtok": "NaN"}, "non-negative"),
    ],
)
def test_catalog_rejects_bad_figures(change: dict[str, str], message: str) -> None:
    bad = {**CATALOG, "prices": [{**CATALOG["prices"][0], **change}]}  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=message):
        parse_catalog(msgspec.json.encode(bad))


def test_catalog_rejects_duplicates() -> None:
    bad = {**CATALOG, "prices": [CATALOG["prices"][0], CATALOG["prices"][0]]}  # type: ignore[index]
    with pytest.raises(ValueError, match="duplicate"):
        parse_catalog(msgspec.json.encode(bad))
