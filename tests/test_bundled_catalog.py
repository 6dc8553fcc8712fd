"""Exact costs from the bundled catalog, each worked out by hand from its figures."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from service.pricing.calculator import PriceBook
from service.pricing.catalog import load_bundled_catalog
from service.usage.schemas import UsageEventIn


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.from_catalog([(entry, 1) for entry in load_bundled_catalog()])


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


CASES = [
    # gpt-4o before the 2024-10-02 cut: 1000 x $5/M + 500 x $15/M
    ("openai", "gpt-4o", None, "2024-06-01", {"input_tokens": 1000, "output_tokens": 500}, "0.0125"),
    # after it, with cached input: 1500 x $2.50/M + 500 x $1.25/M + 300 x $10/M
    (
        "openai",
        "gpt-4o",
        None,
        "2025-01-01",
        {"input_tokens": 2000, "cached_input_tokens": 500, "output_tokens": 300},
        "0.007375",
    ),
    # the dated snapshot gpt-4o-2024-05-13 stays at $5/$15
    (
        "openai",
        "gpt-4o-2024-05-13",
        None,
        "2025-01-01",
        {"input_tokens": 1000, "output_tokens": 500},
        "0.0125",
    ),
    # batch halves gpt-4o-mini: (10000 x $0.15/M + 1000 x $0.60/M) / 2
    (
        "openai",
        "gpt-4o-mini-2024-07-18",
        None,
        "2025-01-01",
        {"input_tokens": 10000, "output_tokens": 1000, "batch": True},
        "0.00105",
    ),
    # gpt-4.1 cached input: 2000 x $2/M + 2000 x $0.50/M + 1000 x $8/M
    (
        "openai",
        "gpt-4.1-2025-04-14",
        None,
        "2025-06-01",
        {"input_tokens": 4000, "cached_input_tokens": 2000, "output_tokens": 1000},
        "0.013",
    ),
    ("openai", "gpt-4-0613", None, "2024-03-01", {"input_tokens": 1000, "output_tokens": 1000}, "0.09"),
    (
        "openai",
        "gpt-4-1106-preview",
        None,
        "2024-03-01",
        {"input_tokens": 1000, "output_tokens": 1000},
        "0.04",
    ),
    # gpt-3.5-turbo before and after its 2024-02-16 price
    ("openai", "gpt-3.5-turbo", None, "2023-09-01", {"input_tokens": 1000, "output_tokens": 1000}, "0.0035"),
    ("openai", "gpt-3.5-turbo", None, "2024-06-01", {"input_tokens": 1000, "output_tokens": 1000}, "0.002"),
    ("openai", "text-embedding-3-small", None, "2025-01-01", {"input_tokens": 8000}, "0.00016"),
    # Gemini 1.0 Pro by character and image: 4 x $0.00025 + 1 x $0.0005 + 1 x $0.0025
    (
        "gemini",
        "gemini-pro",
        None,
        "2024-03-01",
        {"input_characters": 4000, "output_characters": 1000, "images": 1},
        "0.004",
    ),
    # Gemini 1.5 Pro under and over the 128k tier: 100000 x $1.25/M + 1000 x $5/M ...
    (
        "gemini",
        "gemini-1.5-pro-002",
        None,
        "2025-01-01",
        {"input_tokens": 100000, "output_tokens": 1000},
        "0.13",
    ),
    # ... and 200000 x $2.50/M + 1000 x $10/M
    ("gemini", "gemini-1.5-pro", None, "2025-01-01", {"input_tokens": 200000, "output_tokens": 1000}, "0.51"),
    # Gemini 2.0 Flash with cached input: 6000 x $0.10/M + 4000 x $0.025/M + 500 x $0.40/M
    (
        "gemini",
        "models/gemini-2.0-flash",
        None,
        "2025-06-01",
        {"input_tokens": 10000, "cached_input_tokens": 4000, "output_tokens": 500},
        "0.0009",
    ),
    # Claude 3 Haiku through a cross-region profile: 2000 x $0.25/M + 400 x $1.25/M
    (
        "bedrock",
        "us.anthropic.claude-3-haiku-20240307-v1:0",
        "us-east-1",
        "2025-01-01",
        {"input_tokens": 2000, "output_tokens": 400},
        "0.001",
    ),
    # Claude 3.5 Sonnet with cache reads and writes:
    # 2000 x $3/M + 6000 x $0.30/M + 2000 x $3.75/M + 1000 x $15/M
    (
        "bedrock",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "us-west-2",
        "2025-01-01",
        {
            "input_tokens": 10000,
            "cached_input_tokens": 6000,
            "cache_write_tokens": 2000,
            "output_tokens": 1000,
        },
        "0.0303",
    ),
    # Llama 3 8B differs by region: us-east-1 $0.30/$0.60, eu-west-2 $0.39/$0.78
    (
        "bedrock",
        "meta.llama3-8b-instruct-v1:0",
        "us-east-1",
        "2025-01-01",
        {"input_tokens": 1000, "output_tokens": 1000},
        "0.0009",
    ),
    (
        "bedrock",
        "meta.llama3-8b-instruct-v1:0",
        "eu-west-2",
        "2025-01-01",
        {"input_tokens": 1000, "output_tokens": 1000},
        "0.00117",
    ),
    # no region: Bedrock events are priced in BEDROCK_DEFAULT_REGION (us-east-1)
    (
        "bedrock",
        "meta.llama3-8b-instruct-v1:0",
        None,
        "2025-01-01",
        {"input_tokens": 1000, "output_tokens": 1000},
        "0.0009",
    ),
    # Titan Text Embeddings V2, batched: 50000 x $0.02/M / 2
    (
        "bedrock",
        "amazon.titan-embed-text-v2:0",
        "us-west-2",
        "2025-01-01",
        {"input_tokens": 50000, "batch": True},
        "0.0005",
    ),
]


@pytest.mark.parametrize(("provider", "model", "region", "when", "counts", "expected"), CASES)
def test_bundled_price(
    book: PriceBook,
    provider: str,
    model: str,
    region: str | None,
    when: str,
    counts: dict[str, object],
    expected: str,
) -> None:
    price = book.price_for(provider, model, region, day(when))
    assert price is not None, f"{provider}/{model} has no price at {when}"
    usage = UsageEventIn(service="s", provider=provider, model=model, **counts)  # type: ignore[arg-type]
    assert price.cost(usage) == Decimal(expected)


REQUIRED = {
    "openai": [
        "gpt-3.5-turbo",
        "gpt-4",
        "gpt-4-turbo",
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
    ],
    "gemini": [
        "gemini-1.0-pro",
        "gemini-1.0-pro-vision",
        "gemini-1.5-pro",
        "gemini-1.5-flash",
        "gemini-2.0-flash",
        "gemini-2.5-flash",
        "gemini-2.5-pro",
    ],
    "bedrock": [
        "anthropic.claude-3-haiku-20240307-v1:0",
        "anthropic.claude-3-sonnet-20240229-v1:0",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        "anthropic.claude-3-opus-20240229-v1:0",
        "anthropic.claude-3-7-sonnet-20250219-v1:0",
        "meta.llama3-8b-instruct-v1:0",
        "meta.llama3-70b-instruct-v1:0",
        "meta.llama3-1-70b-instruct-v1:0",
        "amazon.titan-text-express-v1",
        "amazon.titan-embed-text-v2:0",
    ],
}


@pytest.mark.parametrize(("provider", "model"), [(p, m) for p, models in REQUIRED.items() for m in models])
def test_required_models_are_priced_today(book: PriceBook, provider: str, model: str) -> None:
    regions: list[str | None] = ["us-east-1", "us-west-2"] if provider == "bedrock" else [None]
    for region in regions:
        price = book.price_for(provider, model, region, datetime.now(UTC))
        assert price is not None, (model, region)
        assert price.base.input is not None or price.base.input_char is not None


def test_every_bedrock_model_has_an_eu_region(book: PriceBook) -> None:
    entries = load_bundled_catalog()
    eu = {e.model for e in entries if e.provider == "bedrock" and e.region.startswith("eu-")}
    bedrock = {e.model for e in entries if e.provider == "bedrock"}
    assert bedrock == eu
    assert all(e.source for e in entries), "every price names its public source"
