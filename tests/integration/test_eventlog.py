"""The event log against a real Postgres: idempotent appends, append-only, migrations."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest

from hookbus_common import db, eventlog, readmodels
from hookbus_common import events as ev
from hookbus_common.eventlog import Pending
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings

pytestmark = pytest.mark.integration


def _hook(delivery: str = "d-1") -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source="gh", kind="github", event_type="push", delivery_id=delivery,
        payload=msgspec.Raw(b'{"a": 1}'),
    )  # fmt: skip
    return ev.make_event(data, source="/test")


async def test_append_is_idempotent_on_event_id(rt: Runtime) -> None:
    e = _hook()
    first, _ = await rt.outbox.commit([e])
    again, known = await rt.outbox.commit([e])
    assert [a.event.id for a in first] == [e.id]
    assert again == []
    assert [k.event.id for k in known] == [e.id]
    async with rt.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE id = $1", e.id) == 1


async def test_dedupe_key_records_a_delivery_once(rt: Runtime) -> None:
    a, b = _hook("same"), _hook("same")
    inserted, known = await rt.outbox.commit(
        [Pending(a, "gh:same", b'{"a": 1}'), Pending(b, "gh:same", b'{"a": 1}')]
    )
    assert [i.event.id for i in inserted] == [a.id]
    assert [k.event.id for k in known] == [b.id]
    async with rt.pool.acquire() as conn:
        assert await eventlog.ids_by_dedupe_key(conn, ["gh:same"]) == {"gh:same": a.id}
        assert await eventlog.raw_body(conn, a.id) == b'{"a": 1}'


async def test_only_events_with_a_delivery_key_are_in_its_index(rt: Runtime) -> None:
    # Derived events carry no delivery key: the unique index holds only the keys (a
    # webhook recorded once), and a lookup by key is still an index scan.
    keyed = _hook("k-1")
    derived = [_hook(f"n-{i}") for i in range(3)]
    await rt.outbox.commit([Pending(keyed, "gh:k-1", b'{"a": 1}'), *derived])
    _, known = await rt.outbox.commit([Pending(_hook("k-1"), "gh:k-1", b'{"a": 1}')])
    assert len(known) == 1
    async with rt.pool.acquire() as conn:
        counted = await conn.fetchval("SELECT count(*) FROM events WHERE dedupe_key IS NULL")
        assert counted == 3
        await conn.execute("ANALYZE events")
        indexed = await conn.fetchval(
            "SELECT reltuples FROM pg_class WHERE relname = 'events_dedupe_key'"
            " AND relnamespace = current_schema()::regnamespace"
        )
        assert indexed == 1
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            rows = await conn.fetch(
                "EXPLAIN SELECT dedupe_key, id FROM events WHERE dedupe_key = ANY($1::text[])",
                ["gh:k-1"],
            )
        plan = "\n".join(r[0] for r in rows)
        assert "events_dedupe_key" in plan, plan
        # The outbox takes no lock on the log's rows: no foreign key to check.
        fks = await conn.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
            " AND conrelid = 'outbox'::regclass"
        )
        assert fks == 0


def _hook_of(body: bytes, payload: bytes | None = None) -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source="gh", kind="github", event_type="push", payload=msgspec.Raw(payload or body)
    )
    return ev.make_event(data, source="/test")


@pytest.mark.parametrize(
    ("body", "payload", "kept_apart"),
    [
        # Plain JSON, as sent: kept once, in data.
        (b'{"a": 1,  "b" : [1, 2.50, "\\u00e9"] }', None, False),
        (b'[{"deep": [[[["x"]]]]}]', None, False),
        # Whitespace around the JSON, a form, text: raw_body keeps the exact bytes.
        (b'  {"a": 1}\n', b'{"a": 1}', True),
        (b"a=1&b=%7B%7D", b'{"a": "1", "b": "{}"}', True),
        (b'\xef\xbb\xbf{"a": 1}', b'{"a": 1}', True),
    ],
)
async def test_a_body_is_stored_once_and_read_back_exactly(
    rt: Runtime, body: bytes, payload: bytes | None, kept_apart: bool
) -> None:
    e = _hook_of(body, payload)
    await rt.outbox.commit([Pending(e, None, body)])
    async with rt.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT raw_body FROM events WHERE id = $1", e.id)
        assert (stored is not None) is kept_apart
        assert await eventlog.raw_body(conn, e.id) == body
        # The query docs/operations.md gives people, in SQL alone.
        in_sql = await conn.fetchval(
            "SELECT coalesce(raw_body, convert_to((data -> 'payload')::text, 'UTF8'))"
            " FROM events WHERE id = $1",
            e.id,
        )
        assert bytes(in_sql) == body


async def test_only_inbound_webhooks_have_a_body(rt: Runtime) -> None:
    e = _hook()
    await rt.outbox.commit([e])  # no body given
    async with rt.pool.acquire() as conn:
        assert await eventlog.raw_body(conn, e.id) == b'{"a": 1}'  # its payload is the body
        assert await eventlog.raw_body(conn, "evt_missing") is None


@pytest.mark.parametrize(
    "sql",
    ["UPDATE events SET type = 'x'", "DELETE FROM events", "TRUNCATE events CASCADE"],
)
async def test_database_refuses_to_change_the_log(rt: Runtime, sql: str) -> None:
    await rt.outbox.commit([_hook()])
    async with rt.pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(sql)
        assert await conn.fetchval("SELECT count(*) FROM events") == 1


async def test_concurrent_migrations_apply_once(settings: Settings) -> None:
    conns = [await asyncpg.connect(settings.database.url) for _ in range(5)]
    try:
        results = await asyncio.gather(*(db.migrate(c, settings.database.schema) for c in conns))
    finally:
        for c in conns:
            await c.close()
    applied = [name for r in results for name in r]
    assert sorted(applied) == sorted(n for _, n, _ in db.migration_files())


async def test_chain_lists_a_webhook_and_what_it_caused(rt: Runtime) -> None:
    hook = _hook()
    job = ev.make_event(
        ev.JobRequested(job_id="job_1", kind="shell", rule="r", webhook_id=hook.id),
        source="/test", id=ev.derived_id(hook.id, "job"), cause=hook,
    )  # fmt: skip
    started = ev.make_event(
        ev.JobStarted(job_id="job_1", kind="shell", rule="r"), source="/test", cause=job
    )
    other = _hook("other")
    await rt.outbox.commit([hook, job, started, other])
    async with rt.pool.acquire() as conn:
        chain = await eventlog.chain(conn, started.id)
    assert [c.event.id for c in chain] == [hook.id, job.id, started.id]
    assert chain[2].event.causationid == job.id
    assert all(c.event.correlationid == hook.id for c in chain)


async def test_read_models_follow_the_log_and_rebuild_identically(rt: Runtime) -> None:
    hook = _hook()
    req = ev.make_event(
        ev.JobRequested(job_id="job_9", kind="shell", rule="deploy", webhook_id=hook.id),
        source="/test", cause=hook,
    )  # fmt: skip
    done = ev.make_event(
        ev.JobSucceeded(job_id="job_9", kind="shell", rule="deploy", exit_code=0, duration_ms=5),
        source="/test", cause=req,
    )  # fmt: skip
    await rt.outbox.commit([hook, req])
    await rt.outbox.commit([done])
    query = "SELECT job_id, status, exit_code, duration_ms, last_seq FROM jobs"
    async with rt.pool.acquire() as conn:
        before = [tuple(r) for r in await conn.fetch(query)]
        assert before[0][:3] == ("job_9", "succeeded", 0)
        assert await readmodels.rebuild(conn) == 2
        assert [tuple(r) for r in await conn.fetch(query)] == before


async def test_read_models_take_job_requests_of_either_version(rt: Runtime) -> None:
    # Logs written before job.requested.v2 hold v1 requests; a rebuild must read both.
    hook = _hook()
    old = ev.make_event(
        ev.JobRequested(
            job_id="job_old", kind="shell", rule="a", webhook_id=hook.id,
            shell=ev.ShellSpec(command=["./a.sh"]),
        ),
        source="/test", cause=hook,
    )  # fmt: skip
    new = ev.make_event(
        ev.JobRequestedV2(
            job_id="job_new", rule="b", webhook_id=hook.id, spec=ev.ShellSpec(command=["./b.sh"])
        ),
        source="/test", cause=hook,
    )  # fmt: skip
    await rt.outbox.commit([hook, old, new])
    query = "SELECT job_id, kind, rule, status, correlation_id FROM jobs ORDER BY job_id"
    async with rt.pool.acquire() as conn:
        before = [tuple(r) for r in await conn.fetch(query)]
        assert before == [
            ("job_new", "shell", "b", "requested", hook.id),
            ("job_old", "shell", "a", "requested", hook.id),
        ]
        assert await readmodels.rebuild(conn) == 2
        assert [tuple(r) for r in await conn.fetch(query)] == before


def _job(
    cls: type[ev.EventData], job_id: str, cause: ev.Event[object], **fields: object
) -> ev.Event[ev.EventData]:
    return ev.make_event(
        cls(job_id=job_id, kind="shell", rule="r", **fields), source="/test", cause=cause
    )


def _delivery(
    cls: type[ev.EventData], dlv: str, cause: ev.Event[object], **fields: object
) -> ev.Event[ev.EventData]:
    return ev.make_event(
        cls(delivery_id=dlv, url="http://sink", tenant="t", **fields), source="/test", cause=cause
    )


_JOBS = "SELECT job_id, kind, rule, status, attempts, exit_code, duration_ms, last_seq FROM jobs ORDER BY job_id"
_DELIVERIES = (
    "SELECT delivery_id, url, rule, tenant, status, attempts, last_status_code, last_error,"
    " last_seq FROM deliveries ORDER BY delivery_id"
)


async def test_read_models_written_in_the_appending_statement_match_a_rebuild(rt: Runtime) -> None:
    """Batches as the services commit them — requests with their routing record, each job
    step on its own, a delivery attempt with its outcome, repeats of committed batches —
    change the read models as the log's replay through ``project`` does."""
    hook = _hook()
    req_a = _job(ev.JobRequested, "job_a", hook, webhook_id=hook.id)
    req_b = _job(ev.JobRequested, "job_b", hook, webhook_id=hook.id)
    dlv_req = ev.make_event(
        ev.DeliveryRequested(delivery_id="dlv_1", rule="notify", webhook_id=hook.id, url="http://sink", tenant="t"),
        source="/test", cause=hook,
    )  # fmt: skip
    started_a1 = _job(ev.JobStarted, "job_a", req_a, attempt=1)
    interrupted_a1 = _job(
        ev.JobInterrupted, "job_a", req_a, attempt=1, retrying=True, reason="shutdown"
    )
    started_a2 = _job(ev.JobStarted, "job_a", req_a, attempt=2)
    failed_a2 = _job(ev.JobFailed, "job_a", req_a, attempt=2, exit_code=3, duration_ms=7.5)
    started_b = _job(ev.JobStarted, "job_b", req_b)
    ok_b = _job(ev.JobSucceeded, "job_b", req_b, exit_code=0, duration_ms=1.25)
    try1 = _delivery(ev.DeliveryAttempted, "dlv_1", dlv_req, attempt=1, status_code=500)
    try2 = _delivery(ev.DeliveryAttempted, "dlv_1", dlv_req, attempt=2, status_code=200)
    ok = _delivery(ev.DeliverySucceeded, "dlv_1", dlv_req, attempt=2, status_code=200)
    batches = [
        [hook, req_a, req_b, dlv_req],
        [started_a1],
        [started_b],
        [try1],
        [interrupted_a1],
        [started_a1],  # a repeat: already recorded, changes nothing
        [started_a2],
        [try2, ok],
        [ok_b],
        [failed_a2],
        [try2, ok],  # a repeat of a whole batch
    ]
    for batch in batches:
        assert readmodels.fragments(batch) is not None  # the one-statement path
        await rt.outbox.commit(batch)
    async with rt.pool.acquire() as conn:
        jobs = [tuple(r) for r in await conn.fetch(_JOBS)]
        deliveries = [tuple(r) for r in await conn.fetch(_DELIVERIES)]
        assert [j[:7] for j in jobs] == [
            ("job_a", "shell", "r", "failed", 2, 3, 7.5),
            ("job_b", "shell", "r", "succeeded", 1, 0, 1.25),
        ]
        assert [d[:8] for d in deliveries] == [
            ("dlv_1", "http://sink", "notify", "t", "succeeded", 2, 200, None)
        ]
        assert await readmodels.rebuild(conn) == 12  # every job and delivery event, once
        assert [tuple(r) for r in await conn.fetch(_JOBS)] == jobs
        assert [tuple(r) for r in await conn.fetch(_DELIVERIES)] == deliveries


