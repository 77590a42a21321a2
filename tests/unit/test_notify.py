"""Notifications without I/O: templates rendered in the sandbox, what each channel type
sends, and config errors that name the key."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from hookbus_common.errors import ConfigError
from hookbus_common.events import DeliveryRequested, WebhookReceived, make_event
from hookbus_common.settings import Secret
from hookbus_dispatcher import config as dispatcher
from hookbus_dispatcher import notify, templates
from hookbus_dispatcher.templates import TemplateFailed
from hookbus_router import config as router
from hookbus_router.routing import route

CONTEXT = {"HOOKBUS_SOURCE": "github", "HOOKBUS_BRANCH": "main", "HOOKBUS_SENDER": "ana"}
PAYLOAD = b'{"ref": "refs/heads/main", "commits": [{"id": "a1"}, {"id": "b2"}]}'


def _values(**extra: str) -> dict[str, object]:
    return templates.variables(CONTEXT, PAYLOAD, rule="deploy", **extra)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ sender }} pushed {{ branch }}", "ana pushed main"),
        ("{{ payload.ref }}", "refs/heads/main"),
        ("{{ payload.commits | length }} commits", "2 commits"),
        ("{% for c in payload.commits %}{{ c.id }} {% endfor %}", "a1 b2 "),
        ("{{ tag | default('no tag') }}", "no tag"),
        ("rule {{ rule }}", "rule deploy"),
        ("<{{ payload.ref }}>", "<refs/heads/main>"),  # not HTML-escaped
    ],
)
def test_templates_render_the_event(source: str, expected: str) -> None:
    assert templates.render(source, _values()) == expected


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("{{ tag }}", "'tag' is undefined"),
        ("{{ payload.nope.deeper }}", "has no attribute 'nope'"),
        ("{{ ''.__class__.__mro__ }}", "template"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ],
)
def test_a_template_that_cannot_render_says_why(source: str, why: str) -> None:
    with pytest.raises(TemplateFailed) as err:
        templates.render(source, _values())
    assert why in str(err.value)


def test_the_sandbox_keeps_templates_away_from_python_internals() -> None:
    with pytest.raises(TemplateFailed, match="template"):
        templates.render("{{ payload.__class__.__subclasses__() }}", _values())


def test_a_payload_that_is_not_json_is_its_text() -> None:
    values = templates.variables({}, b"plain text")
    assert values["payload"] == "plain text"


def _req(**fields: object) -> DeliveryRequested:
    return DeliveryRequested(
        delivery_id="dlv_1", rule="deploy", webhook_id="evt_1", url="", event_type="push",
        body=msgspec.Raw(PAYLOAD), notification="ops", context=CONTEXT, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def _channel(kind: str, **fields: object) -> dispatcher.Notification:
    url = None if kind == "email" else Secret(value="https://hooks.example.com/x")
    return dispatcher.Notification(type=kind, url=url, **fields)  # type: ignore[arg-type]


def test_discord_content_is_cut_to_its_limit_and_pings_nobody() -> None:
    body = msgspec.json.decode(notify.body(_req(), "ops", _channel("discord"), "x" * 5000))
    assert len(body["content"]) == notify.DISCORD_LIMIT
    assert body["allowed_mentions"] == {"parse": []}


def test_the_default_template_describes_the_push() -> None:
    text, _ = notify.render(_req(), "ops", _channel("slack"))
    assert text == "github push@main (rule deploy)"


def test_errors_are_cleaned_of_the_channel_url() -> None:
    n = _channel("slack")
    cleaned = notify.clean("cannot reach https://hooks.example.com/x (and /x)", n, "ops")
    assert cleaned is not None
    assert "hooks.example.com/x" not in cleaned
    assert "<notification:ops>" in cleaned


# ----------------------------------------------------------------------- config


def _load(tmp_path: Path, text: str, **env: str) -> dispatcher.DispatcherConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return dispatcher.load(path, env)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('type = "slack"', 'notifications.ops.url: type = "slack" needs url'),
        ('type = "teams"\nurl = { env = "U" }', "notifications.ops.type"),
        ('type = "email"\nto = ["a@b.c"]\nfrom = "x@y.z"', "notifications.ops.smtp: "),
        (
            'type = "email"\nsmtp = { host = "mail" }\nfrom = "x@y.z"',
            'notifications.ops.to: type = "email" needs to',
        ),
        (
            'type = "discord"\nurl = { env = "U" }\nto = ["a@b.c"]',
            'notifications.ops.to: applies to type = "email" only',
        ),
        (
            'type = "slack"\nurl = { env = "U" }\ntemplate = "{{ oops"',
            "notifications.ops.template: template error on line 1",
        ),
        ('type = "slack"\nurl = { env = "MISSING" }', "notifications.ops.url: environment"),
        ('type = "slack"\nurl = { env = "BAD" }', "notifications.ops.url: must be an absolute"),
        (
            'type = "slack"\nurl = { env = "U" }\nheaders = { x = "y" }',
            'notifications.ops.headers: applies to type = "json" only',
        ),
    ],
)
def test_bad_channels_stop_the_dispatcher_naming_the_key(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, f"[notifications.ops]\n{table}\n", U="https://h.example.com/s", BAD="nope")
    assert message in str(err.value)
    assert "h.example.com/s" not in str(err.value)


def test_a_channel_url_is_read_from_its_secret_and_never_shown(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        '[notifications.ops]\ntype = "discord"\nurl = { env = "U" }\n',
        U="https://discord.example.com/api/webhooks/1/token",
    )
    n = config.notifications["ops"]
    assert n.url is not None
    assert n.url.value == "https://discord.example.com/api/webhooks/1/token"
    assert "token" not in repr(n)


def test_a_rule_notifies_a_channel_by_name_and_the_router_checks_the_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hookbus.toml"
    text = """
[notifications.ops-discord]
type = "discord"
url = { env = "OPS_DISCORD" }

[[rules]]
name = "deploy"
actions = [{ kind = "notify", channel = "%s" }]
"""
    path.write_text(text % "ops-discord")
    config = router.load(path, {})
    assert config.notification_names == ["ops-discord"]
    (action,) = config.rules[0].actions
    assert isinstance(action, router.NotifyAction)
    path.write_text(text % "ops-slack")
    with pytest.raises(ConfigError, match=r"rules\[0\]\.actions\[0\].*channel: no notification"):
        router.load(path, {})


def test_the_router_requests_a_notification_that_renders_in_the_dispatcher() -> None:
    hook = make_event(
        WebhookReceived(
            source="github", kind="github", event_type="push", delivery_id="gh-1",
            payload=msgspec.Raw(PAYLOAD), repository="acme/app", branch="main", sender="ana",
        ),
        source="/hookbus/receiver",
        tenant="acme",
    )  # fmt: skip
    actions = [
        router.ShellAction(command=["./deploy.sh"]),
        router.NotifyAction(channel="ops-discord"),
    ]
    _, _job, request = route([router.Rule(name="deploy", actions=actions)], hook)
    data = request.data
    assert isinstance(data, DeliveryRequested)
    assert data.notification == "ops-discord"
    assert (data.url, data.endpoint, data.tenant) == ("", None, "acme")
    assert data.delivery_id.startswith("dlv_")
    assert bytes(data.body) == PAYLOAD
    n = dispatcher.Notification(
        type="discord",
        url=Secret(value="https://discord.example.com/x"),
        template="{{ sender }} pushed {{ branch }} of {{ repository }}: {{ rule }} ran",
    )
    text, _ = notify.render(data, "ops-discord", n)
    assert text == "ana pushed main of acme/app: deploy ran"
