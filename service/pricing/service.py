"""Price management: sources on a schedule, imports, overrides, repricing, and telling admins."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec

from service.alerts.channels import Channel, channels_from, targets
from service.alerts.senders import Message, Senders
from service.pricing.catalog import parse_catalog, read_prices
from service.pricing.overrides import PricingState
from service.pricing.reprice import RepriceIn, RepriceSummary, reprice
from service.pricing.sources.base import SourceError, SourceResult
from service.pricing.updates import (
    RunReport,
    apply_prices,
    load_state,
    pricing_fingerprint,
    run_source,
    unpriced_in_traffic,
)
from service.settings import PricingSettings
from service.storage.clickhouse import ClickHouse

log = logging.getLogger("finops.pricing")


class UpdateRun(msgspec.Struct):
    runs: list[RunReport]
    unpriced_in_traffic: list[str]
    notified: int


def configured_sources(settings: PricingSettings) -> dict[str, Callable[[], SourceResult]]:
    """The sources this deployment is set up for; each optional and independent."""
    from service.pricing.sources.bedrock import fetch_bedrock
    from service.pricing.sources.gemini import fetch_gemini
    from service.pricing.sources.litellm import fetch_litellm
    from service.pricing.sources.openai import fetch_openai

    timeout = float(settings.fetch_timeout_s)
    sources: dict[str, Callable[[], SourceResult]] = {}
    if settings.catalog_url:
        sources["litellm"] = partial(fetch_litellm, settings.catalog_url, timeout=timeout)
    if settings.openai_api_key:
        sources["openai"] = partial(
            fetch_openai, settings.openai_api_key, base_url=settings.openai_base_url, timeout=timeout
        )
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        sources["bedrock"] = partial(
            fetch_bedrock,
            settings.aws_access_key_id,
            settings.aws_secret_access_key,
            endpoint_url=settings.aws_pricing_endpoint_url or None,
            timeout=timeout,
        )
    if settings.google_api_key or settings.google_credentials:
        sources["gemini"] = partial(
            fetch_gemini,
            api_key=settings.google_api_key or None,
            credentials_file=settings.google_credentials or None,
            base_url=settings.google_billing_base_url,
            timeout=timeout,
        )
    return sources


def admin_channels(settings: PricingSettings) -> list[Channel]:
    if not settings.alert_channels:
        return []
    return channels_from(msgspec.json.decode(settings.alert_channels))


def pricing_message(run: UpdateRun) -> Message | None:
    """What admins are told after a run, or None when there is nothing to say."""
    lines: list[str] = []
    for report in run.runs:
        if report.status == "failed":
            lines.append(f"- {report.source}: FAILED, prices unchanged ({report.error})")
            continue
        if report.added or report.changed or report.quarantined:
            lines.append(
                f"- {report.source}: {report.added} added, {report.changed} changed, {report.quarantined} quarantined"
            )
            for change in report.changes[:20]:
                reason = f" ({change.reason})" if change.reason else ""
                lines.append(f"    {change.change} {change.provider}/{change.model} {change.region}{reason}".rstrip())
        if report.discovered_unpriced:
            lines.append(f"- {report.source}: models without a price: {', '.join(report.discovered_unpriced[:20])}")
    if run.unpriced_in_traffic:
        lines.append("- unpriced models in the last week's traffic: " + ", ".join(run.unpriced_in_traffic[:20]))
    if not lines:
        return None
    subject = "[FinOps] Price catalog: changes and unpriced models"
    text = subject + "\n\n" + "\n".join(lines) + "\n"
    payload = {
        "schema_version": "1",
        "event": "pricing.update",
        "sent_at": datetime.now(UTC).isoformat(),
        "runs": msgspec.to_builtins(run.runs),
        "unpriced_in_traffic": run.unpriced_in_traffic,
    }
    return Message(
        subject=subject,
        text=text,
        html="<pre>" + text.replace("&", "&amp;").replace("<", "&lt;") + "</pre>",
        slack={"text": text},
        webhook=msgspec.json.encode(payload),
        sms="FinOps: price catalog changed or models unpriced; see GET /pricing/changes"[:160],
    )


class PricingService:
    """Holds the live pricing state and changes it."""

    def __init__(
        self,
        db: ClickHouse,
        state: PricingState,
        settings: PricingSettings,
        senders: Senders,
        bedrock_default_region: str = "us-east-1",
    ) -> None:
        self.db = db
        self.state = state
        self.settings = settings
        self.senders = senders
        self.bedrock_default_region = bedrock_default_region
        self._fingerprint: tuple[Any, ...] = ()

    def reload(self) -> None:
        """Swap in the stored prices and overrides (the Ingestor keeps the same state object)."""
        fresh = load_state(self.db, self.bedrock_default_region)
        self.state.book, self.state.tenants = fresh.book, fresh.tenants
        self._fingerprint = pricing_fingerprint(self.db)

    def reload_if_changed(self) -> bool:
        """For replicas: reload when another process wrote prices or overrides."""
        if pricing_fingerprint(self.db) == self._fingerprint:
            return False
        self.reload()
        return True

    def update(self, only: str | None = None) -> UpdateRun:
        """Run every configured source (or one), then tell admins what changed."""
        sources = configured_sources(self.settings)
        if only is not None:
            if only not in sources:
                raise SourceError(f"source {only!r} is not configured (configured: {', '.join(sources) or 'none'})")
            sources = {only: sources[only]}
        runs = [
            run_source(self.db, name, fetch, self.settings.max_change_factor, self.state.book)
            for name, fetch in sources.items()
        ]
        self.reload()
        result = UpdateRun(runs=runs, unpriced_in_traffic=unpriced_in_traffic(self.db, self.state.book), notified=0)
        result.notified = self.notify(result)
        return result

    def notify(self, run: UpdateRun) -> int:
        message = pricing_message(run)
        if message is None:
            return 0
        sent = 0
        for channel in targets(admin_channels(self.settings)):
            outcome = self.senders.deliver(channel, message)
            if outcome.status == "delivered":
                sent += 1
            else:
                log.warning("could not tell admins about price changes: %s", outcome.error)
        return sent

    def import_catalog(self, data: bytes, origin: str = "import") -> RunReport:
        """Our catalog format (`"format": "finops-catalog/1"`) or a LiteLLM price map."""
        from service.pricing.sources.litellm import parse_litellm

        try:
            head = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if isinstance(head, dict) and head.get("format") == "finops-catalog/1":
            prices = parse_catalog(data)
            report = apply_prices(self.db, origin, prices, self.settings.max_change_factor, keep_dates=True)
        elif isinstance(head, dict):
            result = parse_litellm(data, origin=origin)
            report = apply_prices(self.db, origin, result.prices, self.settings.max_change_factor)
            report.problems = list(result.problems)
        else:
            raise ValueError("expected a JSON object: our catalog format or a LiteLLM price map")
        self.reload()
        return report

    def reprice(self, request: RepriceIn, progress: Callable[[int], None] | None = None) -> RepriceSummary:
        return reprice(self.db, self.state, request, progress)

    def prices(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        at: datetime = filters.get("at") or datetime.now(UTC)
        latest: dict[tuple[str, str, str], Any] = {}
        for stored in sorted(read_prices(self.db), key=lambda s: s.price.effective_from):
            price = stored.price
            if price.effective_from > at:
                continue
            if any(
                filters.get(name) and getattr(price, name) != filters[name] for name in ("provider", "model", "region")
            ):
                continue
            latest[(price.provider, price.model, price.region)] = stored
        return [
            {"region": s.price.region, **msgspec.to_builtins(s.price), "origin": s.origin, "version": s.version}
            for _, s in sorted(latest.items())
        ]
