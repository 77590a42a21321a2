"""A steady, paced load for the end-to-end tests, the event log it leaves, and the checks
that follow it.

Signed GitHub pushes go to the receiver at a steady rate, each under its own delivery id,
from senders that retry (same delivery id) on a 429, a 503 or a dropped connection, as real
senders do; each sender remembers what it was answered. A test runs its own scenario (kills,
outages, reloads) while they send, waits for the event log to settle, and checks what the
scenario promises: every accepted webhook recorded once under the id it was answered with,
every job ended once and no action run twice, every delivery at its sink and ended once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from hookbus_common.db import open_pool
from hookbus_common.settings import DatabaseSettings

from .conftest import System
from .test_slice import headers, push

RECEIVED = "io.hookbus.webhook.received.v1"
ROUTED = "io.hookbus.webhook.routed.v1"
JOB_REQUESTED = ("io.hookbus.job.requested.v1", "io.hookbus.job.requested.v2")
JOB_STARTED = "io.hookbus.job.started.v1"
JOB_INTERRUPTED = "io.hookbus.job.interrupted.v1"
# The ends a job may have (a test whose rules may skip a job adds that end).
JOB_ENDS = {
    "io.hookbus.job.succeeded.v1": "succeeded",
    "io.hookbus.job.failed.v1": "failed",
    JOB_INTERRUPTED: "interrupted",
}
DELIVERY_REQUESTED = "io.hookbus.delivery.requested.v1"
DELIVERY_ATTEMPTED = "io.hookbus.delivery.attempted.v1"
DELIVERY_ENDS = {
    "io.hookbus.delivery.succeeded.v1": "succeeded",
    "io.hookbus.delivery.failed.v1": "failed",
    "io.hookbus.delivery.dead.v1": "dead",
}
DEADLETTERED = "io.hookbus.message.deadlettered.v1"


def numbered_push(i: int) -> tuple[str, bytes]:
    """The i-th sender's webhook: its delivery id and a push of its own commit (i in hex)."""
    return f"push-{i}", push(n=i)


@dataclass
class Sent:
    status: int | None = None  # the last answer; None if the last try got no answer
    event_id: str | None = None
    tries: int = 0


@dataclass
class Load:
    """``count`` senders, started ``rate`` a second, at most ``senders`` at a time. The
    i-th sends ``webhook(i)`` (its delivery id and body) until it is answered with one of
    ``accepts``, refused for good (an answer other than 429 or 503), or has tried
    ``max_tries`` times; a dropped connection, a 429 or a 503 is tried again after a
    growing pause."""

    url: str
    rate: float
    count: int
    webhook: Callable[[int], tuple[str, bytes]] = numbered_push
    max_tries: int = 80
    senders: int = 64
    accepts: tuple[int, ...] = (200, 202)  # 202 recorded; 200 recorded before
    sent: dict[str, Sent] = field(default_factory=dict)  # delivery id -> its sender's lot
    answers: Counter[str] = field(default_factory=Counter)  # answer or error -> tries
    lock: threading.Lock = field(default_factory=threading.Lock)
    began: float = field(default=0.0, init=False)  # time.monotonic() when sending began
    thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        """Send in the background: the test runs its scenario meanwhile."""
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.began = time.monotonic()
        self.thread.start()

    def finish(self, timeout: float) -> float:
        """Wait (up to ``timeout`` seconds) until every sender is done; when they were."""
        assert self.thread is not None, "the load was never started"
        self.thread.join(timeout=timeout)
        assert not self.thread.is_alive(), "the senders did not finish"
        return time.monotonic()

    def accepted(self) -> dict[str, str]:
        """Delivery id -> the webhook id it was answered with, for those accepted."""
        return {d: s.event_id for d, s in self.sent.items() if s.event_id is not None}

    def run(self) -> None:
        start = time.monotonic()
        limits = httpx.Limits(max_connections=self.senders, max_keepalive_connections=self.senders)
        with (
            httpx.Client(timeout=10, limits=limits) as client,
            ThreadPoolExecutor(max_workers=self.senders) as pool,
        ):
            for i in range(self.count):
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(self.send, client, i)

    def send(self, client: httpx.Client, i: int) -> None:
        delivery, body = self.webhook(i)
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
                if r.status_code in self.accepts:
                    sent.event_id = r.json()["id"]
                    return
                if r.status_code not in (429, 503):
                    return  # refused for good: a sender does not retry that
            time.sleep(min(0.2 * 1.5**attempt, 1.0))


