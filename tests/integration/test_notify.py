"""Notifications end to end: the dispatcher's config read from a real file (secrets by
environment variable), Slack, Discord and JSON messages POSTed to a real HTTP sink on
loopback, email through a real SMTP server on loopback (aiosmtpd, with STARTTLS and with
implicit TLS), real Postgres for the log and the schedule. A failing notification follows
its retry schedule to the dead-letter queue, and a replay from there delivers."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hookbus_cli import deliveries as cli_deliveries
from hookbus_cli import dlq
from hookbus_cli.embedded import free_port
from hookbus_common import events as ev
from hookbus_common.consumer import Incoming
from hookbus_common.service import Runtime
from hookbus_dispatcher import config as dispatcher
from hookbus_dispatcher import schedule
from hookbus_dispatcher.delivery import make_handler
from hookbus_dispatcher.notify import SENT
from hookbus_dispatcher.ssrf import open_clients

from .test_dispatcher import Sink, _NoMsg, _status

pytestmark = pytest.mark.integration

PAYLOAD = b'{"ref": "refs/heads/main", "head_commit": {"message": "fix <b>it</b>"}}'
CONTEXT = {
    "HOOKBUS_SOURCE": "github",
    "HOOKBUS_EVENT_TYPE": "push",
    "HOOKBUS_REPOSITORY": "acme/app",
    "HOOKBUS_BRANCH": "main",
    "HOOKBUS_SENDER": "ana",
}
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


# ----------------------------------------------------------------------- helpers


def _request(channel: str, delivery_id: str = "dlv_n") -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=delivery_id, rule="deploy", webhook_id="evt_w", url="",
            body=msgspec.Raw(PAYLOAD), event_type="push", notification=channel,
            context=CONTEXT,
        ),
        source="/test",
    )  # fmt: skip


def _config(tmp_path: Path, text: str, **env: str) -> dispatcher.DispatcherConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return dispatcher.load(path, env)


async def _deliver(
    rt: Runtime,
    config: dispatcher.DispatcherConfig,
    req: ev.Event[Any],
    at: datetime = T0,
    *,
    commit_request: bool = True,
) -> tuple[list[ev.Event[Any]], datetime | None]:
    """One message of ``req`` through the handler main() builds, its clock saying ``at``;
    returns the events and when the next attempt is due on the schedule (or None)."""
    if commit_request:
        await rt.outbox.commit([req])
    await rt.pool.execute("DELETE FROM delivery_schedule")
    d = config.dispatcher
    out: list[ev.Event[Any]] = []
    async with open_clients(d.networks(), d.timeout_seconds) as (client, private):
        handler = make_handler(
            client, rt.pool, d.attempts(), endpoints=config.endpoints, private_client=private,
            retry_schedule=d.retry_schedule, clock=lambda: at,
            notifications=config.notifications, disable_after=d.disable_after,
        )  # fmt: skip
        incoming = Incoming(event=req, subject="s", deliveries=1, _msg=_NoMsg())  # type: ignore[arg-type]
        async for item in handler(incoming):
            batch = [item] if isinstance(item, ev.Event) else list(item)
            await rt.outbox.commit_and_publish(batch)
            out.extend(batch)
    return out, await schedule.next_due(rt.pool, req.data.delivery_id)


def _types(events: list[ev.Event[Any]]) -> list[str]:
    return [type(e.data).__name__ for e in events]


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


def _channel(kind: str, extra: str = "") -> str:
    return f"""
