"""Pricing sources against local HTTP servers answering in each provider's documented shape."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from service.pricing.catalog import CatalogPrice, LongContextRates
from service.pricing.sources import (
    SourceError,
    fetch_bedrock,
    fetch_gemini,
    fetch_litellm,
    fetch_openai,
    parse_litellm,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
D = Decimal


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]
Handler = Callable[[Request], Answer]


@dataclass
class Server:
    """A local HTTP server answering GET and POST from one handler, recording every request."""

    handler: Handler
    requests: list[Request] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], Server]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handler: Handler) -> Server:
        server = Server(handler)

        class Http(BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                request = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                server.requests.append(request)
                status, headers, body = server.handler(request)
                self.send_response(status)
                headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            do_GET = answer
            do_POST = answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
        http.daemon_threads = True
        threading.Thread(target=http.serve_forever, daemon=True).start()
        servers.append(http)
        server.url = f"http://127.0.0.1:{http.server_address[1]}"
        return server

    yield start
    for http in servers:
        http.shutdown()
        http.server_close()


def ok(document: Any) -> Answer:
    return 200, {}, json.dumps(document).encode()


# -- OpenAI ------------------------------------------------------------------

OPENAI_MODELS = {
    "object": "list",
    "data": [
        {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
        {"id": "gpt-4.1-mini-2025-04-14", "object": "model", "created": 1744317547, "owned_by": "system"},
        {"id": "o3-pro", "object": "model", "created": 1748475349, "owned_by": "system"},
        {"id": "dall-e-3", "object": "model", "created": 1698785189, "owned_by": "system"},
        {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
        {"id": 42, "object": "model"},
        "not an object",
    ],
}


def test_openai_lists_every_model_id_with_the_key_as_bearer(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda _request: ok(OPENAI_MODELS))
    result = fetch_openai("sk-test-secret", base_url=server.url, timeout=5, now=NOW)
    assert result.source == "openai"
    assert result.prices == []
    assert result.discovered_models == [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4.1-mini-2025-04-14"),
        ("openai", "o3-pro"),
        ("openai", "dall-e-3"),
    ]
    assert result.problems == ["data[5]: no usable model id", "data[6]: no usable model id"]
    (request,) = server.requests
    assert (request.method, request.path) == ("GET", "/v1/models")
    assert request.headers["authorization"] == "Bearer sk-test-secret"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((401, {}, b'{"error": {"message": "Incorrect API key provided: sk-test-secret"}}'), "HTTP 401"),
        ((500, {}, b"upstream exploded"), "HTTP 500"),
        ((200, {"Content-Type": "text/html"}, b"<html><body>Just a moment...</body></html>"), "not JSON"),
        ((200, {}, b'{"object": "list", "data": {"id": "gpt-4o"}}'), "no `data` array"),
        ((200, {}, b"[1, 2, 3]"), "no `data` array"),
    ],
)
def test_openai_failures_raise_without_the_key(
    serve: Callable[[Handler], Server], answer: Answer, expected: str
) -> None:
    server = serve(lambda _request: answer)
    with pytest.raises(SourceError, match=expected) as raised:
        fetch_openai("sk-test-secret", base_url=server.url, timeout=5)
    assert "sk-test-secret" not in str(raised.value)


def test_openai_timeout_and_truncated_body(serve: Callable[[Handler], Server]) -> None:
    slow = serve(lambda _request: (time.sleep(1.5), ok(OPENAI_MODELS))[1])
    with pytest.raises(SourceError, match="timed out"):
        fetch_openai("sk-test-secret", base_url=slow.url, timeout=0.3)
    # Content-Length promises more than is sent: a partial body is an error, not a short list.
    truncated = serve(lambda _request: (200, {"Content-Length": "100000"}, json.dumps(OPENAI_MODELS).encode()[:50]))
    with pytest.raises(SourceError):
        fetch_openai("sk-test-secret", base_url=truncated.url, timeout=2)


# -- LiteLLM -----------------------------------------------------------------

LITELLM_MAP = b"""{
  "sample_spec": {"max_tokens": "LEGACY parameter", "input_cost_per_token": 0.0000, "litellm_provider": "one of ..."},
  "gpt-4o": {
    "max_tokens": 16384, "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
    "cache_read_input_token_cost": 1.25e-06, "input_cost_per_token_batches": 1.25e-06,
    "output_cost_per_token_batches": 5e-06, "litellm_provider": "openai", "mode": "chat"
  },
  "text-embedding-3-small": {
    "input_cost_per_token": 2e-08, "output_cost_per_token": 0.0, "litellm_provider": "openai", "mode": "embedding"
  },
  "dall-e-3": {"input_cost_per_pixel": 4e-08, "litellm_provider": "openai", "mode": "image_generation"},
  "ft:gpt-4o-mini-2024-07-18": {"input_cost_per_token": 3e-07, "litellm_provider": "openai", "mode": "chat"},
  "gemini/gemini-1.5-pro": {
    "input_cost_per_token": 1.25e-06, "output_cost_per_token": 5e-06,
    "input_cost_per_token_above_128k_tokens": 2.5e-06, "output_cost_per_token_above_128k_tokens": 1e-05,
    "litellm_provider": "gemini", "mode": "chat"
  },
  "gemini-1.5-pro": {
    "input_cost_per_token": 1.25e-06, "output_cost_per_token": 5e-06,
    "input_cost_per_character": 3.125e-07, "output_cost_per_character": 1.25e-06,
    "input_cost_per_image": 0.00032875,
    "input_cost_per_character_above_128k_tokens": 6.25e-07,
    "litellm_provider": "vertex_ai-language-models", "mode": "chat"
  },
  "vertex_ai/claude-3-5-sonnet": {"input_cost_per_token": 3e-06, "litellm_provider": "vertex_ai-anthropic_models"},
  "anthropic.claude-3-5-sonnet-20240620-v1:0": {
    "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
    "cache_creation_input_token_cost": 3.75e-06, "cache_read_input_token_cost": 3e-07,
    "litellm_provider": "bedrock", "mode": "chat"
  },
  "bedrock/eu-central-1/anthropic.claude-3-haiku-20240307-v1:0": {
    "input_cost_per_token": 3e-07, "output_cost_per_token": 1.5e-06, "litellm_provider": "bedrock", "mode": "chat"
  },
  "bedrock/us-east-1/1-month-commitment/anthropic.claude-v2:1": {
    "input_cost_per_second": 0.011, "litellm_provider": "bedrock", "mode": "chat"
  },
  "us.anthropic.claude-3-haiku-20240307-v1:0": {
    "input_cost_per_token": 2.5e-07, "litellm_provider": "bedrock", "mode": "chat"
  },
  "claude-3-opus-20240229": {"input_cost_per_token": 1.5e-05, "litellm_provider": "anthropic", "mode": "chat"},
  "precise-model": {
    "input_cost_per_token": 0.0000001234567890123456789, "litellm_provider": "openai", "mode": "chat"
  },
  "negative-model": {"input_cost_per_token": -1e-06, "litellm_provider": "openai", "mode": "chat"},
  "string-model": {"input_cost_per_token": "0.000001", "litellm_provider": "openai", "mode": "chat"},
  "bool-model": {"input_cost_per_token": true, "litellm_provider": "openai", "mode": "chat"},
  "per-million-by-mistake": {"input_cost_per_token": 2.5, "litellm_provider": "openai", "mode": "chat"},
  "odd-batch": {
    "input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
    "input_cost_per_token_batches": 5e-07, "output_cost_per_token_batches": 1.5e-06,
    "litellm_provider": "openai", "mode": "chat"
  },
  "no-provider": {"input_cost_per_token": 1e-06},
  "list-entry": [1, 2]
}"""


def by_model(prices: list[CatalogPrice]) -> dict[tuple[str, str, str], CatalogPrice]:
    return {(price.provider, price.model, price.region): price for price in prices}


def test_litellm_maps_providers_units_and_tiers_exactly(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda _request: (200, {}, LITELLM_MAP))
    url = f"{server.url}/model_prices_and_context_window.json"
    result = fetch_litellm(url, timeout=5, now=NOW)
    prices = by_model(result.prices)
    assert set(prices) == {
        ("openai", "gpt-4o", ""),
        ("openai", "text-embedding-3-small", ""),
        ("gemini", "gemini-1.5-pro", ""),
        ("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", ""),
        ("bedrock", "anthropic.claude-3-haiku-20240307-v1:0", "eu-central-1"),
        ("openai", "precise-model", ""),
        ("openai", "odd-batch", ""),
    }
    gpt = prices["openai", "gpt-4o", ""]
    assert (gpt.input_per_mtok, gpt.output_per_mtok, gpt.cached_input_per_mtok) == (D("2.5"), D("10"), D("1.25"))
    assert gpt.batch_discount_pct == D("50")
    assert gpt.effective_from == NOW
    assert gpt.source == f"{url} [gpt-4o]"
    embedding = prices["openai", "text-embedding-3-small", ""]
    assert (embedding.input_per_mtok, embedding.output_per_mtok) == (D("0.02"), D("0"))
    # Gemini API token rates, Vertex AI's character and image rates, one price.
    gemini = prices["gemini", "gemini-1.5-pro", ""]
    assert (gemini.input_per_mtok, gemini.output_per_mtok) == (D("1.25"), D("5"))
    assert (gemini.input_per_kchar, gemini.output_per_kchar) == (D("0.0003125"), D("0.00125"))
    assert gemini.per_image == D("0.00032875")
    assert gemini.long_context == LongContextRates(
        threshold_tokens=128_000, input_per_mtok=D("2.5"), output_per_mtok=D("10"), input_per_kchar=D("0.000625")
    )
    sonnet = prices["bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", ""]
    assert (sonnet.input_per_mtok, sonnet.output_per_mtok) == (D("3"), D("15"))
    assert (sonnet.cached_input_per_mtok, sonnet.cache_write_per_mtok) == (D("0.3"), D("3.75"))
    haiku = prices["bedrock", "anthropic.claude-3-haiku-20240307-v1:0", "eu-central-1"]
    assert (haiku.input_per_mtok, haiku.output_per_mtok) == (D("0.3"), D("1.5"))
    # Every digit survives: no binary float on the way.
    assert prices["openai", "precise-model", ""].input_per_mtok == D("0.1234567890123456789")
    assert prices["openai", "odd-batch", ""].batch_discount_pct is None
    problems = "\n".join(result.problems)
    for expected in (
        "'negative-model': input_cost_per_token is negative",
        "'string-model': input_cost_per_token is not a number",
        "'bool-model': input_cost_per_token is not a number",
        "'per-million-by-mistake': input_per_mtok 2500000 is above 10000: a unit mix-up",
        "'odd-batch': batch discount left out: batch rates imply different discounts",
        "'no-provider': no litellm_provider",
        "'list-entry': entry is not an object",
    ):
        assert expected in problems
    assert "sample_spec" not in problems
    # dall-e-3, ft:, vertex claude, provisioned throughput, us. profile, anthropic
    assert result.ignored == 6


def test_parse_litellm_reads_a_file_without_a_server() -> None:
    result = parse_litellm(LITELLM_MAP, origin="negotiated.json", now=NOW)
    assert by_model(result.prices)["openai", "gpt-4o", ""].source == "negotiated.json [gpt-4o]"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((404, {}, b"404: Not Found"), "HTTP 404"),
        ((200, {"Content-Type": "text/html"}, b"<!DOCTYPE html><html>rate limited</html>"), "not JSON"),
        ((200, {}, b'["gpt-4o"]'), "not a JSON object"),
        ((200, {}, LITELLM_MAP[: len(LITELLM_MAP) // 2]), "not JSON"),
    ],
)
def test_litellm_failures(serve: Callable[[Handler], Server], answer: Answer, expected: str) -> None:
    server = serve(lambda _request: answer)
    with pytest.raises(SourceError, match=expected):
        fetch_litellm(f"{server.url}/prices.json", timeout=5)


def test_litellm_refuses_a_huge_payload(serve: Callable[[Handler], Server]) -> None:
    huge = b'{"pad": "' + b"x" * 300_000 + b'"}'
    server = serve(lambda _request: (200, {}, huge))
    with pytest.raises(SourceError, match="larger than 100000 bytes"):
        fetch_litellm(f"{server.url}/prices.json", timeout=5, max_bytes=100_000)


# -- AWS Bedrock (Price List API through boto3) --------------------------------


def product(
    attributes: dict[str, Any],
    usd: str | None = "0.001",
    *,
    unit: str = "1K tokens",
    currency: dict[str, str] | None = None,
    description: str = "",
    effective: str = "2025-05-01T00:00:00Z",
) -> str:
    """One PriceList entry, as GetProducts returns it: a JSON string."""
    return json.dumps(
        {
            "product": {"productFamily": "Amazon Bedrock", "attributes": attributes, "sku": "SKU123"},
            "serviceCode": attributes.get("servicecode", "AmazonBedrock"),
            "terms": {
                "OnDemand": {
                    "SKU123.JRTCKXETXF": {
                        "offerTermCode": "JRTCKXETXF",
                        "sku": "SKU123",
                        "effectiveDate": effective,
                        "priceDimensions": {
                            "SKU123.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": unit,
                                "endRange": "Inf",
                                "description": description or f"{usd} per {unit}",
                                "appliesTo": [],
                                "rateCode": "SKU123.JRTCKXETXF.6YS6EN2CT7",
                                "beginRange": "0",
                                "pricePerUnit": currency if currency is not None else {"USD": usd},
                            }
                        },
                        "termAttributes": {},
                    }
                }
            },
            "version": "20250501000000",
            "publicationDate": "2025-05-01T00:00:00Z",
        }
    )


def tokens(model: str, region: str, kind: str, *, batch: bool = False, **extra: str) -> dict[str, str]:
    prefix = {"us-east-1": "USE1", "us-west-2": "USW2", "eu-central-1": "EUC1"}[region]
    return {
        "servicecode": "AmazonBedrock",
        "regionCode": region,
        "location": region,
        "model": model,
        "provider": "Anthropic",
        "feature": "Batch Inference" if batch else "On-demand Inference",
        "inferenceType": f"{kind} tokens",
        "usagetype": f"{prefix}-{model.replace(' ', '')}-{kind.lower()}-tokens{'-batch' if batch else ''}",
        "operation": "Usage",
        **extra,
    }


AMAZON_BEDROCK_PAGE_1 = [
    product(tokens("Nova Lite", "us-east-1", "Input"), "0.00006"),
    product(tokens("Nova Lite", "us-east-1", "Output"), "0.00024"),
    product(tokens("Nova Lite", "us-east-1", "Input", batch=True), "0.00003"),
    product(tokens("Nova Lite", "us-east-1", "Output", batch=True), "0.00012"),
    product(tokens("Claude 3 Haiku", "us-east-1", "Input"), "0.00025"),
    product(tokens("Claude 3 Haiku", "us-east-1", "Output"), "0.00125"),
    product(tokens("Claude 3 Haiku", "eu-central-1", "Input"), "0.0003"),
    product(tokens("Claude 3 Haiku", "eu-central-1", "Output"), "0.0015"),
]
AMAZON_BEDROCK_PAGE_2 = [
    product(tokens("Llama 3.1 70B Instruct", "us-west-2", "Input"), "0.72", unit="1M tokens"),
    product(tokens("Llama 3.1 70B Instruct", "us-west-2", "Output"), "0.72", unit="1M tokens"),
    product(
        {
            "regionCode": "us-east-1",
            "titanModel": "Titan Text Embeddings V2",
            "feature": "On-demand Inference",
            "inferenceType": "Input tokens",
            "usagetype": "USE1-TitanEmbeddingsV2-Text-input-tokens",
        },
        "0.00002",
    ),
    # out of scope: ignored, not problems
    product(tokens("Nova Lite", "us-east-1", "Input", feature="Provisioned Throughput"), "20.5", unit="Hours"),
    product(tokens("Nova Lite", "us-east-1", "Input", service_tier="Flex"), "0.00003"),
    product(
        tokens("Claude 3 Haiku", "us-east-1", "Input", usagetype="USE1-Claude3Haiku-input-tokens-cross-region-global"),
        "0.0002",
    ),
    product(
        {
            **tokens("Nova Lite", "us-east-1", "Input"),
            "inferenceType": "Input images",
            "usagetype": "USE1-NovaLite-images",
        },
        "0.001",
        unit="Images",
    ),
    # hostile and malformed
    product(tokens("Some Future Model", "us-east-1", "Input"), "0.001"),
    product(tokens("Nova Pro", "us-east-1", "Input"), None, currency={"CNY": "0.0056"}),
    product(tokens("Nova Pro", "us-east-1", "Output"), "-0.0032"),
    product(tokens("Nova Micro", "us-east-1", "Input"), "0.000035", unit="Characters"),
    product(tokens("Nova Micro", "us-east-1", "Output"), "lots"),
    product(tokens("Nova Premier", "us-east-1", "Input"), "12", unit="1K tokens"),
    product({**tokens("Claude 3 Haiku", "us-west-2", "Input"), "inferenceType": "Input tokens long context"}, "0.0005"),
    product({**tokens("Claude 3 Haiku", "us-west-2", "Input"), "regionCode": ""}, "0.0005"),
    '{"product": {"attributes": ',
    '"just a string"',
    json.dumps({"product": {"attributes": tokens("Claude 3 Haiku", "us-west-2", "Input")}, "terms": {}}),
]
SERVICE_PRODUCTS = [
    product(
        {**tokens("Claude Sonnet 4", "us-east-1", "Input"), "servicecode": "AmazonBedrockService"},
        "0.003",
        effective="2025-05-22T00:00:00Z",
    ),
    product(
        {**tokens("Claude Sonnet 4", "us-east-1", "Output"), "servicecode": "AmazonBedrockService"},
        "0.015",
        effective="2025-05-22T00:00:00Z",
    ),
    product(
        {
            **tokens("Claude Sonnet 4", "us-east-1", "Input"),
            "inferenceType": "Cache read input tokens",
            "usagetype": "USE1-Claude4Sonnet-cache-read-input-token-count",
        },
        "0.0003",
        effective="2025-05-22T00:00:00Z",
    ),
    product(
        {
            **tokens("Claude Sonnet 4", "us-east-1", "Input"),
            "inferenceType": "Cache write input tokens",
            "usagetype": "USE1-Claude4Sonnet-cache-write-input-token-count",
        },
        "0.00375",
        effective="2025-05-22T00:00:00Z",
    ),
]
MARKETPLACE_PRODUCTS = [
    product(
        {
            "servicecode": "AmazonBedrockFoundationModels",
            "regionCode": "us-east-1",
            "servicename": "Claude 3.5 Sonnet (Amazon Bedrock Edition)",
            "usagetype": "USE1-MP:USE1_InputTokenCount-Units",
        },
        "3.00",
        unit="Units",
        description="Per 1M input tokens",
    ),
    product(
        {
            "servicecode": "AmazonBedrockFoundationModels",
            "regionCode": "us-east-1",
            "servicename": "Claude 3.5 Sonnet (Amazon Bedrock Edition)",
            "usagetype": "USE1-MP:USE1_OutputTokenCount-Units",
        },
        "15.00",
        unit="Units",
        description="Per 1M output tokens",
    ),
    product(
        {
            "servicecode": "AmazonBedrockFoundationModels",
            "regionCode": "us-east-1",
            "servicename": "Claude 3.5 Sonnet (Amazon Bedrock Edition)",
            "usagetype": "USE1-MP:USE1_InputTokenCount_Global-Units",
        },
        "2.70",
        unit="Units",
        description="Per 1M input tokens - Global",
    ),
]
AWS_JSON = {"Content-Type": "application/x-amz-json-1.1"}


def price_list_api(request: Request) -> Answer:
    assert request.headers["x-amz-target"] == "AWSPriceListService.GetProducts"
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDLOCALTEST/")
    call = json.loads(request.body)
    assert call["FormatVersion"] == "aws_v1"
    pages: dict[tuple[str, str | None], tuple[list[str], str | None]] = {
        ("AmazonBedrock", None): (AMAZON_BEDROCK_PAGE_1, "page-2"),
        ("AmazonBedrock", "page-2"): (AMAZON_BEDROCK_PAGE_2, None),
        ("AmazonBedrockService", None): (SERVICE_PRODUCTS, None),
        ("AmazonBedrockFoundationModels", None): (MARKETPLACE_PRODUCTS, None),
    }
    price_list, next_token = pages[call["ServiceCode"], call.get("NextToken")]
    document: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": price_list}
    if next_token:
        document["NextToken"] = next_token
    return 200, AWS_JSON, json.dumps(document).encode()


def bedrock(url: str, **kwargs: Any) -> Any:
    return fetch_bedrock("AKIDLOCALTEST", "local/secret+key", endpoint_url=url, timeout=2, now=NOW, **kwargs)


def test_bedrock_maps_the_price_list_to_regional_per_mtok_prices(serve: Callable[[Handler], Server]) -> None:
    server = serve(price_list_api)
    result = bedrock(server.url)
    prices = by_model(result.prices)
    may = datetime(2025, 5, 1, tzinfo=UTC)
    assert set(prices) == {
        ("bedrock", "amazon.nova-lite-v1:0", "us-east-1"),
        ("bedrock", "anthropic.claude-3-haiku-20240307-v1:0", "us-east-1"),
        ("bedrock", "anthropic.claude-3-haiku-20240307-v1:0", "eu-central-1"),
        ("bedrock", "meta.llama3-1-70b-instruct-v1:0", "us-west-2"),
        ("bedrock", "amazon.titan-embed-text-v2:0", "us-east-1"),
        ("bedrock", "anthropic.claude-sonnet-4-20250514-v1:0", "us-east-1"),
        ("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", "us-east-1"),
    }
    nova = prices["bedrock", "amazon.nova-lite-v1:0", "us-east-1"]
    assert (nova.input_per_mtok, nova.output_per_mtok, nova.batch_discount_pct) == (D("0.06"), D("0.24"), D("50"))
    assert nova.effective_from == may
    assert "Nova Lite in us-east-1" in nova.source
    haiku_us = prices["bedrock", "anthropic.claude-3-haiku-20240307-v1:0", "us-east-1"]
    haiku_eu = prices["bedrock", "anthropic.claude-3-haiku-20240307-v1:0", "eu-central-1"]
    assert (haiku_us.input_per_mtok, haiku_us.output_per_mtok) == (D("0.25"), D("1.25"))
    assert (haiku_eu.input_per_mtok, haiku_eu.output_per_mtok) == (D("0.3"), D("1.5"))
    assert haiku_us.batch_discount_pct is None
    llama = prices["bedrock", "meta.llama3-1-70b-instruct-v1:0", "us-west-2"]
    assert (llama.input_per_mtok, llama.output_per_mtok) == (D("0.72"), D("0.72"))
    titan = prices["bedrock", "amazon.titan-embed-text-v2:0", "us-east-1"]
    assert (titan.input_per_mtok, titan.output_per_mtok) == (D("0.02"), None)
    sonnet4 = prices["bedrock", "anthropic.claude-sonnet-4-20250514-v1:0", "us-east-1"]
    assert (sonnet4.input_per_mtok, sonnet4.output_per_mtok) == (D("3"), D("15"))
    assert (sonnet4.cached_input_per_mtok, sonnet4.cache_write_per_mtok) == (D("0.3"), D("3.75"))
    assert sonnet4.effective_from == datetime(2025, 5, 22, tzinfo=UTC)
    marketplace = prices["bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", "us-east-1"]
    assert (marketplace.input_per_mtok, marketplace.output_per_mtok) == (D("3"), D("15"))

    problems = "\n".join(result.problems)
    for expected in (
        "model 'Some Future Model' has no Bedrock model id",
        "priced in CNY, not USD",
        "negative price -0.0032",
        "unknown unit 'Characters'",
        "pricePerUnit.USD 'lots' is not a number",
        "amazon.nova-premier-v1:0 us-east-1: input_per_mtok 12000 is above",
        "long-context rate left out",
        "no usable regionCode",
        "PriceList[23]: not a JSON price entry",
        "PriceList[24]: not a JSON price entry",
        "PriceList[25]: no terms.OnDemand",
    ):
        assert expected in problems, expected
    assert result.ignored == 5  # provisioned, flex, cross-region global, images, marketplace global
    assert [json.loads(r.body)["ServiceCode"] for r in server.requests] == [
        "AmazonBedrock",
        "AmazonBedrock",
        "AmazonBedrockService",
        "AmazonBedrockFoundationModels",
    ]


def test_bedrock_filters_by_region_when_asked(serve: Callable[[Handler], Server]) -> None:
    def one_page(request: Request) -> Answer:
        return 200, AWS_JSON, json.dumps({"FormatVersion": "aws_v1", "PriceList": AMAZON_BEDROCK_PAGE_1}).encode()

    server = serve(one_page)
    bedrock(server.url, regions=["us-east-1"], service_codes=["AmazonBedrock"])
    (call,) = [json.loads(r.body) for r in server.requests]
    assert call["Filters"] == [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"}]


def test_bedrock_whole_source_failures(serve: Callable[[Handler], Server]) -> None:
    def answer(status: int, body: Any, headers: dict[str, str] = AWS_JSON) -> Handler:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return lambda _request: (status, headers, raw)

    denied = serve(answer(400, {"__type": "AccessDeniedException", "message": "User: AKIDLOCALTEST is not authorized"}))
    with pytest.raises(SourceError, match="AccessDeniedException") as raised:
        bedrock(denied.url)
    assert "local/secret+key" not in str(raised.value)
    assert "AKIDLOCALTEST" not in str(raised.value)

    with pytest.raises(SourceError, match="GetProducts"):
        bedrock(serve(answer(500, {"__type": "InternalErrorException", "message": "boom"})).url)
    with pytest.raises(SourceError, match="GetProducts"):
        bedrock(serve(answer(200, b"<html>maintenance</html>", {"Content-Type": "text/html"})).url)
    with pytest.raises(SourceError, match="without a PriceList array"):
        bedrock(serve(answer(200, {"FormatVersion": "aws_v1"})).url)
    with pytest.raises(SourceError, match="paging loops"):
        bedrock(serve(answer(200, {"PriceList": [], "NextToken": "same-token"})).url)

    counter = iter(range(10_000))
    endless = serve(
        lambda _request: (200, AWS_JSON, json.dumps({"PriceList": [], "NextToken": f"t{next(counter)}"}).encode())
    )
    with pytest.raises(SourceError, match="did not end within 3 pages"):
        bedrock(endless.url, max_pages=3)
    assert len(endless.requests) == 3

    slow = serve(lambda r: (time.sleep(2), price_list_api(r))[1])
    with pytest.raises(SourceError, match="GetProducts"):
        fetch_bedrock("AKIDLOCALTEST", "local/secret+key", endpoint_url=slow.url, timeout=0.5)


def test_bedrock_service_code_not_in_the_price_list_is_a_problem(serve: Callable[[Handler], Server]) -> None:
    def handler(request: Request) -> Answer:
        if json.loads(request.body)["ServiceCode"] == "AmazonBedrockService":
            return 400, AWS_JSON, b'{"__type": "NotFoundException", "message": "Service not found"}'
        return price_list_api(request)

    result = bedrock(serve(handler).url)
    assert "service code AmazonBedrockService is not in the Price List" in result.problems
    assert ("bedrock", "amazon.nova-lite-v1:0", "us-east-1") in by_model(result.prices)


def test_bedrock_without_credentials() -> None:
    with pytest.raises(SourceError, match="no AWS credentials"):
        fetch_bedrock("", "")


# -- Google Gemini (Cloud Billing Catalog) -------------------------------------


def sku(
    description: str,
    nanos: int,
    *,
    units: Any = "0",
    unit: str = "count",
    unit_description: str = "count",
    regions: list[str] | None = None,
    currency: str = "USD",
    tiers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "name": f"services/C7E2-9256-1C43/skus/{abs(hash(description)) % 10**12:012d}",
        "skuId": "9A7B-1234-ABCD",
        "description": description,
        "category": {
            "serviceDisplayName": "Vertex AI",
            "resourceFamily": "ApplicationServices",
            "resourceGroup": "Gemini",
            "usageType": "OnDemand",
        },
        "serviceRegions": regions if regions is not None else ["global"],
        "pricingInfo": [
            {
                "summary": "",
                "pricingExpression": {
                    "usageUnit": unit,
                    "displayQuantity": 1,
                    "tieredRates": tiers
                    if tiers is not None
                    else [
                        {"startUsageAmount": 0, "unitPrice": {"currencyCode": currency, "units": units, "nanos": nanos}}
                    ],
                    "usageUnitDescription": unit_description,
                    "baseUnit": unit,
                    "baseUnitDescription": unit_description,
                    "baseUnitConversionFactor": 1,
                },
                "currencyConversionRate": 1,
                "effectiveTime": "2025-06-01T09:00:00.000Z",
            }
        ],
        "serviceProviderName": "Google",
    }


def kchar(description: str, nanos: int, **kwargs: Any) -> dict[str, Any]:
    document = sku(description, nanos, unit="k{char}", unit_description="thousand characters", **kwargs)
    document["pricingInfo"][0]["pricingExpression"].update(baseUnit="{char}", baseUnitConversionFactor=1000)
    return document


VERTEX_SKUS = [
    kchar("Gemini 1.5 Flash Input Text", 18_750, regions=["us-central1", "europe-west4"]),
    kchar("Gemini 1.5 Flash Output Text", 75_000, regions=["us-central1"]),
    sku("Gemini 1.5 Flash Input Image", 20_000, regions=["us-central1"]),
    kchar("Gemini 1.5 Flash Long Input Text > 128K", 37_500, regions=["us-central1"]),
    sku("Gemini 2.5 Pro Input Token Count (Prompts <= 200K)", 1_250),
    sku("Gemini 2.5 Pro Input Token Count (Prompts > 200K)", 2_500),
    sku("Gemini 2.5 Pro Output Token Count (Prompts <= 200K)", 10_000),
    sku("Gemini 2.5 Pro Output Token Count (Prompts > 200K)", 15_000),
    sku("Gemini 2.5 Pro Cached Input Token Count (Prompts <= 200K)", 310),
    sku("Gemini 2.5 Pro Batch Input Token Count (Prompts <= 200K)", 625),
    sku("Gemini 2.5 Pro Batch Output Token Count (Prompts <= 200K)", 5_000),
    # the same rate in a region we do not read, and out-of-scope SKUs
    sku("Gemini 2.5 Pro Input Token Count (Prompts <= 200K)", 1_375, regions=["europe-west4"]),
    sku("Gemini 2.5 Pro Thinking Output Token Count", 35_000),
    sku("Gemini 1.5 Flash Tuning Token", 8_000_000),
    sku("Vertex AI Training n1-standard-4", 190_000_000, unit="h", unit_description="hour"),
    sku("Gemini 2.5 Pro Context Cache Storage", 4_500_000, unit="h", unit_description="hour"),
    # hostile and malformed
    sku("Gemini 2.0 Flash Input Token Count", 150, currency="EUR"),
    sku("Gemini 2.0 Flash Output Token Count", -600),
    sku("Gemini 2.0 Flash Lite Input Characters", 75_000_000, unit="M{token}", unit_description="1 million tokens"),
    sku("Gemini 2.0 Flash Lite Input Token Count", 75, unit="GiBy.mo", unit_description="gibibyte month"),
    sku(
        "Gemini 2.0 Flash Lite Output Token Count",
        0,
        tiers=[
            {"startUsageAmount": 0, "unitPrice": {"currencyCode": "USD", "units": "0", "nanos": 0}},
            {"startUsageAmount": 1000000, "unitPrice": {"currencyCode": "USD", "units": "0", "nanos": 300}},
        ],
    ),
    sku("Gemini 2.0 Flash Cached Input Token Count", 25, units=["0"]),
    sku("Gemini Ultra Input Token Count", 100),
    {"skuId": "no-description"},
]
GEMINI_API_SKUS = [
    sku("Gemini 1.5 Flash Input Token Count", 75_000_000, unit="1M{token}", unit_description="1 million tokens"),
    sku("Gemini 1.5 Flash Output Token Count", 300_000_000, unit="1M{token}", unit_description="1 million tokens"),
]
SERVICES_PAGE_1 = {
    "services": [
        {"name": "services/6F81-5844-456A", "serviceId": "6F81-5844-456A", "displayName": "Compute Engine"},
    ],
    "nextPageToken": "services-2",
}
SERVICES_PAGE_2 = {
    "services": [
        {"name": "services/C7E2-9256-1C43", "serviceId": "C7E2-9256-1C43", "displayName": "Vertex AI"},
        {"name": "services/AEFD-7695-64FA", "serviceId": "AEFD-7695-64FA", "displayName": "Gemini API"},
    ]
}


def billing_catalog(request: Request) -> Answer:
    token = request.query.get("pageToken", [""])[0]
    if request.path == "/v1/services":
        return ok(SERVICES_PAGE_2 if token == "services-2" else SERVICES_PAGE_1)
    assert request.query["currencyCode"] == ["USD"]
    if request.path == "/v1/services/C7E2-9256-1C43/skus":
        half = len(VERTEX_SKUS) // 2
        if token == "skus-2":
            return ok({"skus": VERTEX_SKUS[half:]})
        return ok({"skus": VERTEX_SKUS[:half], "nextPageToken": "skus-2"})
    if request.path == "/v1/services/AEFD-7695-64FA/skus":
        return ok({"skus": GEMINI_API_SKUS})
    return 404, {}, b'{"error": {"code": 404, "message": "not found"}}'


def test_gemini_maps_skus_to_models_units_and_tiers(serve: Callable[[Handler], Server]) -> None:
    server = serve(billing_catalog)
    result = fetch_gemini(api_key="AIza-local-key", base_url=server.url, timeout=5, now=NOW)
    prices = by_model(result.prices)
    assert set(prices) == {("gemini", "gemini-1.5-flash", ""), ("gemini", "gemini-2.5-pro", "")}
    flash = prices["gemini", "gemini-1.5-flash", ""]
    # Vertex AI bills characters: 18,750 nanos per 1,000 characters.
    assert (flash.input_per_kchar, flash.output_per_kchar) == (D("0.00001875"), D("0.000075"))
    assert flash.per_image == D("0.00002")
    # the Gemini API bills tokens: 0.075 USD per million.
    assert (flash.input_per_mtok, flash.output_per_mtok) == (D("0.075"), D("0.3"))
    assert flash.long_context == LongContextRates(threshold_tokens=128_000, input_per_kchar=D("0.0000375"))
    assert flash.effective_from == NOW
    pro = prices["gemini", "gemini-2.5-pro", ""]
    # 1,250 nanos per token = 1.25 USD per million tokens.
    assert (pro.input_per_mtok, pro.output_per_mtok, pro.cached_input_per_mtok) == (D("1.25"), D("10"), D("0.31"))
    assert pro.long_context == LongContextRates(
        threshold_tokens=200_000, input_per_mtok=D("2.5"), output_per_mtok=D("15")
    )
    assert pro.batch_discount_pct == D("50")
    assert pro.input_per_kchar is None

    problems = "\n".join(result.problems)
    for expected in (
        "priced in 'EUR', not USD",
        "'Gemini 2.0 Flash Output Token Count': negative price",
        "unit mix-up: the description bills chars, the unit counts tokens",
        "unknown unit 'GiBy.mo'",
        "2 volume tiers are not modelled",
        "unitPrice units/nanos are not integers",
        "'Gemini Ultra Input Token Count': names no versioned Gemini model",
        "skus[23]: not a SKU with a description",
    ):
        assert expected in problems, expected
    # europe-west4 only, thinking, tuning, training, cache storage
    assert result.ignored == 5
    for request in server.requests:
        assert request.query["key"] == ["AIza-local-key"]
        assert "authorization" not in request.headers
    assert [r.path for r in server.requests] == [
        "/v1/services",
        "/v1/services",
        "/v1/services/C7E2-9256-1C43/skus",
        "/v1/services/C7E2-9256-1C43/skus",
        "/v1/services/AEFD-7695-64FA/skus",
    ]


def test_gemini_whole_source_failures(serve: Callable[[Handler], Server]) -> None:
    def fetch(handler: Handler, **kwargs: Any) -> Any:
        server = serve(handler)
        return fetch_gemini(api_key="AIza-local-key", base_url=server.url, timeout=2, **kwargs)

    denied = b'{"error": {"code": 403, "message": "API key AIza-local-key not valid", "status": "PERMISSION_DENIED"}}'
    with pytest.raises(SourceError, match="HTTP 403") as raised:
        fetch(lambda _request: (403, {}, denied))
    assert "AIza-local-key" not in str(raised.value)
    with pytest.raises(SourceError, match="HTTP 500"):
        fetch(lambda _request: (500, {}, b"Internal error"))
    with pytest.raises(SourceError, match="not JSON"):
        fetch(lambda _request: (200, {"Content-Type": "text/html"}, b"<html><title>Sign in</title></html>"))
    with pytest.raises(SourceError, match="no billing service named Vertex AI or Gemini API"):
        fetch(lambda _request: ok(SERVICES_PAGE_1 | {"nextPageToken": ""}))
    with pytest.raises(SourceError, match="without a `skus` array"):
        fetch(lambda r: ok(SERVICES_PAGE_2) if r.path == "/v1/services" else ok({"skus": "none"}))
    with pytest.raises(SourceError, match="paging loops"):
        fetch(lambda r: ok(SERVICES_PAGE_2) if r.path == "/v1/services" else ok({"skus": [], "nextPageToken": "x"}))
    counter = iter(range(10_000))
    with pytest.raises(SourceError, match="did not end within 4 pages"):
        fetch(
            lambda r: (
                ok(SERVICES_PAGE_2)
                if r.path == "/v1/services"
                else ok({"skus": [], "nextPageToken": f"t{next(counter)}"})
            ),
            max_pages=4,
        )
    with pytest.raises(SourceError, match="timed out"):
        fetch(lambda r: (time.sleep(3), billing_catalog(r))[1])
    with pytest.raises(SourceError, match="no credentials"):
        fetch_gemini(base_url="http://127.0.0.1:9")


def test_gemini_with_a_service_account_file_uses_a_bearer_token(
    serve: Callable[[Handler], Server], tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def token_endpoint(request: Request) -> Answer:
        if request.path == "/token":
            assert parse_qs(request.body.decode())["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
            return ok({"access_token": "ya29.local-token", "expires_in": 3600, "token_type": "Bearer"})
        assert request.headers["authorization"] == "Bearer ya29.local-token"
        assert "key" not in request.query
        return billing_catalog(request)

    server = serve(token_endpoint)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    credentials = tmp_path / "service-account.json"
    credentials.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "finops-test",
                "private_key_id": "local",
                "private_key": pem,
                "client_email": "pricing@finops-test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"{server.url}/token",
            }
        )
    )
    result = fetch_gemini(credentials_file=str(credentials), base_url=server.url, timeout=5, now=NOW)
    assert ("gemini", "gemini-2.5-pro", "") in by_model(result.prices)
    assert server.requests[0].path == "/token"

    failing = serve(lambda _request: (400, {}, b'{"error": "invalid_grant"}'))
    credentials.write_text(credentials.read_text().replace(server.url, failing.url))
    with pytest.raises(SourceError, match="cannot get a token from the credentials file"):
        fetch_gemini(credentials_file=str(credentials), base_url=failing.url, timeout=5)
