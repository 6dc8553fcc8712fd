"""Sending one notice to one channel, and what came of it.

Each send is one request to the provider: SendGrid's v3 mail API through the
`sendgrid` library, Twilio's Messages API through the `twilio` library, Slack
incoming webhooks and generic webhooks through httpx. The outcome says whether
to retry: network errors, 429 and 5xx are worth retrying (429's `Retry-After`
is honoured); any other 4xx is final. Nothing here raises for a failed send,
and no outcome carries a secret.

Webhook signature: `X-FinOps-Timestamp` is the send time in Unix seconds and
`X-FinOps-Signature` is `v1=` followed by the hex HMAC-SHA256, keyed with the
channel's secret, of `"{timestamp}.{body}"` (the raw body bytes). Receivers
recompute it, compare in constant time, and reject timestamps more than
`REPLAY_WINDOW_S` from their clock.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from service.alerts.channels import (
    Channel,
    ChannelError,
    EmailChannel,
    SlackChannel,
    SmsChannel,
    WebhookChannel,
    check_url,
)
from service.alerts.notice import Notice, email_html, email_subject, email_text, slack_payload, sms_text, webhook_body
from service.settings import AlertSettings

REPLAY_WINDOW_S = 300
SIGNATURE_HEADER = "X-FinOps-Signature"
TIMESTAMP_HEADER = "X-FinOps-Timestamp"
USER_AGENT = "finops-svc-alerts/1"


@dataclass(frozen=True)
class Outcome:
    status: Literal["delivered", "retry", "failed"]
    code: int = 0
    error: str = ""
    retry_after_s: float | None = None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None) -> bool:
    """What a receiver does: a fresh timestamp and a matching signature."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - stamp) > REPLAY_WINDOW_S:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def by_status(code: int, headers: Mapping[str, str] | None, detail: str = "") -> Outcome:
    if 200 <= code < 300:
        return Outcome("delivered", code)
    error = f"HTTP {code}" + (f": {detail[:200]}" if detail else "")
    if code == 429 or code >= 500:
        return Outcome("retry", code, error, retry_after(headers))
    return Outcome("failed", code, error)


def _redact(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class Message:
    """One message in every channel's form."""

    subject: str
    text: str
    html: str
    slack: dict[str, Any]
    webhook: bytes
    sms: str

    @classmethod
    def of(cls, notice: Notice) -> Message:
        return cls(
            subject=email_subject(notice),
            text=email_text(notice),
            html=email_html(notice),
            slack=slack_payload(notice),
            webhook=webhook_body(notice),
            sms=sms_text(notice),
        )


class Senders:
    """Sends notices with the service's provider settings."""

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings

    def send(self, channel: Channel, notice: Notice) -> Outcome:
        return self.deliver(channel, Message.of(notice))

    def deliver(self, channel: Channel, message: Message) -> Outcome:
        try:
            if isinstance(channel, EmailChannel):
                return self._email(channel, message)
            if isinstance(channel, SmsChannel):
                return self._sms(channel, message)
            if isinstance(channel, SlackChannel):
                url = channel.webhook_url or self.settings.slack_webhook_url
                if not url:
                    return Outcome("failed", error="no webhook_url and SLACK_WEBHOOK_URL is not set")
                return self._post_json(url, _json(message.slack), {})
            return self._webhook(channel, message)
        except ChannelError as exc:
            return Outcome("failed", error=exc.reason)
        except Exception as exc:  # a library raised something unexpected: final, visible, no secrets
            return Outcome("failed", error=_redact(f"{type(exc).__name__}: {exc}", *self._secrets(channel)))

    def _secrets(self, channel: Channel) -> tuple[str, ...]:
        s = self.settings
        extra = (channel.secret or "",) if isinstance(channel, WebhookChannel) else ()
        return (s.sendgrid_api_key, s.twilio_auth_token, *extra)

    # -- HTTP webhooks ----------------------------------------------------------

    def _webhook(self, channel: WebhookChannel, message: Message) -> Outcome:
        if not channel.secret:
            return Outcome("failed", error="the webhook has no secret")
        body = message.webhook
        stamp = int(time.time())
        headers = {TIMESTAMP_HEADER: str(stamp), SIGNATURE_HEADER: sign(channel.secret, stamp, body)}
        return self._post_json(channel.url, body, headers)

    def _post_json(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        check_url(url, "url", allow_private=self.settings.allow_private_urls)  # again: DNS may have changed
        try:
            with httpx.Client(timeout=self.settings.send_timeout_s, follow_redirects=False) as client:
                response = client.post(
                    url,
                    content=body,
                    headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
                )
        except httpx.TransportError as exc:
            return Outcome("retry", error=f"{type(exc).__name__} talking to {urlsplit(url).hostname}")
        return by_status(response.status_code, response.headers, response.text)

    # -- SendGrid ---------------------------------------------------------------

    def _email(self, channel: EmailChannel, message: Message) -> Outcome:
        from python_http_client.exceptions import HTTPError
        from sendgrid import SendGridAPIClient
        from sendgrid.helpers.mail import Mail

        s = self.settings
        if not s.sendgrid_api_key or not s.email_from:
            return Outcome("failed", error="SENDGRID_API_KEY and ALERT_EMAIL_FROM must be set for email alerts")
        mail = Mail(
            from_email=s.email_from,
            to_emails=list(channel.to),
            subject=message.subject,
            plain_text_content=message.text,
            html_content=message.html,
        )
        client = SendGridAPIClient(api_key=s.sendgrid_api_key, host=s.sendgrid_api_host)
        client.client.timeout = s.send_timeout_s
        try:
            response = client.send(mail)
        except HTTPError as exc:
            body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body)
            headers = dict(exc.headers.items()) if exc.headers is not None else None
            return by_status(int(exc.status_code), headers, _redact(body, s.sendgrid_api_key))
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            return Outcome("retry", error=f"{type(exc).__name__} talking to SendGrid")
        return by_status(int(response.status_code), dict(response.headers.items()) if response.headers else None)

    # -- Twilio -----------------------------------------------------------------

    def _sms(self, channel: SmsChannel, message: Message) -> Outcome:
        import requests.exceptions
        from twilio.base.exceptions import TwilioRestException
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        s = self.settings
        if not (s.twilio_account_sid and s.twilio_auth_token and s.twilio_from_number):
            return Outcome("failed", error="TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM_NUMBER must be set")
        http = TwilioHttpClient(timeout=s.send_timeout_s)
        client = Client(s.twilio_account_sid, s.twilio_auth_token, http_client=http)
        client.api.base_url = s.twilio_api_base_url.rstrip("/")
        text = message.sms
        outcome = Outcome("delivered", 201)
        for number in channel.to:  # delivery splits SMS channels into one target per number
            try:
                sent = client.messages.create(to=number, from_=s.twilio_from_number, body=text)
            except TwilioRestException as exc:
                last: Any = http._test_only_last_response
                headers = dict(last.headers.items()) if last is not None and last.headers else None
                return by_status(int(exc.status), headers, _redact(str(exc.msg), s.twilio_auth_token))
            except requests.exceptions.RequestException as exc:
                return Outcome("retry", error=f"{type(exc).__name__} talking to Twilio")
            if getattr(sent, "error_code", None):
                return Outcome("failed", 201, f"Twilio error {sent.error_code}")
        return outcome


def _json(value: Any) -> bytes:
    import msgspec

    return msgspec.json.encode(value)
