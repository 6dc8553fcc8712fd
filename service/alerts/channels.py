"""Where a budget's alerts go: channel shapes, validation, stable keys and masking.

A budget's `channels` is a list of tagged objects:

    {"type": "email", "to": ["a@x.org"]}
    {"type": "slack", "webhook_url": "https://hooks.slack.com/..."}   (no URL: SLACK_WEBHOOK_URL)
    {"type": "webhook", "url": "https://...", "secret": "..."}
    {"type": "sms", "to": ["+15551234567"]}

Slack and webhook URLs must be https and resolve only to public addresses —
checked when a budget is saved and again before every send — unless
ALERT_ALLOW_PRIVATE_URLS is set. Webhook secrets are stored with the budget
but never answered: responses carry `"secret": "********"`, and an update that
sends that placeholder (or no secret) keeps the stored one for the same URL.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from service.settings import AlertSettings

MASK = "********"
EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")

Recipients = Annotated[list[str], msgspec.Meta(min_length=1, max_length=50)]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class EmailChannel(msgspec.Struct, tag="email", tag_field="type", forbid_unknown_fields=True):
    to: Recipients


class SlackChannel(msgspec.Struct, tag="slack", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    webhook_url: Url | None = None


class WebhookChannel(msgspec.Struct, tag="webhook", tag_field="type", forbid_unknown_fields=True):
    url: Url
    secret: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class SmsChannel(msgspec.Struct, tag="sms", tag_field="type", forbid_unknown_fields=True):
    to: Recipients


Channel = EmailChannel | SlackChannel | WebhookChannel | SmsChannel
ChannelType = Literal["email", "slack", "webhook", "sms"]
MIN_SECRET = 16


class ChannelError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def channel_type(channel: Channel) -> ChannelType:
    return channel.__struct_config__.tag  # type: ignore[return-value]


def channel_key(channel: Channel) -> str:
    """A stable id for a channel's destination (never its secret): the same channel in
    two versions of a budget has the same key, so a delivery is not repeated."""
    if isinstance(channel, EmailChannel | SmsChannel):
        target = ",".join(sorted(channel.to))
    elif isinstance(channel, SlackChannel):
        target = channel.webhook_url or "default"
    else:
        target = channel.url
    return f"{channel_type(channel)}:" + hashlib.sha256(target.encode()).hexdigest()[:16]


def targets(channels: Sequence[Channel]) -> list[Channel]:
    """What is delivered separately: an SMS channel is one target per number (a retry to one
    number must not text the others again); the others are one target each."""
    out: list[Channel] = []
    for channel in channels:
        if isinstance(channel, SmsChannel):
            out.extend(SmsChannel(to=[number]) for number in channel.to)
        else:
            out.append(channel)
    return out


def mask_address(value: str) -> str:
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if value.startswith("+"):
        return f"{value[:3]}***{value[-2:]}"
    parts = urlsplit(value)
    return f"{parts.scheme}://{parts.hostname or ''}/***" if parts.scheme else "***"


def mask_target(channel: Channel, settings: AlertSettings | None = None) -> str:
    """Who a channel reaches, safe for logs and responses."""
    if isinstance(channel, EmailChannel | SmsChannel):
        return ", ".join(mask_address(v) for v in channel.to)
    if isinstance(channel, SlackChannel):
        url = channel.webhook_url or (settings.slack_webhook_url if settings else "")
        return mask_address(url) if url else "SLACK_WEBHOOK_URL"
    return mask_address(channel.url)


def public(channels: Sequence[Channel]) -> list[Channel]:
    """Channels as answered: webhook secrets replaced by a placeholder."""
    return [
        msgspec.structs.replace(c, secret=MASK) if isinstance(c, WebhookChannel) and c.secret else c for c in channels
    ]


def keep_secrets(new: Sequence[Channel], current: Sequence[Channel]) -> list[Channel]:
    """An update's webhook channels without a secret (or with the placeholder) keep the stored
    secret of the channel with the same URL."""
    stored = {c.url: c.secret for c in current if isinstance(c, WebhookChannel) and c.secret}
    out: list[Channel] = []
    for channel in new:
        if isinstance(channel, WebhookChannel) and channel.secret in (None, MASK) and channel.url in stored:
            channel = msgspec.structs.replace(channel, secret=stored[channel.url])
        out.append(channel)
    return out


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def check_url(url: str, field: str, *, allow_private: bool) -> None:
    """https, a host, and (unless allowed) only public addresses; raises ChannelError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ChannelError(field, f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ChannelError(field, "must be an https URL with a host")
    if parts.username or parts.password:
        raise ChannelError(field, "must not carry credentials")
    if allow_private:
        return
    if parts.scheme != "https":
        raise ChannelError(field, "must be https")
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ChannelError(field, f"host {parts.hostname!r} does not resolve") from exc
    for info in infos:
        if not address_is_public(str(info[4][0])):
            raise ChannelError(field, f"host {parts.hostname!r} resolves to a loopback, private or link-local address")


def validate(channels: Sequence[Channel], settings: AlertSettings, *, prefix: str = "channels") -> None:
    """Checks a schema cannot make: addresses, numbers, URLs, and the service's own
    configuration for the channel (an email channel needs SENDGRID_API_KEY, ...)."""
    if len({channel_key(c) for c in channels}) != len(channels):
        raise ChannelError(prefix, "each channel at most once")
    for i, channel in enumerate(channels):
        at = f"{prefix}[{i}]"
        if isinstance(channel, EmailChannel):
            for j, address in enumerate(channel.to):
                if len(address) > 254 or not EMAIL.match(address):
                    raise ChannelError(f"{at}.to[{j}]", f"{address!r} is not an email address")
            if not settings.sendgrid_api_key or not settings.email_from:
                raise ChannelError(f"{at}.type", "email alerts need SENDGRID_API_KEY and ALERT_EMAIL_FROM set")
        elif isinstance(channel, SmsChannel):
            for j, number in enumerate(channel.to):
                if not E164.match(number):
                    raise ChannelError(f"{at}.to[{j}]", f"{number!r} is not an E.164 number such as +15551234567")
            if not (settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_from_number):
                raise ChannelError(
                    f"{at}.type",
                    "SMS alerts need TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM_NUMBER set",
                )
        elif isinstance(channel, SlackChannel):
            if channel.webhook_url is None:
                if not settings.slack_webhook_url:
                    raise ChannelError(f"{at}.webhook_url", "required: SLACK_WEBHOOK_URL is not set")
            else:
                check_url(channel.webhook_url, f"{at}.webhook_url", allow_private=settings.allow_private_urls)
        else:
            check_url(channel.url, f"{at}.url", allow_private=settings.allow_private_urls)
            if not channel.secret or channel.secret == MASK:
                raise ChannelError(f"{at}.secret", "required: the key webhook signatures are made with")
            if len(channel.secret) < MIN_SECRET:
                raise ChannelError(f"{at}.secret", f"at least {MIN_SECRET} characters")


_decoder = msgspec.json.Decoder(list[Channel])


def decode_channels(raw: str) -> list[Channel]:
    """Stored channels; a stored list this version cannot read counts as none (and is logged)."""
    if not raw:
        return []
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError:
        logging.getLogger("finops.alerts").warning("a budget's stored channels are not readable; ignoring them")
        return []


def channels_from(value: Any) -> list[Channel]:
    return msgspec.convert(value, list[Channel])
