"""The operator API against real Postgres and NATS, served by uvicorn on loopback: sign-in
and scopes, pagination over the log, filters, the resources, starting a replay, the live
stream, and the OpenAPI document (which every answer here is checked against)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import msgspec
import pytest

from hookbus_api import tokens
from hookbus_api.config import ApiConfig
from hookbus_api.routes import OPS
from hookbus_cli.up import port_free
from hookbus_common import events as ev
from hookbus_common.eventlog import Pending
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings

from .api_support import api_config, failing_chain, record_chain, serve_api, webhook
from .serving import run_cli
from .test_consumer import until

pytestmark = pytest.mark.integration

ENDPOINTS_TOML = """
[endpoints.ops-chat]
url = "https://chat:hunter2@chat.example.com/hook?key=endpoint-secret"
tenant = "acme"
events = ["push"]
secrets = [{ value = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }]
headers = { Authorization = "Bearer endpoint-header-secret" }

[[rules]]
name = "deploy"
source = "github"
branch = "main"
actions = [
  { kind = "shell", command = ["./deploy.sh", "--token", "arg-secret"], env = { T = "env-secret" } },
  { kind = "webhook", endpoint = "ops-chat" },
]
"""
SECRETS = ("hunter2", "endpoint-secret", "endpoint-header-secret", "arg-secret", "env-secret",
           "whsec_", "header-secret", "url-secret", "s3cr3t-deploy")  # fmt: skip


class Api:
    """A served API, its settings, and a token of each scope."""

    def __init__(self, base: str, config: ApiConfig, rt: Runtime, keys: dict[str, str]) -> None:
        self.base = base
        self.config = config
        self.rt = rt
        self.keys = keys
        self.doc: dict[str, Any] | None = None

    def client(self, scope: str | None = "read") -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {self.keys[scope]}"} if scope else {}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=30)

    async def get(self, path: str, scope: str = "read", **params: Any) -> Any:
        async with self.client(scope) as c:
            r = await c.get(path, params=params)
        assert r.status_code == 200, r.text
        await self.conforms(path, "get", r)
        return r.json()

    async def conforms(self, path: str, method: str, r: httpx.Response) -> None:
        """The answer is what the OpenAPI document says this operation answers."""
        if self.doc is None:
            async with self.client(None) as c:
                self.doc = (await c.get("/api/openapi.json")).json()
        template = _template_for(self.doc, path)
        op = self.doc["paths"][template][method]
        content = op["responses"][str(r.status_code)]["content"]
        (media,) = content
        assert r.headers["content-type"].startswith(media)
        schema = {**content[media]["schema"], "components": self.doc["components"]}
        jsonschema.validate(r.json(), schema, cls=jsonschema.Draft202012Validator)


@contextlib.asynccontextmanager
async def served(rt: Runtime, config: ApiConfig) -> AsyncIterator[Api]:
    """The API served with ``config``, and a token of each scope made for it."""
    keys: dict[str, str] = {}
    async with rt.pool.acquire() as conn:
        for scope in tokens.SCOPES:
            _, keys[scope] = await tokens.create(
                conn, rt.settings.prefix, name=f"{scope}-bot", scope=scope, by="test"
            )
    async with serve_api(config) as base:
        yield Api(base, config, rt, keys)


def _template_for(doc: dict[str, Any], path: str) -> str:
    for template in doc["paths"]:
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            return str(template)
    raise AssertionError(f"{path} is not in the OpenAPI document")


@pytest.fixture
async def api(settings: Settings, rt: Runtime, tmp_path: Path) -> AsyncIterator[Api]:
    async with served(rt, api_config(settings, tmp_path, ENDPOINTS_TOML)) as served_api:
        yield served_api


def _is_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(f"/{code}")
    assert body["title"]
    return body


# ----------------------------------------------------------------------- sign-in


async def test_no_token_and_a_wrong_token_get_the_same_401_problem(api: Api) -> None:
    answers = []
    for headers in (
        {},
        {"authorization": "Bearer hbk_not-a-real-token"},
        {"authorization": "Bearer " + api.keys["read"][:-2] + "xx"},
        {"authorization": "Basic " + api.keys["read"]},
        {"authorization": "Bearer hbk_" + "A" * 43},
        {"authorization": "bearer"},
    ):
        async with httpx.AsyncClient(base_url=api.base) as c:
            r = await c.get("/api/events", headers=headers)
        _is_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        answers.append(r.content)
    assert len(set(answers)) == 1, "every failed sign-in must look alike"


async def test_a_revoked_token_signs_no_one_in(api: Api) -> None:
    async with api.rt.pool.acquire() as conn:
        _, key = await tokens.create(conn, api.config.prefix, name="temp", scope="admin", by="t")
        async with httpx.AsyncClient(base_url=api.base) as c:
            ok = await c.get("/api/whoami", headers={"authorization": f"Bearer {key}"})
            assert ok.json()["name"] == "temp"
            await tokens.revoke(conn, api.config.prefix, "temp", by="t")
            r = await c.get("/api/whoami", headers={"authorization": f"Bearer {key}"})
    _is_problem(r, 401, "unauthorized")


async def test_scopes_read_operate_admin(api: Api) -> None:
    body = {"correlation": "evt_none", "dry_run": True}
    async with api.client("read") as c:
        assert (await c.get("/api/events")).status_code == 200
        denied = _is_problem(await c.post("/api/replays", json=body), 403, "forbidden")
        assert "operate" in denied["detail"]
        _is_problem(await c.get("/api/tokens"), 403, "forbidden")
    async with api.client("operate") as c:
        r = await c.post("/api/replays", json=body)
        assert r.status_code == 202, r.text
        assert r.json()["selected"] == 0
        _is_problem(await c.get("/api/tokens"), 403, "forbidden")
    listed = await api.get("/api/tokens", "admin")
    names = {t["name"] for t in listed["items"]}
    assert {"read-bot", "operate-bot", "admin-bot"} <= names
    assert all(set(t) <= set(tokens.ApiToken.__struct_fields__) for t in listed["items"])
    assert not any(k in str(listed) for k in api.keys.values())


async def test_unknown_paths_and_methods_are_problems(api: Api) -> None:
    async with api.client() as c:
        _is_problem(await c.get("/api/nosuch"), 404, "not_found")
        _is_problem(await c.get("/api/events/evt_nosuch"), 404, "not_found")
        _is_problem(await c.delete("/api/events"), 405, "method_not_allowed")
        _is_problem(await c.get("/api/events", params={"after": "x"}), 400, "invalid")
        _is_problem(await c.get("/api/events", params={"after": 1, "before": 2}), 400, "invalid")


# -------------------------------------------------------------------- pagination


async def test_pages_hold_every_event_exactly_once(api: Api) -> None:
    hooks = [webhook("github" if n % 3 else "gitlab", n) for n in range(10_000)]
    for i in range(0, len(hooks), 1000):
        await api.rt.outbox.commit([Pending(h) for h in hooks[i : i + 1000]])
    async with api.rt.pool.acquire() as conn:
        expected = [r["id"] for r in await conn.fetch("SELECT id FROM events ORDER BY seq")]
    assert len(expected) >= 10_000

    seen: list[str] = []
    after = 0
    pages = 0
    while True:
        page = await api.get("/api/events", after=after, limit=237)
        if not page["items"]:
            assert page["next_after"] == after  # follow from here as the log grows
            break
        seqs = [e["seq"] for e in page["items"]]
        assert seqs == sorted(seqs)
        assert seqs[0] > after
        seen += [e["id"] for e in page["items"]]
        after = page["next_after"]
        pages += 1
    assert seen == expected
    assert pages == -(-len(expected) // 237)

    # Newest first, with `before`, reaches the same events the other way round.
    back: list[str] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = await api.get("/api/events", **params)
        back += [e["id"] for e in page["items"]]
        if page["next_before"] is None:
            break
        params = {"limit": 1000, "before": page["next_before"]}
    assert back == expected[::-1]

    # A page is capped at api.max_page.
    capped = await api.get("/api/events", after=0, limit=50_000)
    assert len(capped["items"]) == api.config.api.max_page


# ----------------------------------------------------------------------- filters


async def test_filters(api: Api) -> None:
    old = msgspec.structs.replace(
        webhook("github", 100, tenant="globex"), time=datetime.now(UTC) - timedelta(days=3)
    )
    chain = failing_chain(webhook("github", 1))
    other = failing_chain(webhook("gitlab", 2, tenant="globex"))
    await api.rt.outbox.commit_and_publish([old])
    await record_chain(api.rt, chain)
    await record_chain(api.rt, other)

    async def ids(**params: Any) -> set[str]:
        return {e["id"] for e in (await api.get("/api/events", **params))["items"]}

    chain_ids = {e.id for e in chain.events}
    other_ids = {e.id for e in other.events}
    assert await ids(correlation=chain.hook.id) == chain_ids
    assert await ids(source="gitlab") == other_ids
    assert await ids(source="github") == chain_ids | {old.id}
    assert await ids(tenant="globex") == other_ids | {old.id}
    assert await ids(type="job.failed") == {chain.events[5].id, other.events[5].id}
    assert await ids(type="delivery.*", tenant="acme") == {
        e.id for e in chain.events if e.type.startswith("io.hookbus.delivery.")
    }
    recent = await ids(since="1d")  # the chains, and the fixture's tokens being made
    assert chain_ids | other_ids <= recent
    assert old.id not in recent
    assert await ids(until=(datetime.now(UTC) - timedelta(days=1)).isoformat()) == {old.id}
    assert await ids(event="pu*", source="gitlab") == other_ids
    async with api.client() as c:
        bad = _is_problem(await c.get("/api/events", params={"since": "yesterday"}), 400, "invalid")
    assert "yesterday" in bad["detail"]


# --------------------------------------------------------------------- resources


async def test_one_event_with_its_raw_body_and_headers(api: Api) -> None:
    chain = failing_chain(webhook("github", 7))
    await record_chain(api.rt, chain)
    d = await api.get(f"/api/events/{chain.hook.id}")
    assert d["raw_body"] == bytes(chain.hook.data.payload).decode()
    assert d["raw_body_bytes"] == len(bytes(chain.hook.data.payload))
    assert d["headers"]["x-github-event"] == "push"
    assert d["event"]["data"]["payload"] == {"ref": "refs/heads/main", "n": 7}

    request = next(e for e in chain.events if e.type == ev.DeliveryRequested.TYPE)
    shown = await api.get(f"/api/events/{request.id}")
    assert shown["headers"] == {"Authorization": "[redacted]", "X-Team": "ops"}
    assert shown["raw_body"] is None
    jreq = next(e for e in chain.events if e.type == ev.JobRequestedV2.TYPE)
    job_event = await api.get(f"/api/events/{jreq.id}")
    assert job_event["event"]["data"]["spec"]["env"] == {"DEPLOY_TOKEN": "[redacted]"}
    assert "s3cr3t" not in str(job_event)


async def test_chain_jobs_deliveries_and_dead_letters(api: Api) -> None:
    chain = failing_chain(webhook("github", 8))
    await record_chain(api.rt, chain)
    dead_letter = ev.make_event(
        ev.MessageDeadLettered(
            service="router", bus_subject=f"{api.config.prefix}.webhook.received.x.y",
            stream_sequence=9, deliveries=10, error="PermanentError: bad", message="{}",
        ),
        source="/hookbus/router",
    )  # fmt: skip
    await api.rt.outbox.commit_and_publish([dead_letter])

    c = await api.get(f"/api/chains/{chain.events[3].id}")
    assert [e["id"] for e in c["events"]] == [e.id for e in chain.events]
    assert c["correlationid"] == chain.hook.id
    routed = c["events"][1]["data"]
    assert [x["rule"] for x in routed["evaluations"]] == ["deploy", "notify", "docs"]

    jobs = await api.get("/api/jobs", status="failed")
    assert [j["job_id"] for j in jobs["items"]] == [chain.job_id]
    job = await api.get(f"/api/jobs/{chain.job_id}")
    assert job["job"]["status"] == "failed"
    assert job["job"]["exit_code"] == 3
    assert job["output"] == "pulling acme/app\nerror: disk full\n"
    assert [short(e["type"]) for e in job["events"]] == [
        "job.requested.v2", "job.started.v1", "job.failed.v1",
    ]  # fmt: skip

    dl = await api.get("/api/deliveries", status="dead")
    assert [d["delivery_id"] for d in dl["items"]] == [chain.delivery_id]
    assert dl["items"][0]["url"] == "https://hooks.example.com/in?token=***"
    one = await api.get(f"/api/deliveries/{chain.delivery_id}")
    assert [(a["attempt"], a["status_code"]) for a in one["attempts"]] == [(1, 503), (2, 503)]
    assert one["attempts"][0]["response_body"] == "upstream down"

    dead = await api.get("/api/dead-letters")
    assert [d["delivery_id"] for d in dead["deliveries"]] == [chain.delivery_id]
    assert [m["id"] for m in dead["messages"]] == [dead_letter.id]

    text = str([c, jobs, job, dl, one, dead])
    assert not [s for s in SECRETS if s in text]


def short(type_: str) -> str:
    return type_.removeprefix("io.hookbus.")


async def test_endpoints_rules_and_partners_show_no_secrets(api: Api) -> None:
    endpoints = await api.get("/api/endpoints")
    (ep,) = endpoints["items"]
    assert ep["name"] == "ops-chat"
    assert ep["url"] == "https://***@chat.example.com/hook?key=***"
    assert ep["signed"] is True
    assert ep["header_names"] == ["Authorization"]
    rules = await api.get("/api/rules")
    (rule,) = rules["items"]
    assert rule["name"] == "deploy"
    assert [(a["kind"], a["target"]) for a in rule["actions"]] == [
        ("shell", "./deploy.sh"), ("webhook", "endpoint ops-chat"),
    ]  # fmt: skip
    async with api.rt.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO partners (partner_id, name, tenant, status, validation, token_id,"
            " created_at, modified_at, last_seq) VALUES ('ptn_1', 'Acme', 'acme', 'ACTIVE',"
            " '{}', 'tok_secretid', now(), now(), 1)"
        )
    partners = await api.get("/api/partners")
    assert [p["name"] for p in partners] == ["Acme"]
    assert "token" not in str(partners)
    assert not [s for s in SECRETS if s in str([endpoints, rules])]


async def test_overview(api: Api) -> None:
    chain = failing_chain(webhook("github", 9))
    await record_chain(api.rt, chain)
    await api.rt.bus.ensure_consumer(
        f"{api.config.prefix}-router", [f"{api.config.prefix}.webhook.received.>"]
    )
    o = await api.get("/api/overview")
    assert o["failures_24h"]["jobs_failed"] == 1
    assert o["failures_24h"]["deliveries_dead"] == 1
    assert o["jobs_by_status"] == {"failed": 1}
    assert o["deliveries_by_status"] == {"dead": 1}
    rates = {r["type"]: r for r in o["rates"]}
    assert rates["webhook.received"]["last_5m"] == 1
    lag = {c["service"]: c for c in o["consumers"]}
    assert lag["router"]["found"] is True
    assert lag["router"]["pending"] == 1  # the webhook, not yet routed
    assert lag["executor"]["found"] is False


# ----------------------------------------------------------------------- replays


async def test_starting_a_replay_records_who_and_runs_it(api: Api) -> None:
    chain = failing_chain(webhook("github", 11))
    await record_chain(api.rt, chain)
    async with api.client("operate") as c:
        r = await c.post(
            "/api/replays",
            json={"correlation": chain.hook.id, "dead_deliveries": True, "reason": "endpoint back"},
        )
    assert r.status_code == 202, r.text
    await api.conforms("/api/replays", "post", r)
    started = r.json()
    assert started["selected"] == 1
    replay_id = started["replay"]["replay_id"]

    async def finished() -> bool:
        job = await api.get(f"/api/replays/{replay_id}")
        return bool(job["status"] == "finished")

    await until(finished, timeout=30)
    async with api.rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT type, data::text AS data FROM events WHERE type = ANY($1::text[]) ORDER BY seq",
            [ev.ReplayStarted.TYPE, ev.WebhookReplayed.TYPE, ev.ReplayFinished.TYPE],
        )
    assert [r["type"] for r in rows] == [
        ev.ReplayStarted.TYPE, ev.WebhookReplayed.TYPE, ev.ReplayFinished.TYPE,
    ]  # fmt: skip
    audit = msgspec.json.decode(rows[0]["data"], type=ev.ReplayStarted)
    assert audit.requested_by == "api:operate-bot"
    assert audit.reason == "endpoint back"
    replayed = msgspec.json.decode(rows[1]["data"], type=ev.WebhookReplayed)
    assert replayed.replay_of == chain.hook.id
    listed = await api.get("/api/replays")
    assert [j["replay_id"] for j in listed["items"]] == [replay_id]

    async with api.client("operate") as c:
        bad = await c.post("/api/replays", json={"since": "soon"})
        _is_problem(bad, 400, "invalid")
        unknown = await c.post("/api/replays", json={"sinse": "2h"})
        _is_problem(unknown, 400, "invalid")
        assert "sinse" in unknown.json()["detail"]


# -------------------------------------------------------------------------- live


async def test_live_streams_events_as_they_are_published(api: Api) -> None:
    hook = webhook("github", 12)
    async with (
        api.client() as c,
        c.stream("GET", "/api/live", headers={"accept": "text/event-stream"}) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith("retry:")
        # Published only once the stream's subscription exists (its first frame came).
        await api.rt.outbox.commit_and_publish([hook])
        async with asyncio.timeout(20):
            async for line in lines:
                if line.startswith("data: "):
                    got = msgspec.json.decode(line[6:])
                    if got["id"] == hook.id:
                        break
    assert got["type"] == ev.WebhookReceived.TYPE
    assert got["bus_subject"] == f"{api.config.prefix}.webhook.received.github.push"
    async with httpx.AsyncClient(base_url=api.base) as anon:
        _is_problem(await anon.get("/api/live"), 401, "unauthorized")


# ----------------------------------------------------------------------- openapi


async def test_the_openapi_document_lists_every_route(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base) as c:
        r = await c.get("/api/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == {(op.method, op.path) for op in OPS}
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)  # raises, naming the fault
        assert name
    refs = set(re.findall(r'"\$ref": ?"#/components/schemas/([^"]+)"', r.text))
    assert refs <= set(doc["components"]["schemas"])
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"\{([^}]+)\}", path)), (method, path)
            if op["security"]:
                assert "401" in op["responses"], (method, path)


# -------------------------------------------------------------------------- CLI


async def test_tokens_cli_creates_lists_and_revokes(api: Api, tmp_path: Path) -> None:
    config = tmp_path / "cli.toml"
    config.write_text(
        f'prefix = "{api.config.prefix}"\n[database]\nurl = "{api.config.database.url}"\n'
        f'schema = "{api.config.database.schema}"\n'
    )
    code, out, err = await run_cli(
        config, "tokens", "create", "--name", "carol", "--scope", "operate", "--by", "root"
    )
    assert code == 0, err
    (key,) = re.findall(r"hbk_[A-Za-z0-9_-]{43}", out)
    async with httpx.AsyncClient(base_url=api.base) as c:
        who = await c.get("/api/whoami", headers={"authorization": f"Bearer {key}"})
    assert who.json()["scope"] == "operate"

    code, out, _ = await run_cli(config, "tokens", "list")
    assert code == 0
    assert "carol" in out
    assert key not in out
    code, _, err = await run_cli(config, "tokens", "create", "--name", "carol")
    assert code == 1
    assert "exists" in err
    code, out, _ = await run_cli(config, "tokens", "revoke", "carol", "--by", "root")
    assert code == 0, out
    async with httpx.AsyncClient(base_url=api.base) as c:
        gone = await c.get("/api/whoami", headers={"authorization": f"Bearer {key}"})
    _is_problem(gone, 401, "unauthorized")

    async with api.rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT type, data::text AS data FROM events WHERE type LIKE 'io.hookbus.apitoken.%'"
            " AND data->>'name' = 'carol' ORDER BY seq"
        )
        stored = await conn.fetchval("SELECT count(*) FROM api_tokens WHERE name = 'carol'")
    assert [r["type"] for r in rows] == [ev.ApiTokenCreated.TYPE, ev.ApiTokenRevoked.TYPE]
    created = msgspec.json.decode(rows[0]["data"], type=ev.ApiTokenCreated)
    assert (created.by, created.scope) == ("root", "operate")
    assert all(key not in r["data"] and key[4:20] not in r["data"] for r in rows)
    assert stored == 1


def test_up_leaves_the_api_out_when_its_port_is_taken() -> None:
    """`hookbus up` checks the API's port first: a busy one means no API, not no system."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert not port_free("127.0.0.1", busy)
    assert port_free("127.0.0.1", busy)


