"""A clustered bus: three nats-servers on loopback, the stream at three replicas, and two
replicas of each consuming service, while a NATS node and one replica of each fail.

Signed GitHub pushes arrive at a steady rate (senders retry on a 503 or a dropped
connection). Each runs a shell action (it notes its start and end in a file) and a webhook
action to a sink on loopback. Under that load the stream's leader node is stopped, one
replica each of the router, the executor and the dispatcher is SIGKILLed (the other
carries on alone: replicas share one durable consumer), and the node is started again.
Once the system has settled, from the event log:

- every accepted webhook is recorded once and routed once;
- every job has exactly one end and no action ran twice (a killed executor's jobs may end
  interrupted, as in the chaos test);
- every delivery reached the sink and has exactly one end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest

from hookbus_cli.embedded import NatsCluster, free_port
from hookbus_common.bus import connect, stream_name
from hookbus_common.errors import ConfigError
from hookbus_common.settings import NatsSettings

from ..conftest import Servers
from .conftest import System
from .load import Load, check_promises, marking_script, marks, miscounted_failures, settle
from .test_chaos import CHAOS_ENV, SlowSink, _config

pytestmark = pytest.mark.e2e

RATE = 20  # pushes per second: sized for a 2-core machine running 11 processes
COUNT = 400  # 20 s of load
SLEEP = 0.3  # how long each shell action runs
SETTLE_SECONDS = 45
REPLICATED = ("router", "executor", "dispatcher")

# Seconds after the load starts.
SCHEDULE: list[tuple[float, str, str]] = [
    (4, "stop", "nats leader"),
    (6, "kill", "router-1"),
    (8, "kill", "executor-1"),
    (10, "kill", "dispatcher-1"),
    (13, "start", "nats leader"),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(tmp_path / "cluster", 3, log_dir=tmp_path)
    c.start()
    yield c
    c.stop()


class Replicated(System):
    """A System whose consuming services run as several replicas (``router-1``, ...)."""

    def __init__(self, config: Path, env: dict[str, str], logs: Path) -> None:
        super().__init__(config, env, logs)
        self.health: dict[str, int] = {}  # replica -> its health port

    def start_replica(self, service: str, i: int) -> str:
        key = f"{service}-{i}"
        port = free_port()
        env = {**self.env, f"HOOKBUS_{service.upper()}__HEALTH_PORT": str(port)}
        with open(self.logs / f"{key}.log", "ab") as log:
            self.procs[key] = subprocess.Popen(
                [sys.executable, "-m", f"hookbus_{service}", "--config", str(self.config)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.health[key] = port
        return key

    def wait_replicas_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        waiting = dict(self.health)
        while waiting and time.monotonic() < deadline:
            for key, port in list(waiting.items()):
                if self.procs[key].poll() is not None:
                    raise AssertionError(f"{key} exited: {self.log(key)}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        del waiting[key]
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        assert not waiting, f"not ready: {sorted(waiting)}"


def stream_leader(url: str, prefix: str) -> tuple[str | None, int, list[str]]:
    """The stream's leader node, its replica count, and its replicas that are current."""

    async def run() -> tuple[str | None, int, list[str]]:
        nc = await nats.connect(NatsSettings(url=url).servers, connect_timeout=2)
        try:
            info = await nc.jetstream().stream_info(stream_name(prefix))
        finally:
            await nc.close()
        c = info.cluster
        current = [p.name for p in (c.replicas or []) if p.current] if c else []
        return (c.leader if c else None), info.config.num_replicas or 1, current

    return asyncio.run(run())


