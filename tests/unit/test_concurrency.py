"""Concurrency keys and retries of job actions, as the router reads and requests them:
the key is a template rendered per event, bad settings are ConfigErrors naming the key."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_executor import concurrency
from hookbus_router import config as router
from hookbus_router.routing import route

PAYLOAD = b'{"ref": "refs/heads/main", "environment": "production"}'
HOOK = ev.WebhookReceived(
    source="github", kind="github", event_type="push", delivery_id="d-1",
    payload=msgspec.Raw(PAYLOAD), repository="acme/app", branch="main",
)  # fmt: skip


def load(tmp_path: Path, action: str) -> router.RouterConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(f'[[rules]]\nname = "deploy"\nsource = "*"\nactions = [{action}]\n')
    return router.load(path, {})


def requested(config: router.RouterConfig) -> ev.JobRequestedV2:
    event = ev.make_event(HOOK, source="/hookbus/receiver", id="evt_hook")
    (_, request) = route(config.rules, event)
    assert isinstance(request.data, ev.JobRequestedV2)
    return request.data


def test_the_concurrency_key_is_rendered_from_the_event_into_the_request(tmp_path):
    config = load(
        tmp_path,
        '{ kind = "shell", command = ["./deploy.sh"], concurrency = { key ='
        ' "deploy-{{ event.repository }}-{{ payload.environment }}", strategy = "latest" } }',
    )
    req = requested(config)
    assert req.concurrency == ev.Concurrency(key="deploy-acme/app-production", strategy="latest")
    assert concurrency.limited(req) == req.concurrency


def test_a_plain_key_is_used_as_written_and_parallel_limits_nothing(tmp_path):
    config = load(
        tmp_path, '{ kind = "shell", command = ["x"], concurrency = { key = "db-migrations" } }'
    )
    req = requested(config)
    assert req.concurrency == ev.Concurrency(key="db-migrations", strategy="parallel")
    assert concurrency.limited(req) is None


def test_without_concurrency_or_retries_the_request_is_as_before(tmp_path):
    req = requested(load(tmp_path, '{ kind = "shell", command = ["x"] }'))
    assert (req.concurrency, req.retries, req.backoff) == (None, 0, None)


def test_retries_and_backoff_durations_reach_the_request_in_seconds(tmp_path):
    config = load(
        tmp_path,
        '{ kind = "shell", command = ["x"], retries = 3, backoff = { base = "1s", max = "1m" } }',
    )
    req = requested(config)
    assert req.retries == 3
    assert req.backoff == ev.Backoff(base=1.0, max=60.0)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ('concurrency = { key = "k", strategy = "fifo" }', "strategy"),
        ('concurrency = { key = "" }', "key"),
        ('concurrency = { key = "{{ event.repository" }', "concurrency.key"),
        ("retries = -1", "retries"),
        ('retries = 2, backoff = { base = "soon" }', "backoff.base: 'soon' is not a duration"),
        ('retries = 2, backoff = { base = "1m", max = "1s" }', "backoff.max (1 s) is less than"),
    ],
)
def test_bad_concurrency_or_retry_settings_are_config_errors_naming_the_key(
    tmp_path, action, message
):
    with pytest.raises(ConfigError, match="rules") as info:
        load(tmp_path, f'{{ kind = "shell", command = ["x"], {action} }}')
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1s", 1.0), ("1m", 60.0), ("2h", 7200.0), ("1d", 86400.0), (3, 3.0)],
)
def test_durations(text, seconds):
    assert router.seconds(text, "f") == seconds
