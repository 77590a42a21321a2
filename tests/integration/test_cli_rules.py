"""``hookbus rules test`` against a real event log: one webhook, a time range, JSON, a
proposed rules file and a comparison; nothing is written."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings

from .test_cli import clean_env, hookbus

pytestmark = pytest.mark.integration

CONFIG = """
[sources.github]
kind = "github"
secrets = [{ value = "s" }]

[[rules]]
name = "deploy-prod"
source = "github"
event = "push"
when = { all = [
  { path = "payload.ref", equals = "refs/heads/main" },
  { not = { path = "payload.sender.login", glob = "*[bot]" } },
] }
actions = [{ kind = "shell", command = ["./deploy.sh", "{{ payload.after[:7] }}"] }]

[[rules]]
name = "notify"
event = "push"
actions = [{ kind = "webhook", url = "https://chat.example.com/{{ payload.room }}" }]
"""

PROPOSED = """
[[rules]]
name = "deploy-prod"
source = "github"
event = "push"
when = { path = "payload.ref", glob = "refs/heads/*" }
actions = [{ kind = "shell", command = ["./deploy.sh"] }]
"""


def push(ref: str, login: str, at: datetime) -> ev.Event[ev.WebhookReceived]:
    payload = {"ref": ref, "after": "c0ffee1234", "sender": {"login": login}}
    data = ev.WebhookReceived(
        source="github",
        kind="github",
        event_type="push",
        repository="acme/app",
        branch=ref.removeprefix("refs/heads/"),
        payload=msgspec.Raw(msgspec.json.encode(payload)),
    )
    event = ev.make_event(data, source="/hookbus/receiver/github")
    return msgspec.structs.replace(event, time=at)


@pytest.fixture
async def recorded(rt: Runtime) -> list[ev.Event[ev.WebhookReceived]]:
    base = datetime(2026, 11, 22, 7, 0, tzinfo=UTC)
    hooks = [
        push("refs/heads/main", "alice", base),
        push("refs/heads/dev", "alice", base + timedelta(minutes=1)),
        push("refs/heads/main", "renovate[bot]", base + timedelta(minutes=2)),
        push("refs/heads/main", "bob", base + timedelta(days=1)),
    ]
    await rt.outbox.commit(hooks)
    return hooks


def env_for(settings: Settings) -> dict[str, str]:
    return clean_env(
        HOOKBUS_DATABASE__URL=settings.database.url,
        HOOKBUS_DATABASE__SCHEMA=settings.database.schema,
        HOOKBUS_PREFIX=settings.prefix,
    )


async def count(rt: Runtime) -> int:
    async with rt.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM events"))


async def test_one_event_shows_each_rules_decision_and_writes_nothing(
    rt: Runtime, settings: Settings, recorded, tmp_path: Path
) -> None:
    (tmp_path / "hookbus.toml").write_text(CONFIG)
    before = await count(rt)
    bot = recorded[2]

    out = hookbus("rules", "test", "--event", bot.id, env=env_for(settings), cwd=tmp_path)

    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("rules ")
    assert bot.id in lines[1]
    assert "github push acme/app@main" in lines[1]
    assert any(
        "- deploy-prod" in line
        and 'when.all[1]: payload.sender.login not glob; saw "renovate[bot]"' in line
        for line in lines
    )
    assert any("! notify" in line and "actions[0].url" in line for line in lines)
    assert lines[-1] == "1 webhook, 1 matched by a rule"
    assert await count(rt) == before


async def test_a_time_range_as_json(
    rt: Runtime, settings: Settings, recorded, tmp_path: Path
) -> None:
    (tmp_path / "hookbus.toml").write_text(CONFIG)

    out = hookbus(
        "rules", "test", "--since", "2026-11-22T07:00:00Z", "--until", "2026-11-22T08:00:00Z",
        "--json", env=env_for(settings), cwd=tmp_path,
    )  # fmt: skip

    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["event_id"] for r in rows] == [h.id for h in recorded[:3]]
    first = rows[0]
    decided = {e["rule"]: e["matched"] for e in first["decision"]["evaluations"]}
    assert decided == {"deploy-prod": True, "notify": True}
    assert first["decision"]["requests"]["deploy-prod"] == ["shell: ./deploy.sh c0ffee1"]
    assert [s["field"] for s in first["decision"]["skipped"]] == ["actions[0].url"]
    dev = {e["rule"]: e for e in rows[1]["decision"]["evaluations"]}["deploy-prod"]
    assert (dev["failed"], dev["path"], dev["operator"], dev["saw"]) == (
        "when.all[0]",
        "payload.ref",
        "equals",
        '"refs/heads/dev"',
    )
    assert len(first["decision"]["version"]) == 12


async def test_a_proposed_rules_file_compared_with_the_config(
    rt: Runtime, settings: Settings, recorded, tmp_path: Path
) -> None:
    (tmp_path / "hookbus.toml").write_text(CONFIG)
    (tmp_path / "proposed.toml").write_text(PROPOSED)

    out = hookbus(
        "rules", "test", "--since", "2026-11-22", "--until", "2026-11-23",
        "--rules", "proposed.toml", "--compare", "hookbus.toml",
        env=env_for(settings), cwd=tmp_path,
    )  # fmt: skip

    assert out.returncode == 0, out.stderr
    text = out.stdout
    # dev and the bot's push now match deploy-prod; alice's main push is unchanged, and
    # notify is gone from the proposed rules.
    assert recorded[1].id in text
    assert recorded[2].id in text
    assert "was: no: when.all[0]: payload.ref equals" in text
    assert "now: matched" in text
    assert "now: (no such rule)" in text
    assert text.splitlines()[-1] == "3 webhooks, 3 decided differently"


async def test_a_bad_proposed_file_is_a_config_error_and_an_unknown_event_is_said(
    rt: Runtime, settings: Settings, recorded, tmp_path: Path
) -> None:
    (tmp_path / "hookbus.toml").write_text(CONFIG)
    (tmp_path / "bad.toml").write_text(PROPOSED.replace("glob", "globb"))

    bad = hookbus(
        "rules", "test", "--event", recorded[0].id, "--rules", "bad.toml",
        env=env_for(settings), cwd=tmp_path,
    )  # fmt: skip
    missing = hookbus("rules", "test", "--event", "evt_nope", env=env_for(settings), cwd=tmp_path)
    neither = hookbus("rules", "test", env=env_for(settings), cwd=tmp_path)

    assert bad.returncode == 1
    assert 'rules[0] "deploy-prod": when: unknown operator "globb" (did you mean "glob"?)' in (
        bad.stderr
    )
    assert missing.returncode == 1
    assert "no webhook with id evt_nope" in missing.stderr
    assert neither.returncode == 2
