"""``hookbus replay`` against real Postgres and NATS: the dry-run count, redrive through the
router's real consumer, republish onto the bus, and an interrupted replay resumed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from nats.aio.msg import Msg

from hookbus_cli import replay, replayrun, replaystore
from hookbus_cli.embedded import free_port
from hookbus_cli.main import parser
from hookbus_common import events as ev
from hookbus_common.bus import MSG_ID
from hookbus_common.consumer import REPLAY_HEADER, Incoming, Yielded
from hookbus_common.eventlog import event_from_row
from hookbus_common.events import ReplaySelection
from hookbus_common.service import Runtime, runtime
from hookbus_common.settings import Settings

from .test_cli import clean_env, hookbus
from .test_consumer import Running, until
from .test_replay import Router, _routed

pytestmark = pytest.mark.integration


def _hook(source: str, n: int, *, tenant: str = "acme") -> ev.Event[ev.WebhookReceived]:
    data = ev.WebhookReceived(
        source=source, kind="github", event_type="push", delivery_id=f"{source}-{n}",
        payload=msgspec.Raw(b'{"ref": "refs/heads/main", "n": %d}' % n),
        repository="acme/app", branch="main",
    )  # fmt: skip
    return ev.make_event(data, source=f"/hookbus/receiver/{source}", tenant=tenant, subject="a/b")


def _failed(hook: ev.Event[Any]) -> ev.Event[ev.JobFailed]:
    return ev.make_event(
        ev.JobFailed(job_id=f"job_{hook.id}", kind="shell", rule="deploy", exit_code=1),
        source="/hookbus/executor", id=ev.derived_id(hook.id, "failed"), cause=hook,
    )  # fmt: skip


def _dead(hook: ev.Event[Any]) -> ev.Event[ev.DeliveryDead]:
    return ev.make_event(
        ev.DeliveryDead(delivery_id=f"dlv_{hook.id}", url="https://example.com", tenant="globex"),
        source="/hookbus/dispatcher", id=ev.derived_id(hook.id, "dead"), cause=hook,
    )  # fmt: skip


class Seeded(msgspec.Struct):
    github: list[ev.Event[ev.WebhookReceived]]
    gitlab: list[ev.Event[ev.WebhookReceived]]
    failed: list[str]  # ids of the github webhooks whose chain has a failed job


async def _seed(rt: Runtime, github: int = 5, gitlab: int = 2) -> Seeded:
    gh = [_hook("github", n) for n in range(github)]
    gl = [_hook("gitlab", n, tenant="globex") for n in range(gitlab)]
    failed = [gh[1], gh[3]] if github > 3 else []
    await rt.outbox.commit_and_publish([*gh, *gl])
    await rt.outbox.commit_and_publish([_failed(h) for h in failed])
    if gl:
        await rt.outbox.commit_and_publish([_dead(gl[0])])
    return Seeded(github=gh, gitlab=gl, failed=[h.id for h in failed])


async def _rows(rt: Runtime, type_: str) -> list[ev.Event[Any]]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, type, source, subject, tenant, correlation_id, causation_id, time,"
            " data::text AS data FROM events WHERE type = $1 ORDER BY seq",
            type_,
        )
    return [event_from_row(r) for r in rows]


def _args(*argv: str) -> Any:
    return parser().parse_args(["replay", *argv])


def _env(settings: Settings) -> dict[str, str]:
    return clean_env(
        HOOKBUS_DATABASE__URL=settings.database.url,
        HOOKBUS_DATABASE__SCHEMA=settings.database.schema,
        HOOKBUS_NATS__URL=settings.nats.url,
        HOOKBUS_PREFIX=settings.prefix,
    )


# ----------------------------------------------------------------------- dry run


def test_a_dry_run_counts_what_is_selected_and_changes_nothing(settings, tmp_path, rt_sync):
    env = _env(settings)
    _, count_before = rt_sync

    runs = {
        "all": hookbus("replay", "--dry-run", env=env, cwd=tmp_path),
        "github": hookbus("replay", "--dry-run", "--source", "github", env=env, cwd=tmp_path),
        "failed": hookbus("replay", "--dry-run", "--failed-jobs", env=env, cwd=tmp_path),
        "tenant": hookbus("replay", "--dry-run", "--tenant", "globex", env=env, cwd=tmp_path),
        "dead": hookbus("replay", "--dry-run", "--dead-deliveries", env=env, cwd=tmp_path),
        "failed or dead": hookbus(
            "replay", "--dry-run", "--failed-jobs", "--dead-deliveries", env=env, cwd=tmp_path
        ),
        "republish": hookbus(
            "replay", "--dry-run", "--republish", "--source", "github", env=env, cwd=tmp_path
        ),
        "future": hookbus("replay", "--dry-run", "--since", "2999-01-01", env=env, cwd=tmp_path),
    }

    for out in runs.values():
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[-1] == "dry run: nothing replayed"
    counts = {k: out.stdout.splitlines()[0] for k, out in runs.items()}
    assert counts["all"] == "7 webhooks to redrive (everything)"
    assert counts["github"] == "5 webhooks to redrive (source github)"
    assert counts["failed"] == "2 webhooks to redrive (with failed jobs)"
    assert counts["tenant"] == "2 webhooks to redrive (tenant globex)"
    assert counts["dead"] == "1 webhook to redrive (with dead deliveries)"
    assert counts["failed or dead"] == (
        "3 webhooks to redrive (with failed jobs or dead deliveries)"
    )
    # Republish takes every event of the github chains: 5 webhooks and 2 failed jobs.
    assert counts["republish"] == "7 events to republish (source github)"
    assert counts["future"].startswith("0 webhooks to redrive (since 2999-01-01T00:00:00+00:00")
    listed = hookbus("replay", "--list", env=env, cwd=tmp_path)
    assert listed.stdout == "no replays\n"
    assert asyncio.run(_count_events(settings)) == count_before


async def _count_events(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database.url)
    try:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{settings.database.schema}".events'))
    finally:
        await conn.close()


@pytest.fixture
def rt_sync(settings: Settings) -> tuple[Seeded, int]:
    """Seed the log from a loop of its own, for tests that run the CLI as a process."""

    async def go() -> tuple[Seeded, int]:
        async with runtime(settings, "test") as rt:
            seeded = await _seed(rt)
        return seeded, await _count_events(settings)

    return asyncio.run(go())


# ------------------------------------------------------------------------ redrive


async def test_redrive_records_a_replay_per_webhook_that_the_router_routes_anew(
    rt: Runtime, settings: Settings
) -> None:
    async with Router(rt):
        seeded = await _seed(rt)
        for h in seeded.github:
            await until(lambda h=h: _routed(rt, h.id))

        code = await replay.start(
            settings, _args("--source", "github", "--by", "alice", "--reason", "host down")
        )

        assert code == 0
        replays = await _rows(rt, ev.WebhookReplayed.TYPE)
        assert sorted(r.data.replay_of for r in replays) == sorted(h.id for h in seeded.github)
        for r in replays:
            await until(lambda r=r: _routed(rt, r.id))
    originals = {h.id: h for h in seeded.github}
    for r in replays:
        assert r.id not in originals
        assert r.correlationid == r.id
        assert r.data.webhook == originals[r.data.replay_of].data
        assert (r.data.requested_by, r.data.reason) == ("alice", "host down")
    routed = await _rows(rt, ev.WebhookRouted.TYPE)
    anew = [e for e in routed if e.data.replay_of]
    assert sorted(e.data.webhook_id for e in anew) == sorted(r.id for r in replays)
    assert all(e.data.matched == ["deploy", "test"] for e in anew)
    jobs = await _rows(rt, ev.JobRequestedV2.TYPE)
    assert len([j for j in jobs if j.correlationid in {r.id for r in replays}]) == 3 * 5
    # Audited: started and finished, with who and how many.
    (started,) = await _rows(rt, ev.ReplayStarted.TYPE)
    (finished,) = await _rows(rt, ev.ReplayFinished.TYPE)
    assert started.data.selection == ReplaySelection(source="github")
    assert (started.data.requested_by, started.data.selected) == ("alice", 5)
    assert (finished.data.replay_id, finished.data.done) == (started.data.replay_id, 5)
    async with rt.pool.acquire() as conn:
        job = await replaystore.get(conn, started.data.replay_id)
    assert job is not None
    assert (job.status, job.done, job.selected, job.mode) == ("finished", 5, 5, "redrive")


async def test_failed_jobs_selects_only_the_webhooks_whose_chain_failed(
    rt: Runtime, settings: Settings
) -> None:
    seeded = await _seed(rt)

    assert await replay.start(settings, _args("--failed-jobs", "--rate", "1000")) == 0

    replays = await _rows(rt, ev.WebhookReplayed.TYPE)
    assert sorted(r.data.replay_of for r in replays) == sorted(seeded.failed)


# ---------------------------------------------------------------------- republish


async def test_republish_puts_the_stored_events_on_the_bus_marked_as_a_replay(
    rt: Runtime, settings: Settings
) -> None:
    seeded = await _seed(rt, github=3, gitlab=1)
    handled: list[str] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        handled.append(incoming.event.id)
        return
        yield  # pragma: no cover

    got: list[Msg] = []
    sub = await rt.bus.nc.subscribe(f"{rt.bus.prefix}.webhook.>", cb=_append_to(got))
    # hookbus's own consumers (here one on webhooks) act on the originals only.
    async with Running(rt, handler, filter_subjects=[f"{rt.bus.prefix}.webhook.>"]) as running:
        await until(lambda: _len_at_least(handled, 4))

        code = await replay.start(settings, _args("--republish", "--type", "webhook.*"))

        assert code == 0
        await until(lambda: _len_at_least(got, 4))
        await until(lambda: _idle(rt, running, delivered=8))
    await sub.unsubscribe()
    (started,) = await _rows(rt, ev.ReplayStarted.TYPE)
    replay_id = started.data.replay_id
    originals = {h.id: h for h in [*seeded.github, *seeded.gitlab]}
    assert len(got) == 4
    for msg in got:
        assert msg.headers is not None
        assert msg.headers[REPLAY_HEADER] == replay_id
        event = ev.decode(msg.data)
        assert event == originals[event.id]  # as it was, id and all
        assert msg.headers[MSG_ID] != event.id
        assert msg.subject == event.bus_subject(rt.bus.prefix)
    assert sorted(handled) == sorted(originals)  # the copies were acked, not handled
    assert await _rows(rt, ev.WebhookReplayed.TYPE) == []


def _append_to(got: list[Msg]) -> Any:
    async def cb(msg: Msg) -> None:
        if msg.headers and REPLAY_HEADER in msg.headers:
            got.append(msg)

    return cb


async def _len_at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _idle(rt: Runtime, running: Running, *, delivered: int) -> bool:
    info = await rt.bus.js.consumer_info(rt.bus.stream, running.consumer.durable)
    idle = info.num_pending == 0 and info.num_ack_pending == 0
    return idle and info.delivered.consumer_seq >= delivered


# ------------------------------------------------------------- interrupted, resumed


class StopAfter:
    """A progress reporter that stops the replay once ``k`` events are done."""

    def __init__(self, stop: asyncio.Event, k: int) -> None:
        self.stop = stop
        self.k = k

    def update(self, done: int) -> None:
        if done >= self.k:
            self.stop.set()


async def test_an_interrupted_redrive_resumes_after_its_cursor_and_does_each_webhook_once(
    rt: Runtime, settings: Settings
) -> None:
    seeded = await _seed(rt, github=12, gitlab=0)
    sel = ReplaySelection(source="github")
    async with rt.pool.acquire() as conn:
        upto = await conn.fetchval("SELECT max(seq) FROM events")
        job = await replayrun.create(
            rt, conn, mode="redrive", selection=sel, requested_by="alice", reason=None,
            rate=20.0, max_seq=upto, selected=12,
        )  # fmt: skip
        stop = asyncio.Event()
        # 20/s makes batches of 4: stopped after the first batch that reaches 5.
        stopped = await replayrun.run(rt, conn, job, stop=stop, progress=StopAfter(stop, 5))
    assert (stopped.status, stopped.done) == ("interrupted", 8)
    assert len(await _rows(rt, ev.WebhookReplayed.TYPE)) == 8

    code = await replay.resume(settings, _args("--resume", job.replay_id, "--by", "bob"))

    assert code == 0
    replays = await _rows(rt, ev.WebhookReplayed.TYPE)
    assert len(replays) == 12
    assert sorted(r.data.replay_of for r in replays) == sorted(h.id for h in seeded.github)
    (resumed,) = await _rows(rt, ev.ReplayResumed.TYPE)
    assert (resumed.data.requested_by, resumed.data.done) == ("bob", 8)
    (finished,) = await _rows(rt, ev.ReplayFinished.TYPE)
    assert finished.data.done == 12
    async with rt.pool.acquire() as conn:
        done = await replaystore.get(conn, job.replay_id)
    assert done is not None
    async with rt.pool.acquire() as conn:
        last = await conn.fetchval("SELECT seq FROM events WHERE id = $1", seeded.github[-1].id)
    assert (done.status, done.done, done.cursor_seq) == ("finished", 12, last)

    again = await replay.resume(settings, _args("--resume", job.replay_id))
    assert again == 0
    assert len(await _rows(rt, ev.WebhookReplayed.TYPE)) == 12


async def test_a_replay_is_run_by_one_process_at_a_time(rt: Runtime, settings: Settings) -> None:
    await _seed(rt, github=2, gitlab=0)
    async with rt.pool.acquire() as conn:
        job = await replayrun.create(
            rt, conn, mode="redrive", selection=ReplaySelection(), requested_by=None,
            reason=None, rate=50.0, max_seq=999, selected=2,
        )  # fmt: skip
        assert await replaystore.try_lock(conn, job.replay_id)
        try:
            with pytest.raises(replay.Refused, match="being run by another process"):
                await replay.resume(settings, _args("--resume", job.replay_id))
        finally:
            await replaystore.unlock(conn, job.replay_id)
    assert await _rows(rt, ev.WebhookReplayed.TYPE) == []


def test_ctrl_c_stops_a_replay_that_resume_then_finishes_exactly_once(
    settings: Settings, tmp_path: Path, rt_sync: tuple[Seeded, int]
) -> None:
    seeded, _ = rt_sync
    env = _env(settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookbus_cli.main", "replay", "--source", "github", "--rate", "2"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "5 webhooks to redrive (source github)\n"
        started = proc.stdout.readline()
        assert started.startswith("replay rpl_"), started
        replay_id = started.split()[1]
        asyncio.run(_until_done_at_least(settings, replay_id, 1))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert f"resume with: hookbus replay --resume {replay_id}" in err
    job = asyncio.run(_job(settings, replay_id))
    assert job.status == "interrupted"
    assert 1 <= job.done < 5

    resumed = hookbus("replay", "--resume", replay_id, "--rate", "100", env=env, cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines() == [
        f"replay {replay_id} resumed after {job.done} of 5",
        f"replay {replay_id} finished: 5 of 5 redriven",
    ]
    replayed = asyncio.run(_replayed(settings))
    assert sorted(replayed) == sorted(h.id for h in seeded.github)
    listed = hookbus("replay", "--list", env=env, cwd=tmp_path)
    assert listed.returncode == 0
    (line,) = listed.stdout.splitlines()
    assert line.split()[:4] == [replay_id, "finished", "redrive", "5/5"]
    assert line.endswith("source github")


async def _connect(settings: Settings) -> Any:
    conn = await asyncpg.connect(settings.database.url)
    await conn.execute(f'SET search_path TO "{settings.database.schema}"')
    return conn


async def _job(settings: Settings, replay_id: str) -> replaystore.ReplayJob:
    conn = await _connect(settings)
    try:
        job = await replaystore.get(conn, replay_id)
    finally:
        await conn.close()
    assert job is not None
    return job


async def _until_done_at_least(settings: Settings, replay_id: str, n: int) -> None:
    async def done() -> bool:
        job = await _job(settings, replay_id)
        return job.done >= n

    await until(done, timeout=30)


async def _replayed(settings: Settings) -> list[str]:
    conn = await _connect(settings)
    try:
        rows = await conn.fetch(
            "SELECT data->>'replay_of' AS of FROM events WHERE type = $1",
            ev.WebhookReplayed.TYPE,
        )
    finally:
        await conn.close()
    return [r["of"] for r in rows]


def test_without_nats_a_replay_fails_with_one_line_and_creates_nothing(
    settings: Settings, tmp_path: Path, rt_sync: tuple[Seeded, int]
) -> None:
    port = free_port()  # nothing listens on a port just freed
    env = {**_env(settings), "HOOKBUS_NATS__URL": f"nats://127.0.0.1:{port}"}

    out = hookbus("replay", "--source", "github", env=env, cwd=tmp_path)

    assert out.returncode == 1
    assert out.stdout == "5 webhooks to redrive (source github)\n"
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"hookbus: cannot reach NATS at nats://127.0.0.1:{port} (")
    assert hookbus("replay", "--list", env=env, cwd=tmp_path).stdout == "no replays\n"
