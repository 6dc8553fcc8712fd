"""OpenAI: the model list, to discover models the catalog does not price.

OpenAI publishes no price API; `GET {base}/v1/models` lists every model the
key can use. All ids are reported as discovered models — the caller compares
them with the catalog and flags the unpriced ones.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from service.pricing.sources.base import (
    DEFAULT_TIMEOUT_S,
    SourceError,
    SourceResult,
    decode_json,
    http_get,
)

OPENAI_BASE_URL = "https://api.openai.com"
SOURCE = "openai"


def fetch_openai(
    api_key: str,
    *,
    base_url: str = OPENAI_BASE_URL,
    timeout: float = DEFAULT_TIMEOUT_S,
    now: datetime | None = None,
    client: httpx.Client | None = None,
) -> SourceResult:
    """List OpenAI's models: discovered models, no prices."""
    if not api_key:
        raise SourceError(f"{SOURCE}: no API key (OPENAI_API_KEY)")
    body = http_get(
        SOURCE,
        f"{base_url.rstrip('/')}/v1/models",
        timeout=timeout,
        headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
        secrets=[api_key],
        client=client,
    )
    return parse_openai_models(body, now=now)


def parse_openai_models(body: bytes, *, now: datetime | None = None) -> SourceResult:
    result = SourceResult(source=SOURCE, fetched_at=now or datetime.now(UTC))
    document = decode_json(SOURCE, body, "the model list")
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise SourceError(f"{SOURCE}: the model list has no `data` array")
    seen: set[str] = set()
    for index, entry in enumerate(document["data"]):
        model_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(model_id, str) or not model_id.strip() or len(model_id) > 256:
            result.problem(f"data[{index}]: no usable model id")
            continue
        model_id = model_id.strip()
        if model_id not in seen:
            seen.add(model_id)
            result.discovered_models.append(("openai", model_id))
    return result
