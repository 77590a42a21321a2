"""Chaos: hookbus's promises under a steady load while every part fails once.

Signed GitHub pushes arrive at a steady rate, each with its own delivery id, from senders
that retry (same delivery id) on a 503 or a dropped connection, as real senders do. Each
push runs a shell action (it notes its start, sleeps, notes its end) and a webhook action
to a sink on loopback. Meanwhile, on a fixed schedule, each service is SIGKILLed once (the
receiver restarted at once, the others after a few seconds), then Postgres and NATS are
each stopped and started again. Once the system has settled:

- every accepted webhook is recorded once (invariants 1, 3, 5);
- every job has exactly one end, and no action ran twice (invariant 4);
- every delivery reached the sink (at least once) and has exactly one end;
- nothing was dead-lettered for an outage (invariant 8).
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import pytest

from hookbus_cli.embedded import NatsServer, Postgres
from hookbus_common.db import open_pool
from hookbus_common.settings import DatabaseSettings

from ..conftest import Servers
from .conftest import System
from .httpsink import Received
from .test_slice import SECRET, headers, push

pytestmark = pytest.mark.e2e

RATE = 25  # pushes per second
COUNT = 875  # pushes in all: 35 s of load
SLEEP = 0.8  # how long each action runs
SETTLE_SECONDS = 60  # within the suite's 120 s timeout per test

# Seconds after the load starts: (what, which). A "kill" restarts the service at its
# "start"; a "stop" of Postgres or NATS is undone by its "start".
SCHEDULE: list[tuple[float, str, str]] = [
    (3, "kill", "router"),
    (6, "start", "router"),
    (8, "kill", "executor"),
    (9, "start", "executor"),  # soon: its orphans may still run
    (11, "kill", "dispatcher"),
    (14, "start", "dispatcher"),
    # Last of the services: under load a restarted process takes seconds to come up,
    # and the senders wait for it.
    (16, "kill", "receiver"),
    (16, "start", "receiver"),
    (23, "stop", "postgres"),
    (27, "start", "postgres"),
    (29, "stop", "nats"),
    (33, "start", "nats"),
]

RECEIVED = "io.hookbus.webhook.received.v1"
ROUTED = "io.hookbus.webhook.routed.v1"
JOB_REQUESTED = ("io.hookbus.job.requested.v1", "io.hookbus.job.requested.v2")
JOB_STARTED = "io.hookbus.job.started.v1"
JOB_ENDS = {
    "io.hookbus.job.succeeded.v1": "succeeded",
    "io.hookbus.job.failed.v1": "failed",
    "io.hookbus.job.interrupted.v1": "interrupted",
}
DELIVERY_REQUESTED = "io.hookbus.delivery.requested.v1"
DELIVERY_ATTEMPTED = "io.hookbus.delivery.attempted.v1"
DELIVERY_ENDS = {
    "io.hookbus.delivery.succeeded.v1": "succeeded",
    "io.hookbus.delivery.failed.v1": "failed",
    "io.hookbus.delivery.dead.v1": "dead",
}
DEADLETTERED = "io.hookbus.message.deadlettered.v1"

# Short waits, so that a killed process's work comes back and is found lost soon.
CHAOS_ENV = {
    "HOOKBUS_LOG__LEVEL": "INFO",
    "HOOKBUS_EXECUTOR__MAX_IN_FLIGHT": "32",
    # A killed executor's messages come back, and its runs are found lost, soon.
    "HOOKBUS_EXECUTOR__ACK_WAIT_SECONDS": "8",
    "HOOKBUS_EXECUTOR__SHUTDOWN_GRACE_SECONDS": "1",
    "HOOKBUS_EXECUTOR__KILL_GRACE_SECONDS": "1",
    "HOOKBUS_EXECUTOR__LEASE_SECONDS": "3",
    "HOOKBUS_DISPATCHER__ACK_WAIT_SECONDS": "6",
    "HOOKBUS_DISPATCHER__TIMEOUT_SECONDS": "4",
}


def _config(script: Path, sink_url: str) -> str:
    return f"""
[sources.github]
kind = "github"
secrets = [{{ value = "{SECRET}" }}]

[[rules]]
name = "deploy"
source = "github"
event = "push"
actions = [{{ kind = "shell", command = ["{script}"], timeout = 60 }}]