async def test_hookbus_api_runs_as_its_own_process(settings: Settings, tmp_path: Path) -> None:
    """`hookbus-api --config FILE`: a bad setting exits 2 naming it; a good file serves the
    API, the dashboard and the health endpoints on the API's port."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[api]\nport = -1\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hookbus_api", "--config", str(bad),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"config error" in err
    assert b"api.port" in err

    config = api_config(settings, tmp_path)
    base = f"http://127.0.0.1:{config.api.port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hookbus_api", "--config", str(tmp_path / "hookbus.toml"),
        env={**os.environ, "HOOKBUS_LOG__FORMAT": "text"},
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as c:

            async def ready() -> bool:
                try:
                    return (await c.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(ready, timeout=30)
            page = await c.get("/")
            assert page.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in page.headers["content-security-policy"]
            assert '<script type="module" src="/static/app.js">' in page.text
            js = await c.get("/static/app.js")
            assert js.headers["content-type"].startswith("text/javascript")
            assert (await c.get("/static/../app.py")).status_code == 404
            assert "hookbus_api_requests_total" in (await c.get("/metrics")).text
            health = await c.get("/api/health")
            assert health.json() == {"status": "ok", "checks": {"nats": True, "postgres": True}}
    finally:
        proc.terminate()
        # uvicorn stops cleanly, then ends with the signal it was sent.
        assert await asyncio.wait_for(proc.wait(), 20) in (0, -signal.SIGTERM)
