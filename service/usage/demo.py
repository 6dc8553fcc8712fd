"""Realistic synthetic usage for `finops demo`: schools, services, learners, models."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

from service.usage.schemas import UsageEventIn

TENANTS = (
    "school-oakridge",
    "school-riverside",
    "school-hillcrest",
    "school-lakeview",
    "school-maplewood",
    "school-northgate",
)
# (service, provider, model, region, weight, typical input tokens, typical output tokens, kind)
TRAFFIC: tuple[tuple[str, str, str, str | None, int, int, int, str], ...] = (
    ("tutor-chat", "openai", "gpt-4o-mini", None, 30, 1800, 350, "chat"),
    ("tutor-chat", "openai", "gpt-4o", None, 8, 2500, 500, "chat"),
    (
        "essay-feedback",
        "bedrock",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "us-east-1",
        6,
        3500,
        900,
        "chat",
    ),
    (
        "essay-feedback",
        "bedrock",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "eu-central-1",
        5,
        3000,
        700,
        "chat",
    ),
    ("quiz-generator", "gemini", "gemini-1.5-flash", None, 10, 1200, 800, "chat"),
    ("quiz-generator", "gemini", "gemini-2.0-flash", None, 8, 1400, 900, "chat"),
    ("reading-coach", "gemini", "gemini-1.5-pro", None, 3, 9000, 600, "chat"),
    ("content-search", "openai", "text-embedding-3-small", None, 20, 400, 0, "embedding"),
    ("content-search", "bedrock", "amazon.titan-embed-text-v2:0", "us-west-2", 5, 350, 0, "embedding"),
    ("lesson-planner", "bedrock", "meta.llama3-1-70b-instruct-v1:0", "us-west-2", 4, 2200, 1200, "chat"),
    ("grading-batch", "openai", "gpt-4.1-mini", None, 5, 2600, 300, "batch"),
)
LEARNERS_PER_TENANT = 400


def synthetic_events(count: int, *, seed: int = 7, days: int = 30, now: datetime) -> Iterator[UsageEventIn]:
    """`count` events spread over the last `days` days, reproducible for a seed."""
    rng = random.Random(seed)
    weights = [t[4] for t in TRAFFIC]
    span = timedelta(days=days).total_seconds()
    run = uuid.uuid4().hex[:8]
    for index in range(count):
        tenant = TENANTS[min(int(rng.paretovariate(1.4)) - 1, len(TENANTS) - 1)]
        service, provider, model, region, _, typical_in, typical_out, kind = rng.choices(TRAFFIC, weights)[0]
        input_tokens = max(1, int(rng.lognormvariate(0, 0.6) * typical_in))
        output_tokens = 0 if kind == "embedding" else max(1, int(rng.lognormvariate(0, 0.7) * typical_out))
        cached = 0
        if kind == "chat" and provider == "openai" and rng.random() < 0.35:
            cached = min(input_tokens, 1024 * rng.randint(1, 3))
        learner = None
        if kind != "batch":
            learner = f"learner-{rng.randint(1, LEARNERS_PER_TENANT):04d}"
        yield UsageEventIn(
            event_id=f"demo-{run}-{index}",
            timestamp=now - timedelta(seconds=rng.random() * span),
            tenant_id=tenant,
            service=service,
            learner_id=learner,
            provider=provider,  # type: ignore[arg-type]
            model=model,
            region=region,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached,
            batch=kind == "batch",
            metadata={"source": "finops-demo"},
        )
