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

import http.server
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from hookbus_cli.embedded import NatsServer, Postgres

from ..conftest import Servers
from .conftest import System
from .httpsink import Received
from .load import Load, Run, check_promises, marking_script, marks, miscounted_failures, settle
from .test_slice import SECRET

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


def run_under_chaos(system: System, nats: NatsServer, pg: Postgres, rate: float, count: int) -> Run:
    """Start ``system``, send ``count`` pushes at ``rate`` while SCHEDULE fails each part
    once, then wait (up to SETTLE_SECONDS) until the log has settled."""
    system.env.update(CHAOS_ENV)
    system.start()
    load = Load(system.url, rate, count)
    load.start()
    began = load.began
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
    run = settle(system, load, SETTLE_SECONDS)
    run.happened.update(happened)
    return run


def test_every_promise_holds_while_each_part_fails_once_under_load(
    chaos_nats: NatsServer,
    chaos_pg: Postgres,
    make_system: Callable[..., System],
    tmp_path: Path,
) -> None:
    script, marker = marking_script(tmp_path, SLEEP)

    with SlowSink(delay=0.05) as sink:
        system = make_system(_config(script, sink.url), Servers(chaos_nats.url, chaos_pg.url))
        run = run_under_chaos(system, chaos_nats, chaos_pg, RATE, COUNT)
        hits = Counter(sink.hits)

    log = run.log
    starts, ends = marks(marker)
    miscounted = miscounted_failures(system)
    repeats = {d: n for d, n in hits.items() if n > 1}
    counts = run.counts(starts, ends, hits, miscounted)
    print(f"chaos counts: {counts}")
    if repeats:
        print(f"chaos: deliveries the sink saw more than once: {repeats}")
    if miscounted:
        print(f"chaos: handlers failed for no outage and no error of their work: {miscounted}")
    logs = "\n".join(f"--- {s}\n{system.log(s)[-1500:]}" for s in ("router", "executor"))

    assert log.settled(run.accepted), f"not settled in {SETTLE_SECONDS}s: {counts}\n{logs}"
    # Every sender's webhook accepted, recorded once under the id it was answered with,
    # routed once, each with its job and its delivery; every job ended once and no action
    # ran twice; every delivery reached the sink and ended once; nothing dead-lettered, no
    # outage counted as a failure of the work.
    check_promises(run, starts, ends, hits, miscounted, counts)