@dataclass
class Log:
    """What the event log holds, by id."""

    outbox: int  # messages not yet published
    received: dict[str, list[str]] = field(default_factory=dict)  # delivery -> webhook ids
    routed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # webhook -> routings
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> its request
    job_started: Counter[str] = field(default_factory=Counter)
    job_ends: dict[str, list[str]] = field(default_factory=dict)  # job id -> its ends
    interrupted: Counter[str] = field(default_factory=Counter)  # reason -> count
    deliveries: set[str] = field(default_factory=set)
    delivery_ends: dict[str, list[str]] = field(default_factory=dict)
    deadlettered: list[str] = field(default_factory=list)
    # delivery id -> where it goes: endpoint:<name>, notification:<channel> or url
    targets: dict[str, str] = field(default_factory=dict)
    attempts: Counter[str] = field(default_factory=Counter)  # delivery id -> attempts

    @property
    def jobs(self) -> set[str]:
        return set(self.requests)

    def settled(self, accepted: set[str]) -> bool:
        """``accepted`` (delivery ids) recorded, everything recorded routed, every job and
        delivery ended, the outbox empty."""
        return (
            accepted <= set(self.received)
            and all(self.routed.get(i) for ids in self.received.values() for i in ids)
            and all(j in self.job_ends for j in self.jobs)
            and all(d in self.delivery_ends for d in self.deliveries)
            and self.outbox == 0
        )

    def job_end_counts(self) -> Counter[str]:
        return Counter(e for es in self.job_ends.values() for e in es)

    def delivery_end_counts(self) -> Counter[str]:
        return Counter(e for es in self.delivery_ends.values() for e in es)


def read_log(system: System, job_ends: Mapping[str, str] = JOB_ENDS) -> Log:
    """The system's event log, and how many messages its outbox holds."""

    async def run() -> Log:
        db = DatabaseSettings(
            url=system.env["HOOKBUS_DATABASE__URL"], schema=system.env["HOOKBUS_DATABASE__SCHEMA"]
        )
        async with open_pool(db, run_migrations=False) as pool, pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, type, data::text FROM events ORDER BY seq")
            outbox = await conn.fetchval("SELECT count(*) FROM outbox")
        log = Log(int(outbox))
        for row in rows:
            kind, data = row["type"], msgspec.json.decode(row["data"])
            if kind == RECEIVED:
                log.received.setdefault(data["delivery_id"], []).append(row["id"])
            elif kind == ROUTED:
                log.routed.setdefault(data["webhook_id"], []).append(data)
            elif kind in JOB_REQUESTED:
                log.requests[data["job_id"]] = data
            elif kind == JOB_STARTED:
                log.job_started[data["job_id"]] += 1
            elif kind in job_ends:
                log.job_ends.setdefault(data["job_id"], []).append(job_ends[kind])
                if kind == JOB_INTERRUPTED:
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


def wait_settled(
    system: System,
    settled: Callable[[Log], bool],
    seconds: float,
    *,
    poll: float = 1.0,
    job_ends: Mapping[str, str] = JOB_ENDS,
) -> tuple[Log, float]:
    """Read the log every ``poll`` seconds until ``settled`` says it has, for ``seconds`` at
    most: the last read (which a test then checks), and how long it took."""
    began = time.monotonic()
    while not settled(log := read_log(system, job_ends)):
        if time.monotonic() > began + seconds:
            break
        time.sleep(poll)
    return log, time.monotonic() - began


@dataclass
class Run:
    """A load, what it got accepted, and the log once it settled."""

    load: Load
    accepted: set[str]  # delivery ids the receiver accepted in the end
    log: Log
    load_seconds: float
    settle_seconds: float
    # a scenario's steps, (what, which) -> time.monotonic() when each was taken
    happened: dict[tuple[str, str], float] = field(default_factory=dict)

    def webhook_counts(self) -> str:
        log = self.log
        return (
            f"sent={len(self.load.sent)} accepted={len(self.accepted)}"
            f" gave_up={sum(1 for s in self.load.sent.values() if s.event_id is None)}"
            f" answers={dict(self.load.answers)}"
            f" recorded={sum(len(v) for v in log.received.values())}"
            f" (distinct deliveries {len(log.received)})"
            f" routed={sum(len(v) for v in log.routed.values())}"
        )

    def counts(
        self, starts: Counter[str], ends: Counter[str], hits: Counter[str], miscounted: Counter[str]
    ) -> str:
        """The figures of a run whose pushes each run a marking action (``marks``) and send
        a delivery to a sink (its ``hits`` by delivery id)."""
        log = self.log
        return (
            f"{self.webhook_counts()} jobs={len(log.jobs)}"
            f" job_started={sum(log.job_started.values())} job_ends={dict(log.job_end_counts())}"
            f" interrupted={dict(log.interrupted)} actions_started={sum(starts.values())}"
            f" actions_ended={sum(ends.values())} deliveries={len(log.deliveries)}"
            f" delivery_ends={dict(log.delivery_end_counts())}"
            f" sink_requests={sum(hits.values())}"
            f" sink_repeats={sum(1 for n in hits.values() if n > 1)}"
            f" dead_letters={len(log.deadlettered)} outbox={log.outbox}"
            f" outage_failures_counted={sum(miscounted.values())}"
            f" load_seconds={self.load_seconds:.1f} settle_seconds={self.settle_seconds:.1f}"
        )


