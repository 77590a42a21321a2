"""Notifications: a rule's ``notify`` action turned into a Slack, Discord, email or JSON
message, rendered from the event by the channel's template.

A notification travels as a ``delivery.requested`` naming its channel, so it has the same
attempts, retry schedule and dead letters as any delivery. Its URL (Slack's and Discord's
incoming-webhook URLs are credentials) never leaves this process: events carry
``notification:<name>`` instead, and errors are cleaned of it.
"""

from __future__ import annotations

from typing import Final

import msgspec
from prometheus_client import Counter

from hookbus_common.events import DeliveryRequested

from . import httpclient, templates
from .config import Notification

USER_AGENT: Final = "hookbus-dispatcher/0.1"

DISCORD_LIMIT: Final = 2000
"""Characters of a Discord message's ``content`` (Discord refuses longer ones)."""

SLACK_LIMIT: Final = 40000
"""Characters of a Slack message's ``text`` (Slack truncates longer ones)."""

SENT: Final = Counter(
    "hookbus_notifications_sent_total",
    "Notification attempts, by channel type and outcome (succeeded, retrying, failed, dead)",
    ["type", "outcome"],
)


def label(name: str) -> str:
    """What events and people see instead of a channel's URL."""
    return f"notification:{name}"


def render(req: DeliveryRequested, channel: str, n: Notification) -> tuple[str, str]:
    """The message (and an email's subject) for ``req``; ``TemplateFailed`` saying why not."""
    values = templates.variables(
        req.context,
        bytes(req.body),
        rule=req.rule,
        channel=channel,
        tenant=req.tenant,
        delivery_id=req.delivery_id,
        webhook_id=req.webhook_id,
    )
    if req.event_type is not None:
        values.setdefault("event_type", req.event_type)
    # The inbound delivery id is HOOKBUS_DELIVERY_ID in context; ours wins under the name
    # `delivery_id`, and the inbound one stays reachable as `source_delivery_id`.
    inbound = req.context.get("HOOKBUS_DELIVERY_ID")
    if inbound is not None:
        values["source_delivery_id"] = inbound
    text = templates.render(n.template, values)
    subject = templates.render(n.subject, values) if n.type == "email" else ""
    return text, subject


def body(req: DeliveryRequested, channel: str, n: Notification, text: str) -> bytes:
    """What is POSTed to a Slack, Discord or JSON channel for the rendered ``text``."""
    if n.type == "slack":
        return msgspec.json.encode({"text": text[:SLACK_LIMIT]})
    if n.type == "discord":
        # No pinging @everyone or roles from a template that echoes a payload.
        return msgspec.json.encode(
            {"content": text[:DISCORD_LIMIT], "allowed_mentions": {"parse": []}}
        )
    return msgspec.json.encode(
        {
            "text": text,
            "channel": channel,
            "rule": req.rule,
            "tenant": req.tenant,
            "delivery_id": req.delivery_id,
            "webhook_id": req.webhook_id,
            "event_type": req.event_type,
            "context": {k.removeprefix("HOOKBUS_").lower(): v for k, v in req.context.items()},
        }
    )


def request(req: DeliveryRequested, channel: str, n: Notification, text: str) -> httpclient.Request:
    """The HTTP request for a Slack, Discord or JSON channel; ``ValueError`` when it cannot
    be sent (never naming the URL: it is the secret)."""
    headers = httpclient.Headers({"user-agent": USER_AGENT})
    headers.update(n.headers)
    headers["content-type"] = "application/json"
    headers["x-hookbus-delivery"] = req.delivery_id
    url = n.url.value if n.url is not None else ""
    return httpclient.request(
        "POST", url or "", headers, body(req, channel, n, text), timeout=n.timeout
    )


def clean(text: str | None, n: Notification, channel: str) -> str | None:
    """``text`` (an error, an answer) with the channel's URL and its path taken out."""
    if text is None or n.url is None or not n.url.value:
        return text
    secrets = [n.url.value]
    try:
        # As aiohttp writes it in its errors, and its path (the secret part of Slack's
        # and Discord's URLs).
        url = httpclient.address(n.url.value).url
        secrets += [str(url), url.raw_path_qs]
    except ValueError:
        pass
    for secret in secrets:
        if len(secret) > 1:
            text = text.replace(secret, f"<{label(channel)}>")
    return text