async def test_a_row_created_and_changed_in_one_batch_takes_a_transaction(rt: Runtime) -> None:
    # Parts of one statement do not see each other's rows: such a batch is projected
    # event by event, in a transaction, and ends as a rebuild would.
    hook = _hook()
    req = _job(ev.JobRequested, "job_1", hook, webhook_id=hook.id)
    started = _job(ev.JobStarted, "job_1", req)
    assert readmodels.fragments([hook, req, started]) is None
    await rt.outbox.commit([hook, req, started])
    async with rt.pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM jobs WHERE job_id = 'job_1'") == "running"


async def test_a_gated_append_goes_in_only_with_its_gate_in_one_statement(rt: Runtime) -> None:
    # The gate inserts its key unless it is there: the first append takes it, the second
    # (another event behind the same key) is held back, and so is its outbox row.
    gate = eventlog.Gate(
        "INSERT INTO gates (k) VALUES ({}) ON CONFLICT DO NOTHING RETURNING k", ("key",)
    )
    first, second = _hook("g-1"), _hook("g-2")
    async with rt.pool.acquire() as conn:
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS gates (k text PRIMARY KEY)")
        taken, _ = await rt.outbox.commit([first], conn=conn, gate=gate)
        held, known = await rt.outbox.commit([second], conn=conn, gate=gate)
        assert [a.event.id for a in taken] == [first.id]
        assert held == []
        assert [a.event.id for a in known] == [second.id]
        assert await conn.fetchval("SELECT count(*) FROM gates") == 1
        logged = await conn.fetch(
            "SELECT e.id FROM events e JOIN outbox o ON o.seq = e.seq WHERE e.id = ANY($1)",
            [first.id, second.id],
        )
        assert [r["id"] for r in logged] == [first.id]
