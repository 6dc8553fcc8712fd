"""Pricing sources: fetch each provider's published data and map it onto `CatalogPrice`.

Every fetcher returns a `SourceResult` (prices, discovered models, problems)
or raises `SourceError`; none touches storage. Each takes its endpoint (for
tests and proxies) and a timeout:

- `fetch_openai(api_key, *, base_url, timeout)` — model discovery only.
- `fetch_bedrock(access_key_id, secret_access_key, *, endpoint_url, timeout, regions)` — AWS Price List API.
- `fetch_gemini(*, api_key | credentials_file | access_token, base_url, timeout)` — Cloud Billing Catalog.
- `fetch_litellm(url, *, timeout)` — LiteLLM's price map; `parse_litellm(data)` for a file.
"""

from service.pricing.sources.base import SourceError, SourceResult
from service.pricing.sources.bedrock import fetch_bedrock, parse_price_list
from service.pricing.sources.gemini import fetch_gemini, google_access_token, parse_skus
from service.pricing.sources.litellm import LITELLM_URL, fetch_litellm, parse_litellm
from service.pricing.sources.openai import fetch_openai

__all__ = [
    "LITELLM_URL",
    "SourceError",
    "SourceResult",
    "fetch_bedrock",
    "fetch_gemini",
    "fetch_litellm",
    "fetch_openai",
    "google_access_token",
    "parse_litellm",
    "parse_price_list",
    "parse_skus",
]