[[rules]]
name = "notify"
source = "github"
event = "push"
actions = [{{ kind = "webhook", url = "{sink_url}/in" }}]
"""


class SlowSink:
    """An endpoint on loopback that counts requests by ``x-hookbus-delivery`` (and keeps
    each one) and takes a moment to answer, so that a killed dispatcher may have sent a
    request it never saw answered (and sends it again: deliveries are at-least-once)."""

    def __init__(self, delay: float) -> None:
        self.hits: Counter[str] = Counter()
        self.received: list[tuple[float, Received]] = []  # (time.monotonic(), request)
        lock = threading.Lock()
        hits, received = self.hits, self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                got = {k.lower(): v for k, v in self.headers.items()}
                with lock:
                    hits[self.headers.get("x-hookbus-delivery", "")] += 1
                    received.append((time.monotonic(), Received(self.path, got, body)))
                time.sleep(delay)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Sent:
    status: int | None = None  # the last answer; None if the last try got no answer
    event_id: str | None = None
    tries: int = 0


@dataclass
class Load:
    """Senders at a steady rate; each retries its delivery as a real sender would."""

    url: str
    rate: float
    count: int
    max_tries: int = 80
    sent: dict[str, Sent] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        start = time.monotonic()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        with (
            httpx.Client(timeout=10, limits=limits) as client,
            ThreadPoolExecutor(max_workers=64) as pool,
        ):
            for i in range(self.count):
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(self.send, client, i)

    def send(self, client: httpx.Client, i: int) -> None:
        delivery = f"chaos-{i}"
        body = push(n=i)
        sent = Sent()
        with self.lock:
            self.sent[delivery] = sent
        for attempt in range(self.max_tries):
            sent.tries = attempt + 1
            try:
                r = client.post(
                    f"{self.url}/hooks/github", content=body, headers=headers(body, delivery)
                )
            except httpx.HTTPError as e:
                sent.status = None
                with self.lock:
                    self.answers[type(e).__name__] += 1
            else:
                sent.status = r.status_code
                with self.lock:
                    self.answers[str(r.status_code)] += 1
                if r.status_code in (200, 202):
                    sent.event_id = r.json()["id"]
                    return
                if r.status_code not in (429, 503):
                    return  # refused for good: a sender does not retry that
            time.sleep(min(0.2 * 1.5**attempt, 1.0))


@dataclass
class Log:
    """What the event log holds, by id."""

    received: dict[str, list[str]]  # delivery id -> webhook event ids
    routed: Counter[str]  # webhook id -> webhook.routed events
    jobs: set[str]
    job_started: Counter[str]
    job_ends: dict[str, list[str]]  # job id -> its ends
    interrupted: Counter[str]  # reason -> count
    deliveries: set[str]
    delivery_ends: dict[str, list[str]]
    deadlettered: list[str]
    outbox: int
    # delivery id -> where it goes: endpoint:<name>, notification:<channel> or url
    targets: dict[str, str] = field(default_factory=dict)
    attempts: Counter[str] = field(default_factory=Counter)  # delivery id -> attempts

    def settled(self, accepted: set[str]) -> bool:
        return (
            accepted <= set(self.received)
            and all(self.routed[i] for ids in self.received.values() for i in ids)
            and all(j in self.job_ends for j in self.jobs)
            and all(d in self.delivery_ends for d in self.deliveries)
            and self.outbox == 0
        )


def read_log(system: System) -> Log:
    async def run() -> Log:
        db = DatabaseSettings(
            url=system.env["HOOKBUS_DATABASE__URL"], schema=system.env["HOOKBUS_DATABASE__SCHEMA"]
        )
        async with open_pool(db, run_migrations=False) as pool, pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, type, data::text FROM events ORDER BY seq")
            outbox = await conn.fetchval("SELECT count(*) FROM outbox")
        log = Log({}, Counter(), set(), Counter(), {}, Counter(), set(), {}, [], int(outbox))
        for row in rows:
            kind, data = row["type"], msgspec.json.decode(row["data"])
            if kind == RECEIVED:
                log.received.setdefault(data["delivery_id"], []).append(row["id"])
            elif kind == ROUTED:
                log.routed[data["webhook_id"]] += 1
            elif kind in JOB_REQUESTED:
                log.jobs.add(data["job_id"])
            elif kind == JOB_STARTED:
                log.job_started[data["job_id"]] += 1
            elif kind in JOB_ENDS:
                log.job_ends.setdefault(data["job_id"], []).append(JOB_ENDS[kind])
                if kind == "io.hookbus.job.interrupted.v1":
                    log.interrupted[f"{data['reason']} retrying={data['retrying']}"] += 1
            elif kind == DELIVERY_REQUESTED:
                log.deliveries.add(data["delivery_id"])
                log.targets[data["delivery_id"]] = (
                    f"endpoint:{data['endpoint']}"
                    if data.get("endpoint")
                    else f"notification:{data['notification']}"
                    if data.get("notification")
                    else "url"
                )
            elif kind == DELIVERY_ATTEMPTED:
                log.attempts[data["delivery_id"]] += 1
            elif kind in DELIVERY_ENDS:
                log.delivery_ends.setdefault(data["delivery_id"], []).append(DELIVERY_ENDS[kind])
            elif kind == DEADLETTERED:
                log.deadlettered.append(row["data"])
        return log

    return asyncio.run(run())


def miscounted_failures(system: System) -> Counter[str]:
    """Handlers' failures logged with a traceback, by service and error: neither an outage
    (waited out, never counted) nor a hookbus error. No work fails on its own here (the
    action exits 0, the sink answers 200), so each one is an outage that was counted as a
    failure of the work (invariant 8), or a bug."""
    found: Counter[str] = Counter()
    for name in ("router", "executor", "dispatcher"):
        path = system.logs / f"{name}.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            if '"handler failed"' not in line:
                continue
            record = msgspec.json.decode(line)
            if record.get("msg") == "handler failed" and "exc" in record:
                found[f"{name}: {record['error'][:80]}"] += 1
    return found


@dataclass
class Run:
    """A load under the schedule of failures, and the log once it settled."""

    load: Load
    accepted: set[str]  # delivery ids the receiver accepted in the end
    log: Log
    load_seconds: float
    settle_seconds: float
    happened: dict[tuple[str, str], float]  # (what, which) of SCHEDULE -> time.monotonic()

    def webhook_counts(self) -> str:
        log = self.log
        return (
            f"sent={len(self.load.sent)} accepted={len(self.accepted)}"
            f" gave_up={sum(1 for s in self.load.sent.values() if s.event_id is None)}"
            f" answers={dict(self.load.answers)}"
            f" recorded={sum(len(v) for v in log.received.values())}"
            f" (distinct deliveries {len(log.received)})"
            f" routed={sum(log.routed.values())}"
        )


def run_under_chaos(system: System, nats: NatsServer, pg: Postgres, rate: float, count: int) -> Run:
    """Start ``system``, send ``count`` pushes at ``rate`` while SCHEDULE fails each part
    once, then wait (up to SETTLE_SECONDS) until the log has settled."""
    system.env.update(CHAOS_ENV)
    system.start()
    load = Load(system.url, rate, count)
    sender = threading.Thread(target=load.run, daemon=True)
    began = time.monotonic()
    sender.start()
    happened: dict[tuple[str, str], float] = {}
    late = 0.0
    for at, what, which in SCHEDULE:
        time.sleep(max(0.0, began + at + late - time.monotonic()))
        # A step that came late (a restarted receiver is waited for until it is ready)
        # moves the rest with it, so that each outage lasts as long as it says.
        late = max(late, time.monotonic() - began - at)
        happened[what, which] = time.monotonic()
        print(f"chaos: {time.monotonic() - began:5.1f}s {what} {which}")
        match what, which:
            case "kill", _:
                system.kill(which)
            case "start", "postgres":
                pg.start()
            case "start", "nats":
                nats.start()
            case "start", _:
                system.start(which)
            case "stop", "postgres":
                pg.stop()
            case "stop", "nats":
                nats.stop()
    sender.join(timeout=120)
    assert not sender.is_alive(), "the senders did not finish"
    loaded = time.monotonic()

    accepted = {d for d, s in load.sent.items() if s.event_id is not None}
    deadline = loaded + SETTLE_SECONDS
    while not (log := read_log(system)).settled(accepted):
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    return Run(load, accepted, log, loaded - began, time.monotonic() - loaded, happened)


def marks(path: Path) -> tuple[Counter[str], Counter[str]]:
    """The job ids an action noted at its start, and at its end (``start <id>``,
    ``end <id>`` lines), each counted."""
    lines = path.read_text().splitlines() if path.exists() else []
    starts = Counter(line.split()[1] for line in lines if line.startswith("start "))
    ends = Counter(line.split()[1] for line in lines if line.startswith("end "))
    return starts, ends


def check_webhooks(run: Run, counts: str) -> None:
    """Every sender's webhook was accepted, recorded once under the id it was answered
    with, and routed once."""
    load, log, accepted = run.load, run.log, run.accepted
    gave_up = {d: (s.status, s.tries) for d, s in load.sent.items() if s.event_id is None}
    # Every sender got its delivery accepted in the end: the outages were short.
    assert not gave_up, f"{counts} gave up: {dict(list(gave_up.items())[:10])}"
    # Every accepted webhook is recorded once, under the id it was answered with.
    dupes = {d: ids for d, ids in log.received.items() if len(ids) > 1}
    assert not dupes, f"{counts} recorded twice: {dupes}"
    assert set(log.received) == accepted, f"{counts} not accepted: {set(log.received) - accepted}"
    wrong_id = [d for d in accepted if log.received[d] != [load.sent[d].event_id]]
    assert not wrong_id, f"{counts} answered another id: {wrong_id[:10]}"
    assert all(n == 1 for n in log.routed.values()), counts


def check_jobs(log: Log, starts: Counter[str], ends: Counter[str], counts: str) -> None:
    """Every job ended once, and no action ran twice: no rule here opts into retry, so a
    run interrupted by a kill (started, maybe even ended, its end never recorded) is
    recorded as interrupted and never started again."""
    twice = {j: es for j, es in log.job_ends.items() if len(es) != 1}
    assert not twice, f"{counts} jobs without exactly one end: {twice}"
    ran_twice = {j: n for j, n in starts.items() if n > 1}
    assert not ran_twice, f"{counts} actions started more than once: {ran_twice}"
    started_twice = {j: n for j, n in log.job_started.items() if n > 1}
    assert not started_twice, f"{counts} jobs started more than once: {started_twice}"
    # A job recorded as succeeded ran its action to the end.
    succeeded = {j for j, es in log.job_ends.items() if es == ["succeeded"]}
    assert not succeeded - set(ends), f"{counts} succeeded without ending: {succeeded - set(ends)}"


def test_every_promise_holds_while_each_part_fails_once_under_load(
    chaos_nats: NatsServer,
    chaos_pg: Postgres,
    make_system: Callable[..., System],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    script = tmp_path / "deploy.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "start $HOOKBUS_JOB_ID" >> {marker}\n'
        f"sleep {SLEEP}\n"
        f'echo "end $HOOKBUS_JOB_ID" >> {marker}\n'
    )
    script.chmod(0o755)

    with SlowSink(delay=0.05) as sink:
        system = make_system(_config(script, sink.url), Servers(chaos_nats.url, chaos_pg.url))
        run = run_under_chaos(system, chaos_nats, chaos_pg, RATE, COUNT)
        hits = Counter(sink.hits)

    log = run.log
    starts, ends = marks(marker)
    job_ends = Counter(e for es in log.job_ends.values() for e in es)
    delivery_ends = Counter(e for es in log.delivery_ends.values() for e in es)
    miscounted = miscounted_failures(system)
    repeats = {d: n for d, n in hits.items() if n > 1}
    counts = (
        f"{run.webhook_counts()} jobs={len(log.jobs)}"
        f" job_started={sum(log.job_started.values())} job_ends={dict(job_ends)}"
        f" interrupted={dict(log.interrupted)} actions_started={sum(starts.values())}"
        f" actions_ended={sum(ends.values())}"
        f" deliveries={len(log.deliveries)} delivery_ends={dict(delivery_ends)}"
        f" sink_requests={sum(hits.values())} sink_repeats={len(repeats)}"
        f" dead_letters={len(log.deadlettered)} outbox={log.outbox}"
        f" outage_failures_counted={sum(miscounted.values())}"
        f" load_seconds={run.load_seconds:.1f} settle_seconds={run.settle_seconds:.1f}"
    )
    print(f"chaos counts: {counts}")
    if repeats:
        print(f"chaos: deliveries the sink saw more than once: {repeats}")
    if miscounted:
        print(f"chaos: handlers failed for no outage and no error of their work: {miscounted}")
    logs = "\n".join(f"--- {s}\n{system.log(s)[-1500:]}" for s in ("router", "executor"))

    assert log.settled(run.accepted), f"not settled in {SETTLE_SECONDS}s: {counts}\n{logs}"
    check_webhooks(run, counts)
    # Each with its job and its delivery.
    assert len(log.jobs) == len(log.deliveries) == len(run.accepted), counts
    check_jobs(log, starts, ends, counts)
    # Every delivery reached the sink and ended once.
    unseen = log.deliveries - set(hits)
    assert not unseen, f"{counts} never reached the sink: {sorted(unseen)[:10]}"
    twice = {d: es for d, es in log.delivery_ends.items() if len(es) != 1}
    assert not twice, f"{counts} deliveries without exactly one end: {twice}"
    assert not log.deadlettered, f"{counts} dead letters: {log.deadlettered[:5]}"
    # An outage is waited out, never counted as a failure of the work (invariant 8).
    assert not miscounted, f"{counts} outages counted as failures: {dict(miscounted)}"
