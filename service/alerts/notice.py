"""What an alert says, rendered for each channel.

A notice covers one alert or, as a digest, every alert of one budget that is
due on a channel at once (a per-learner budget crossing for 500 learners is
one notice, not 500). Every channel states the same facts: budget, scope,
spend, limit, percent used, forecast, and a dashboard link when configured.

The webhook body is a stable, versioned schema (`WEBHOOK_SCHEMA_VERSION`),
documented in the README; it carries exact decimal strings, while human
channels show amounts rounded to cents.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

import msgspec

from service.money import money_str
from service.storage.clickhouse import as_utc

WEBHOOK_SCHEMA_VERSION = "1"
SMS_LIMIT = 160  # one GSM-7 segment
DIGEST_LINES = 10
Severity = Literal["critical", "warning", "info"]
COLOURS: dict[Severity, str] = {"critical": "#D92D20", "warning": "#F79009", "info": "#2E90FA"}


@dataclass(frozen=True)
class AlertFacts:
    alert_id: str
    threshold_percent: int
    kind: str
    spend_usd: Decimal
    forecast_usd: Decimal
    limit_usd: Decimal
    percent_used: Decimal
    tenant_id: str
    service: str
    learner_id: str
    period_start: datetime
    period_end: datetime
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AlertFacts:
        return cls(
            alert_id=row["alert_id"],
            threshold_percent=int(row["threshold_percent"]),
            kind=str(row["kind"]),
            spend_usd=Decimal(row["spend_usd"]),
            forecast_usd=Decimal(row["forecast_usd"]),
            limit_usd=Decimal(row["limit_usd"]),
            percent_used=Decimal(row["percent_used"]),
            tenant_id=row["tenant_id"],
            service=row["service"],
            learner_id=row["learner_id"],
            period_start=as_utc(row["period_start"]),
            period_end=as_utc(row["period_end"]),
            created_at=as_utc(row["created_at"]),
        )

    @property
    def severity(self) -> Severity:
        if self.kind == "actual" and self.threshold_percent >= 100:
            return "critical"
        if self.threshold_percent >= 80:
            return "warning"
        return "info"


@dataclass(frozen=True)
class Notice:
    budget_id: str
    budget_name: str
    tenant_id: str
    service: str
    learner_id: str
    per_learner: bool
    period: str
    timezone: str
    limit_usd: Decimal
    alerts: list[AlertFacts]
    dashboard_url: str = ""
    test: bool = False
    sent_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def digest(self) -> bool:
        return len(self.alerts) > 1

    @property
    def lead(self) -> AlertFacts:
        """The alert a notice leads with: the most severe, then the highest percent used."""
        rank = {"critical": 0, "warning": 1, "info": 2}
        return min(self.alerts, key=lambda a: (rank[a.severity], -a.percent_used, a.learner_id))

    @property
    def severity(self) -> Severity:
        return self.lead.severity

    def scope_text(self) -> str:
        parts = [
            f"{name} {value}"
            for name, value in (("tenant", self.tenant_id), ("service", self.service), ("learner", self.learner_id))
            if value
        ]
        text = ", ".join(parts) if parts else "all usage"
        return text + (" (each learner)" if self.per_learner else "")


def usd(amount: Decimal) -> str:
    return f"${amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):,}"


def pct(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.1'), rounding=ROUND_HALF_EVEN)}%"


def headline(notice: Notice) -> str:
    lead = notice.lead
    test = "[TEST] " if notice.test else ""
    if notice.digest:
        learners = len({a.learner_id for a in notice.alerts if a.learner_id})
        who = f"{learners} learners" if notice.per_learner and learners > 1 else f"{len(notice.alerts)} thresholds"
        most = f"up to {pct(lead.percent_used)} of {usd(lead.limit_usd)}"
        return f"{test}Budget '{notice.budget_name}': {who} crossed, {most}"
    what = "forecast to reach" if lead.kind == "forecast" else "reached"
    return (
        f"{test}Budget '{notice.budget_name}' {what} {lead.threshold_percent}% "
        f"({pct(lead.percent_used)} of {usd(lead.limit_usd)} used)"
    )


def fact_lines(notice: Notice) -> list[tuple[str, str]]:
    lead = notice.lead
    lines = [
        ("Budget", notice.budget_name),
        ("Scope", notice.scope_text()),
        ("Period", f"{notice.period} ({lead.period_start:%Y-%m-%d %H:%M} to {lead.period_end:%Y-%m-%d %H:%M} UTC)"),
        ("Spend", usd(lead.spend_usd)),
        ("Limit", usd(lead.limit_usd)),
        ("Used", pct(lead.percent_used)),
        ("Forecast", usd(lead.forecast_usd)),
        ("Threshold", f"{lead.threshold_percent}% {lead.kind}"),
    ]
    if lead.learner_id and notice.per_learner:
        lines.insert(2, ("Learner", lead.learner_id))
    return lines


def digest_lines(notice: Notice) -> list[str]:
    ranked = sorted(notice.alerts, key=lambda a: (-a.percent_used, a.learner_id, a.threshold_percent))
    lines = [
        f"{a.learner_id or notice.scope_text()}: {usd(a.spend_usd)} ({pct(a.percent_used)}), "
        f"{a.threshold_percent}% {a.kind}"
        for a in ranked[:DIGEST_LINES]
    ]
    if len(ranked) > DIGEST_LINES:
        lines.append(f"... and {len(ranked) - DIGEST_LINES} more")
    return lines


def email_subject(notice: Notice) -> str:
    return f"[FinOps] {headline(notice)}"


def email_text(notice: Notice) -> str:
    lines = [headline(notice), ""]
    lines += [f"{name}: {value}" for name, value in fact_lines(notice)]
    if notice.digest:
        lines += ["", "Alerts:"] + [f"- {line}" for line in digest_lines(notice)]
    if notice.dashboard_url:
        lines += ["", f"Dashboard: {notice.dashboard_url}"]
    if notice.test:
        lines += ["", "This is a test alert: no threshold was crossed."]
    return "\n".join(lines) + "\n"


def email_html(notice: Notice) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><th align='left' style='padding:2px 12px 2px 0'>{esc(n)}</th><td>{esc(v)}</td></tr>"
        for n, v in fact_lines(notice)
    )
    parts = [
        f"<h2 style='color:{COLOURS[notice.severity]}'>{esc(headline(notice))}</h2>",
        f"<table>{rows}</table>",
    ]
    if notice.digest:
        parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in digest_lines(notice)) + "</ul>")
    if notice.dashboard_url:
        parts.append(f"<p><a href='{esc(notice.dashboard_url, quote=True)}'>Open the dashboard</a></p>")
    if notice.test:
        parts.append("<p><em>This is a test alert: no threshold was crossed.</em></p>")
    return "<html><body>" + "".join(parts) + "</body></html>"


def slack_payload(notice: Notice) -> dict[str, Any]:
    """Block Kit in a coloured attachment (colour by severity); `text` is the notification fallback."""
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{value}"} for name, value in fact_lines(notice)]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline(notice)[:150]}},
        {"type": "section", "fields": fields[:10]},
    ]
    if notice.digest:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(digest_lines(notice))[:3000]}})
    context = [f"Severity: {notice.severity}"]
    if notice.dashboard_url:
        context.append(f"<{notice.dashboard_url}|Open the dashboard>")
    if notice.test:
        context.append("Test alert: no threshold was crossed.")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]})
    return {"text": headline(notice), "attachments": [{"color": COLOURS[notice.severity], "blocks": blocks}]}


class WebhookAlert(msgspec.Struct):
    alert_id: str
    threshold_percent: int
    kind: str
    spend_usd: str
    forecast_usd: str
    limit_usd: str
    percent_used: str
    tenant_id: str | None
    service: str | None
    learner_id: str | None
    period_start: datetime
    period_end: datetime
    created_at: datetime


class WebhookBudget(msgspec.Struct):
    budget_id: str
    name: str
    tenant_id: str | None
    service: str | None
    learner_id: str | None
    per_learner: bool
    period: str
    timezone: str
    limit_usd: str


class WebhookBody(msgspec.Struct):
    """Version 1 of the webhook body (see the README)."""

    schema_version: str
    event: Literal["budget.alert", "budget.alert.test"]
    sent_at: datetime
    severity: str
    summary: str
    budget: WebhookBudget
    alerts: list[WebhookAlert]
    dashboard_url: str | None


def webhook_body(notice: Notice) -> bytes:
    body = WebhookBody(
        schema_version=WEBHOOK_SCHEMA_VERSION,
        event="budget.alert.test" if notice.test else "budget.alert",
        sent_at=notice.sent_at,
        severity=notice.severity,
        summary=headline(notice),
        budget=WebhookBudget(
            budget_id=notice.budget_id,
            name=notice.budget_name,
            tenant_id=notice.tenant_id or None,
            service=notice.service or None,
            learner_id=notice.learner_id or None,
            per_learner=notice.per_learner,
            period=notice.period,
            timezone=notice.timezone,
            limit_usd=money_str(notice.limit_usd),
        ),
        alerts=[
            WebhookAlert(
                alert_id=a.alert_id,
                threshold_percent=a.threshold_percent,
                kind=a.kind,
                spend_usd=money_str(a.spend_usd),
                forecast_usd=money_str(a.forecast_usd),
                limit_usd=money_str(a.limit_usd),
                percent_used=money_str(a.percent_used),
                tenant_id=a.tenant_id or None,
                service=a.service or None,
                learner_id=a.learner_id or None,
                period_start=a.period_start,
                period_end=a.period_end,
                created_at=a.created_at,
            )
            for a in sorted(notice.alerts, key=lambda a: (-a.percent_used, a.alert_id))
        ],
        dashboard_url=notice.dashboard_url or None,
    )
    return msgspec.json.encode(body)


_GSM_SAFE = set("@$\n\r _!\"#%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def gsm(text: str) -> str:
    """Text reduced to characters every GSM-7 segment carries as one character."""
    return "".join(c if c in _GSM_SAFE else "?" for c in text)


def sms_text(notice: Notice) -> str:
    """One SMS segment (160 GSM-7 characters): the budget name is shortened to fit."""
    lead = notice.lead
    test = "TEST " if notice.test else ""
    what = "forecast" if lead.kind == "forecast" else "spend"
    count = f" (+{len(notice.alerts) - 1} more)" if notice.digest else ""
    tail = (
        f" {pct(lead.percent_used)} of {usd(lead.limit_usd)} ({what} {lead.threshold_percent}%, "
        f"forecast {usd(lead.forecast_usd)}){count}"
    )
    head = f"{test}FinOps: "
    room = SMS_LIMIT - len(gsm(head + tail)) - 2
    name = gsm(notice.budget_name)
    if len(name) > room:
        name = name[: max(room - 3, 1)] + "..."
    return (gsm(head) + f"'{name}'" + gsm(tail))[:SMS_LIMIT]