@pytest.mark.timeout(240)
def test_promises_hold_on_a_three_node_cluster_while_a_node_and_a_replica_of_each_fail(
    cluster: NatsCluster,
    servers: Servers,
    make_system: Callable[..., System],
    prefix: str,
    tmp_path: Path,
) -> None:
    script, marker = marking_script(tmp_path, SLEEP)

    with SlowSink(delay=0.02) as sink:
        base = make_system(_config(script, sink.url), Servers(cluster.url, servers.database_url))
        system = Replicated(base.config, base.env, base.logs)
        # The chaos test's short waits: a killed replica's unacked messages go to the other
        # one soon.
        system.env.update({**CHAOS_ENV, "HOOKBUS_NATS__STREAM_REPLICAS": "3"})
        try:
            system.start("receiver")
            for service in REPLICATED:
                for i in (1, 2):
                    system.start_replica(service, i)
            system.wait_replicas_ready()
            leader, replicas, _ = stream_leader(cluster.url, prefix)
            assert replicas == 3, f"the stream has {replicas} replicas, not 3"
            assert leader in {"n1", "n2", "n3"}, leader

            load = Load(system.url, RATE, COUNT)
            load.start()
            began = load.began
            stopped = None
            for at, what, which in SCHEDULE:
                time.sleep(max(0.0, began + at - time.monotonic()))
                match what, which:
                    case "stop", _:
                        leader, _, _ = stream_leader(cluster.url, prefix)
                        assert leader is not None
                        stopped = cluster.node(leader)
                        stopped.stop()
                        which = f"nats {leader} (the stream's leader)"
                    case "start", _:
                        assert stopped is not None
                        stopped.start()
                        which = f"nats {stopped.cluster.name if stopped.cluster else '?'}"
                    case "kill", _:
                        system.kill(which)
                print(f"cluster: {time.monotonic() - began:5.1f}s {what} {which}")
            run = settle(system, load, SETTLE_SECONDS)
            hits = Counter(sink.hits)
            new_leader, _, current = stream_leader(cluster.url, prefix)
            survivors = {k: p.poll() for k, p in system.procs.items()}
        finally:
            keys = sorted(system.procs)
            system.stop()

    log = run.log
    starts, ends = marks(marker)
    miscounted = miscounted_failures(system, [*keys, "router-1", "executor-1", "dispatcher-1"])
    counts = run.counts(starts, ends, hits, miscounted) + (
        f" stream_leader_after={new_leader} current_replicas={current}"
    )
    print(f"cluster counts: {counts}")
    logs = "\n".join(f"--- {k}\n{system.log(k)[-1500:]}" for k in ("router-2", "executor-2"))

    # The surviving replicas carried on to the end.
    assert all(code is None for code in survivors.values()), f"{survivors}\n{logs}"
    assert log.settled(run.accepted), f"not settled in {SETTLE_SECONDS}s: {counts}\n{logs}"
    # Every sender's webhook accepted, recorded once under the id it was answered with,
    # routed once, each with its job and its delivery; every job ended once and no action
    # ran twice; every delivery reached the sink and ended once; nothing dead-lettered, no
    # outage counted as a failure of the work.
    check_promises(run, starts, ends, hits, miscounted, counts)
    assert set(starts) <= log.jobs, counts
    # Only a killed executor's jobs may end otherwise than succeeded.
    assert log.job_end_counts()["failed"] == 0, counts
    # Delivered, all of them: nothing here fails.
    assert log.delivery_end_counts() == Counter(succeeded=len(log.deliveries)), counts


def test_the_stream_takes_the_replica_count_in_place(cluster: NatsCluster, prefix: str) -> None:
    """A stream made with one replica gets three when a process starts with
    ``stream_replicas = 3`` (and back), its messages kept."""

    async def run() -> list[tuple[int, int]]:
        seen = []
        for replicas in (1, 3, 1):
            settings = NatsSettings(url=cluster.url, stream_replicas=replicas, connect_timeout=10)
            async with connect(settings, prefix, "test") as bus:
                # The stream's group is elected again after a change: a moment without one.
                for _ in range(100):
                    try:
                        await bus.publish(f"{prefix}.x", f"m{replicas}-{len(seen)}", b"{}")
                        break
                    except nats.errors.Error:
                        await asyncio.sleep(0.1)
                info = await bus.js.stream_info(bus.stream)
                seen.append((info.config.num_replicas or 1, info.state.messages))
        return seen

    assert asyncio.run(run()) == [(1, 1), (3, 2), (1, 3)]


def test_replicas_a_single_server_cannot_hold_are_a_config_error(
    servers: Servers, prefix: str
) -> None:
    async def run() -> None:
        settings = NatsSettings(url=servers.nats_url, stream_replicas=3, connect_timeout=5)
        async with connect(settings, prefix, "test"):
            pass

    with pytest.raises(ConfigError) as info:
        asyncio.run(run())

    assert "nats.stream_replicas = 3" in str(info.value)
