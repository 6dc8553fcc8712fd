"""Request and response shapes for usage events (msgspec Structs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
Count = Annotated[int, msgspec.Meta(ge=0, le=10_000_000_000)]
MetadataKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
MetadataValue = Annotated[str, msgspec.Meta(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], msgspec.Meta(max_length=32)]
ProviderName = Literal["openai", "gemini", "bedrock"]
PricingStatus = Literal["priced", "provided", "unpriced"]

METADATA_MAX_KEYS = 32


class UsageEventIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One AI inference call as a service reports it."""

    service: Name
    provider: ProviderName
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    tenant_id: Name | None = None
    event_id: Name | None = None
    timestamp: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    learner_id: Name | None = None
    region: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    input_tokens: Count = 0
    output_tokens: Count = 0
    cached_input_tokens: Count = 0
    cache_write_tokens: Count = 0
    input_characters: Count = 0
    output_characters: Count = 0
    images: Count = 0
    batch: bool = False
    cost_usd: str | None = None
    metadata: Metadata | None = None


class UsageBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


class UsageEvent(msgspec.Struct, kw_only=True):
    """A stored usage event."""

    event_id: str
    timestamp: datetime
    received_at: datetime
    tenant_id: str
    service: str
    learner_id: str | None
    provider: str
    model: str
    region: str | None
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    input_characters: int
    output_characters: int
    images: int
    batch: bool
    cost_usd: str | None
    pricing_status: PricingStatus
    price_version: str | None
    metadata: dict[str, str]


class BatchItemResult(msgspec.Struct):
    event_id: str
    cost_usd: str | None
    pricing_status: PricingStatus
    duplicate: bool


class BatchResult(msgspec.Struct):
    accepted: int
    duplicates: int
    events: list[BatchItemResult]


class UsageEventPage(msgspec.Struct):
    items: list[UsageEvent]
    next_cursor: str | None


class UsageBatchDoc(msgspec.Struct):
    """Body of POST /usage-events/batch (the handler decodes it item by item)."""

    events: Annotated[list[UsageEventIn], msgspec.Meta(min_length=1, max_length=10_000)]