def settle(system: System, load: Load, seconds: float, sender_timeout: float = 120) -> Run:
    """Once ``load``'s senders are done, wait (up to ``seconds``) until the log has settled
    with every webhook they got accepted."""
    loaded = load.finish(sender_timeout)
    accepted = set(load.accepted())
    log, settle_seconds = wait_settled(system, lambda log: log.settled(accepted), seconds)
    return Run(load, accepted, log, loaded - load.began, settle_seconds)


def marking_script(folder: Path, sleep: float) -> tuple[Path, Path]:
    """A shell action that notes its job's start in a file, sleeps ``sleep`` seconds and
    notes its end: the script, and the file (read it with ``marks``)."""
    marker = folder / "marker"
    script = folder / "deploy.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "start $HOOKBUS_JOB_ID" >> {marker}\n'
        f"sleep {sleep}\n"
        f'echo "end $HOOKBUS_JOB_ID" >> {marker}\n'
    )
    script.chmod(0o755)
    return script, marker


def marks(path: Path) -> tuple[Counter[str], Counter[str]]:
    """The job ids an action noted at its start, and at its end (``start <id>``,
    ``end <id>`` lines), each counted."""
    lines = path.read_text().splitlines() if path.exists() else []
    starts = Counter(line.split()[1] for line in lines if line.startswith("start "))
    ends = Counter(line.split()[1] for line in lines if line.startswith("end "))
    return starts, ends


def miscounted_failures(
    system: System, keys: Iterable[str] = ("router", "executor", "dispatcher")
) -> Counter[str]:
    """Handlers' failures logged with a traceback, by process (its log ``<key>.log``) and
    error: neither an outage (waited out, never counted) nor a hookbus error. Where no work
    fails on its own (the action exits 0, the sink answers 200) each one is an outage that
    was counted as a failure of the work (invariant 8), or a bug."""
    found: Counter[str] = Counter()
    for key in keys:
        path = system.logs / f"{key}.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            if '"handler failed"' not in line:
                continue
            record = msgspec.json.decode(line)
            if record.get("msg") == "handler failed" and "exc" in record:
                found[f"{key}: {record['error'][:80]}"] += 1
    return found


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
    assert all(len(rs) == 1 for rs in log.routed.values()), counts


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


def check_deliveries(log: Log, hits: Counter[str], counts: str) -> None:
    """Every delivery reached the sink (its ``hits`` by delivery id) and ended once, and
    nothing was dead-lettered."""
    unseen = log.deliveries - set(hits)
    assert not unseen, f"{counts} never reached the sink: {sorted(unseen)[:10]}"
    twice = {d: es for d, es in log.delivery_ends.items() if len(es) != 1}
    assert not twice, f"{counts} deliveries without exactly one end: {twice}"
    assert not log.deadlettered, f"{counts} dead letters: {log.deadlettered[:5]}"


def check_promises(
    run: Run,
    starts: Counter[str],
    ends: Counter[str],
    hits: Counter[str],
    miscounted: Counter[str],
    counts: str,
) -> None:
    """What a run whose pushes each run a marking action and send a delivery to a sink
    promises, once its log has settled, whatever failed meanwhile."""
    log = run.log
    check_webhooks(run, counts)
    # Each with its job and its delivery.
    assert len(log.jobs) == len(log.deliveries) == len(run.accepted), counts
    check_jobs(log, starts, ends, counts)
    check_deliveries(log, hits, counts)
    # An outage is waited out, never counted as a failure of the work (invariant 8).
    assert not miscounted, f"{counts} outages counted as failures: {dict(miscounted)}"