[notifications.ops]
type = "{kind}"
url = {{ env = "OPS_HOOK" }}
allow_private = true
template = "{{{{ sender }}}} pushed {{{{ branch }}}} of {{{{ repository }}}}: {{{{ payload.head_commit.message }}}}"
{extra}
"""


# ------------------------------------------------------------------ HTTP channels


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("slack", {"text": "ana pushed main of acme/app: fix <b>it</b>"}),
        (
            "discord",
            {
                "content": "ana pushed main of acme/app: fix <b>it</b>",
                "allowed_mentions": {"parse": []},
            },
        ),
    ],
)
async def test_slack_and_discord_get_the_rendered_message(
    rt: Runtime, sink: Sink, tmp_path: Path, kind: str, expected: dict[str, Any]
) -> None:
    config = _config(tmp_path, _channel(kind), OPS_HOOK=sink.url + "/T0001/secret-path")
    before = SENT.labels(kind, "succeeded")._value.get()
    out, due = await _deliver(rt, config, _request("ops"))
    assert _types(out) == ["DeliveryAttempted", "DeliverySucceeded"]
    assert due is None
    (got,) = sink.received
    assert got.path == "/hook/T0001/secret-path"
    assert msgspec.json.decode(got.body) == expected
    assert got.headers["content-type"] == "application/json"
    # The URL is a secret: events name the channel instead.
    assert out[0].data.url == "notification:ops"
    assert "secret-path" not in ev.encode(out[0]).decode()
    assert SENT.labels(kind, "succeeded")._value.get() == before + 1
    assert await _status(rt, "dlv_n") == ("succeeded", 1, 200)


async def test_a_json_channel_gets_the_message_and_the_event_facts(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    config = _config(tmp_path, _channel("json", 'headers = { x-team = "ops" }'), OPS_HOOK=sink.url)
    out, _ = await _deliver(rt, config, _request("ops"))
    assert _types(out) == ["DeliveryAttempted", "DeliverySucceeded"]
    (got,) = sink.received
    body = msgspec.json.decode(got.body)
    assert body["text"] == "ana pushed main of acme/app: fix <b>it</b>"
    assert body["channel"] == "ops"
    assert body["rule"] == "deploy"
    assert body["context"]["repository"] == "acme/app"
    assert got.headers["x-team"] == "ops"
    assert got.headers["x-hookbus-delivery"] == "dlv_n"


async def test_a_channel_url_on_loopback_is_refused_without_allow_private(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    text = _channel("slack").replace("allow_private = true\n", "")
    config = _config(tmp_path, text, OPS_HOOK=sink.url + "/secret-path")
    out, due = await _deliver(rt, config, _request("ops"))
    assert _types(out) == ["DeliveryAttempted", "DeliveryFailed"]
    assert due is None
    error = out[0].data.error
    assert error is not None
    assert "loopback" in error
    assert "secret-path" not in error
    assert sink.received == []


async def test_a_template_error_at_send_time_is_final_with_the_reason(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    text = _channel("slack").replace("{{ payload.head_commit.message }}", "{{ payload.nope }}")
    config = _config(tmp_path, text, OPS_HOOK=sink.url)
    before = SENT.labels("slack", "failed")._value.get()
    out, due = await _deliver(rt, config, _request("ops"))
    assert _types(out) == ["DeliveryAttempted", "DeliveryFailed"]
    assert due is None
    error = out[1].data.error
    assert error is not None
    assert error.startswith("notification cannot be rendered: template error:")
    assert "nope" in error
    assert sink.received == []
    assert SENT.labels("slack", "failed")._value.get() == before + 1


async def test_a_failing_notification_follows_its_schedule_to_the_dlq_and_a_replay_delivers(
    rt: Runtime, sink: Sink, tmp_path: Path
) -> None:
    # A compressed schedule: three attempts, 10 s then 60 s apart (each ±10%).
    config = _config(tmp_path, _channel("discord", "retry_schedule = [10, 60]"), OPS_HOOK=sink.url)
    sink.answer(503)
    req = _request("ops")
    out, due = await _deliver(rt, config, req, T0)
    assert _types(out) == ["DeliveryAttempted"]
    assert due is not None
    assert timedelta(seconds=9) <= due - T0 <= timedelta(seconds=11)
    assert out[0].data.next_attempt_at == due

    # The message comes back before it is due: nothing is sent, it stays due then.
    out, again = await _deliver(rt, config, req, T0 + timedelta(seconds=5), commit_request=False)
    assert out == []
    assert again == due
    assert len(sink.received) == 1

    out, due2 = await _deliver(rt, config, req, due, commit_request=False)
    assert _types(out) == ["DeliveryAttempted"]
    assert due2 is not None
    assert timedelta(seconds=54) <= due2 - due <= timedelta(seconds=66)

    out, last = await _deliver(rt, config, req, due2, commit_request=False)
    assert _types(out) == ["DeliveryAttempted", "DeliveryDead"]
    assert last is None
    assert len(sink.received) == 3
    assert await _status(rt, "dlv_n") == ("dead", 3, 503)

    async with rt.pool.acquire() as conn:
        await conn.execute(f'SET search_path TO "{rt.settings.database.schema}"')
        (dead,) = await cli_deliveries.select(conn, statuses=dlq.DEAD_LETTERS)
        assert dead.delivery_id == "dlv_n"
        assert dead.notification == "ops"
        (new_id,) = await dlq.replay(conn, rt.settings.prefix, [dead], requested_by="ana")
        replayed = await conn.fetchrow(
            "SELECT id, type, source, time, correlation_id, data::text AS data FROM events"
            " WHERE type = 'io.hookbus.delivery.requested.v1' AND data->>'delivery_id' = $1",
            new_id,
        )
        audit = await conn.fetchval(
            "SELECT data::text FROM events WHERE type = 'io.hookbus.delivery.replayed.v1'"
        )
    assert replayed is not None
    assert replayed["correlation_id"] == req.correlationid  # linked to the original
    assert msgspec.json.decode(audit)["requested_by"] == "ana"
    again_req: ev.Event[ev.DeliveryRequested] = ev.Event(
        id=replayed["id"], source=replayed["source"], type=replayed["type"],
        time=replayed["time"], correlationid=replayed["correlation_id"],
        data=msgspec.json.decode(replayed["data"], type=ev.DeliveryRequested),
    )  # fmt: skip
    assert again_req.data.replay_of == "dlv_n"
    assert again_req.data.message_id == "dlv_n"

    sink.answer(204)
    out, _ = await _deliver(rt, config, again_req, due2 + timedelta(hours=1), commit_request=False)
    assert _types(out) == ["DeliveryAttempted", "DeliverySucceeded"]
    assert len(sink.received) == 4
    assert msgspec.json.decode(sink.received[-1].body)["content"].startswith("ana pushed main")
    assert await _status(rt, new_id) == ("succeeded", 1, 204)


# ------------------------------------------------------------------------ email


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Mailbox:
    """aiosmtpd's handler: keeps each message, or answers DATA with ``refuse``."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refuse: str | None = None
        self.tls_seen: list[bool] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse is not None:
            return self.refuse
        self.tls_seen.append(server.transport.get_extra_info("ssl_object") is not None)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def _smtp(tmp_path: Path, *, implicit: bool) -> tuple[Controller, Mailbox, Path]:
    cert, key = _certificate(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    box = Mailbox()
    port = free_port()
    if implicit:
        controller = Controller(box, hostname="127.0.0.1", port=port, ssl_context=ctx)
    else:
        controller = Controller(
            box, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True
        )
    return controller, box, cert


def _email_channel(port: int, tls: str, ca: Path) -> str:
    return f"""
[notifications.mail]
type = "email"
from = "hookbus@example.com"
to = ["ops@example.com", "dev@example.com"]
subject = "{{{{ repository }}}}: push to {{{{ branch }}}}"
template = "{{{{ sender }}}} pushed to {{{{ branch }}}}.\\nCommit: {{{{ payload.head_commit.message }}}}"
smtp = {{ host = "127.0.0.1", port = {port}, tls = "{tls}", ca_file = "{ca}" }}
"""


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
async def test_an_email_goes_through_a_real_smtp_server_over_tls(
    rt: Runtime, tmp_path: Path, implicit: bool
) -> None:
    controller, box, ca = _smtp(tmp_path, implicit=implicit)
    controller.start()
    try:
        tls = "implicit" if implicit else "starttls"
        config = _config(tmp_path, _email_channel(controller.port, tls, ca))
        out, due = await _deliver(rt, config, _request("mail"))
    finally:
        controller.stop()
    assert _types(out) == ["DeliveryAttempted", "DeliverySucceeded"], out[0].data.error
    assert due is None
    ((sender, rcpts, content),) = box.messages
    assert box.tls_seen == [True]
    assert sender == "hookbus@example.com"
    assert rcpts == ["ops@example.com", "dev@example.com"]
    msg = message_from_bytes(content)
    assert msg["Subject"] == "acme/app: push to main"
    assert msg["X-Hookbus-Delivery"] == "dlv_n"
    assert msg["Message-ID"] == "<dlv_n@hookbus>"
    body = msg.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert (
        body.decode().replace("\r\n", "\n").strip() == "ana pushed to main.\nCommit: fix <b>it</b>"
    )
    assert out[0].data.url == "notification:mail"


async def test_an_email_refused_with_a_5xx_is_final_and_a_4xx_is_retried(
    rt: Runtime, tmp_path: Path
) -> None:
    controller, box, ca = _smtp(tmp_path, implicit=False)
    controller.start()
    try:
        config = _config(tmp_path, _email_channel(controller.port, "starttls", ca))
        box.refuse = "451 4.3.0 try again later"
        out, due = await _deliver(rt, config, _request("mail", "dlv_soft"))
        assert _types(out) == ["DeliveryAttempted"]
        assert due is not None
        assert "451" in (out[0].data.error or "")
        box.refuse = "554 5.7.1 rejected"
        out, due = await _deliver(rt, config, _request("mail", "dlv_hard"))
        assert _types(out) == ["DeliveryAttempted", "DeliveryFailed"]
        assert due is None
        assert "554" in (out[1].data.error or "")
    finally:
        controller.stop()
    assert box.messages == []


async def test_an_unreachable_smtp_server_is_retried(rt: Runtime, tmp_path: Path) -> None:
    cert, _ = _certificate(tmp_path)
    config = _config(tmp_path, _email_channel(free_port(), "starttls", cert))
    out, due = await _deliver(rt, config, _request("mail"))
    assert _types(out) == ["DeliveryAttempted"]
    assert due is not None
    assert out[0].data.error
