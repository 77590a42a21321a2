"""The SSH action against real SSH servers on loopback: asyncssh's own server in this
process, and OpenSSH's sshd as a child process, each with its own host key and the one
client key it authorises; the executor's handler against a real Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import msgspec
import pytest
from prometheus_client import REGISTRY

from hookbus_common import events as ev
from hookbus_common.consumer import Ack, Consumer, Incoming, Nak, Outcome, Yielded
from hookbus_common.service import Runtime
from hookbus_common.settings import extend
from hookbus_executor.config import ExecutorConfig, ExecutorSettings
from hookbus_executor.jobs import TERMINAL_STEP, Executor
from hookbus_executor.runs import Runs
from hookbus_executor.sshconfig import SshHost, SshSettings

pytestmark = pytest.mark.integration

SSHD = shutil.which("sshd") or next(
    (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SshServer:
    kind: str
    port: int
    user: str
    host_key: asyncssh.SSHKey
    client_key_file: Path
    connections: list[asyncssh.SSHServerConnection]

    @property
    def fingerprint(self) -> str:
        return self.host_key.get_fingerprint("sha256")

    def known_hosts_line(self) -> str:
        pub = self.host_key.export_public_key("openssh").decode().strip()
        return f"[127.0.0.1]:{self.port} {pub}\n"


def _write_key(path: Path, key: asyncssh.SSHKey) -> None:
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)


async def _run_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """Run the requested command as sshd does: through a shell, leading a new session,
    its stdout and stderr copied until every holder has closed them."""
    command = process.command or "exec $SHELL"
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", command,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None

    async def out(reader: asyncio.StreamReader, writer: asyncssh.SSHWriter[bytes]) -> None:
        while data := await reader.read(65536):
            with contextlib.suppress(OSError, asyncssh.Error):
                writer.write(data)

    async def feed(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            while data := await process.stdin.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    feeding = asyncio.create_task(feed(proc.stdin))
    await asyncio.gather(out(proc.stdout, process.stdout), out(proc.stderr, process.stderr))
    code = await proc.wait()
    feeding.cancel()
    with contextlib.suppress(OSError, asyncssh.Error):
        if code < 0:
            process.exit_with_signal(signal.Signals(-code).name.removeprefix("SIG"))
        else:
            process.exit(code)


@contextlib.asynccontextmanager
async def asyncssh_server(base: Path) -> AsyncIterator[SshServer]:
    base.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    _write_key(base / "client_key", client_key)
    connections: list[asyncssh.SSHServerConnection] = []

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            connections.append(conn)

        def connection_requested(
            self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
        ) -> bool:
            # Forwarding, so that it can be its own jump host; loopback only.
            return dest_host == "127.0.0.1"

    authorized = asyncssh.import_authorized_keys(client_key.export_public_key("openssh").decode())
    server = await asyncssh.create_server(
        Server,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=authorized,
        process_factory=_run_process,
        encoding=None,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield SshServer(
            "asyncssh", port, getpass.getuser(), host_key, base / "client_key", connections
        )
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def openssh_server(base: Path) -> AsyncIterator[SshServer]:
    """OpenSSH's sshd in the foreground (-D), as this user, on a free loopback port, with
    everything it reads in ``base``."""
    assert SSHD is not None
    base.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    _write_key(base / "host_key", host_key)
    _write_key(base / "client_key", client_key)
    (base / "authorized_keys").write_bytes(client_key.export_public_key("openssh"))
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPidFile {base / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nMaxSessions 10\n"
        "LogLevel VERBOSE\n"
    )
    if os.geteuid() == 0:
        # sshd's privilege separation needs its empty directory when started as root.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = open(base / "sshd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (base / "sshd.log").read_text()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                assert time.monotonic() < deadline, "sshd did not start listening"
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            break
        yield SshServer("openssh", port, getpass.getuser(), host_key, base / "client_key", [])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------------------- harness


class _Msg:
    async def in_progress(self) -> None:
        pass


@pytest.fixture(params=["asyncssh", "openssh"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SshServer]:
    if request.param == "openssh":
        if SSHD is None:
            # CI installs openssh-server (.ci/run); only a machine without it skips these.
            pytest.skip("OpenSSH's sshd is not installed (apt-get install openssh-server)")
        async with openssh_server(tmp_path / "sshd") as s:
            yield s
    else:
        async with asyncssh_server(tmp_path / "asyncssh") as s:
            yield s


def _host(server: SshServer, **overrides: Any) -> SshHost:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "user": server.user,
        "key_file": str(server.client_key_file),
        "host_key_fingerprint": server.fingerprint,
        "connect_timeout": 10.0,
    }
    fields.update(overrides)
    return SshHost(**fields)


class Replica:
    """One executor's handler, settled the way its consume loop settles a message."""

    def __init__(self, rt: Runtime, hosts: dict[str, SshHost], **executor: Any) -> None:
        executor.setdefault("lease_seconds", 3.0)
        executor.setdefault("kill_grace_seconds", 2.0)
        self.rt = rt
        self.settings = extend(
            rt.settings,
            ExecutorConfig,
            executor=ExecutorSettings(ssh=SshSettings(hosts=hosts), **executor),
        )
        self.stopping = asyncio.Event()
        self.runs = Runs(self.settings.executor, rt.pool, rt.outbox, self.stopping)
        self.executor = Executor(self.settings, self.runs)

    async def outcome(
        self, event: ev.Event[Any], deliveries: int = 1
    ) -> tuple[Outcome, list[ev.Event[Any]]]:
        out: list[ev.Event[Any]] = []

        async def recording(incoming: Incoming) -> AsyncIterator[Yielded]:
            async for item in self.executor.handle(incoming):
                yield item
                # Once committed: a step whose gate held it back records nothing.
                out.extend([item] if isinstance(item, ev.Event) else item)

        consumer = Consumer(
            service="executor", bus=self.rt.bus, outbox=self.rt.outbox, durable="unused",
            filter_subjects=["unused"], handler=recording, max_in_flight=1, max_deliver=5,
            terminal_step=TERMINAL_STEP,
        )  # fmt: skip
        incoming = Incoming(
            event=event,
            subject="s",
            deliveries=deliveries,
            _msg=_Msg(),  # type: ignore[arg-type]
        )
        return await consumer.process(incoming), out

    async def close(self) -> None:
        await self.executor.ssh.close()


@pytest.fixture
async def replicas(rt: Runtime) -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for r in made:
        await r.close()


def _request(
    command: list[str], host: str = "web1", job_id: str = "job_s", **spec: Any
) -> ev.Event[ev.JobRequestedV2]:
    on_interrupt = spec.pop("on_interrupt", "record")
    return ev.make_event(
        ev.JobRequestedV2(
            job_id=job_id, rule="r", webhook_id="evt_w",
            spec=ev.SshSpec(host=host, command=command, **spec),
            context={"HOOKBUS_REPOSITORY": "acme/app", "HOOKBUS_BRANCH": "it's $(main)"},
            payload=msgspec.Raw(b'{"hello": "world"}'),
            on_interrupt=on_interrupt,
        ),
        source="/test",
    )  # fmt: skip


def _runs(host: str, outcome: str) -> float:
    labels = {"host": host, "outcome": outcome}
    return REGISTRY.get_sample_value("hookbus_executor_ssh_runs_total", labels) or 0.0


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (this container's init may not reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def _until(check: Any, what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------ tests


async def test_command_runs_with_its_output_env_and_payload(
    rt: Runtime, server: SshServer, replicas: list[Replica]
) -> None:
    replica = Replica(rt, {"web1": _host(server)})
    replicas.append(replica)
    before = _runs("web1", "succeeded")
    script = 'echo "repo=$HOOKBUS_REPOSITORY branch=$HOOKBUS_BRANCH x=$X job=$HOOKBUS_JOB_ID"; cat; echo; echo "$1"; echo on-stderr >&2'
    req = _request(
        ["sh", "-c", script, "sh", "arg with 'quotes' and $(not run)"],
        env={"X": "a b;c"},
    )
    await rt.outbox.commit([req])
    outcome, out = await replica.outcome(req)
    assert outcome == Ack()
    assert [type(e.data) for e in out] == [ev.JobStarted, ev.JobSucceeded]
    done = out[1].data
    assert done.kind == "ssh"
    assert done.exit_code == 0
    # SSH carries stderr apart from stdout: where its line falls is not exact.
    lines = [line for line in done.output.splitlines() if line != "on-stderr"]
    assert lines == [
        "repo=acme/app branch=it's $(main) x=a b;c job=job_s",
        '{"hello": "world"}',
        "arg with 'quotes' and $(not run)",
    ]
    assert "on-stderr" in done.output
    assert "hookbus-pid" not in done.output
    assert _runs("web1", "succeeded") == before + 1
    # The same job again: nothing runs.
    outcome, again = await replica.outcome(req, deliveries=2)
    assert (outcome, again) == (Ack(), [])


async def test_non_zero_exit_fails_and_output_is_bounded(
    rt: Runtime, server: SshServer, replicas: list[Replica]
) -> None:
    replica = Replica(rt, {"web1": _host(server)}, max_output_bytes=1000)
    replicas.append(replica)
    req = _request(["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; echo boom; exit 3"],
                   payload="none")  # fmt: skip
    await rt.outbox.commit([req])
    outcome, out = await replica.outcome(req)
    assert outcome == Ack()
    done = out[-1].data
    assert isinstance(done, ev.JobFailed)
    assert done.exit_code == 3
    assert done.truncated
    assert done.output_bytes == 100005
    assert done.output.endswith("boom\n")
    assert len(done.output) < 1200


async def test_timeout_ends_the_remote_process_group(
    rt: Runtime, server: SshServer, replicas: list[Replica], tmp_path: Path
) -> None:
    replica = Replica(rt, {"web1": _host(server)}, kill_grace_seconds=1.0)
    replicas.append(replica)
    pids = tmp_path / "pids"
    # The shell ignores SIGTERM; its child sleeps: only a KILL of the whole group ends both.
    script = f"trap '' TERM; sleep 600 & echo $$ $! > {pids}; wait"
    req = _request(["sh", "-c", script], timeout=1.0)
    await rt.outbox.commit([req])
    outcome, out = await replica.outcome(req)
    assert outcome == Ack()
    done = out[-1].data
    assert isinstance(done, ev.JobFailed)
    assert done.timed_out
    shell_pid, sleep_pid = (int(p) for p in pids.read_text().split())
    await _until(lambda: _gone(shell_pid) and _gone(sleep_pid), "the remote processes to end")


async def test_wrong_host_key_is_refused_for_good(
    rt: Runtime, server: SshServer, replicas: list[Replica], tmp_path: Path
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    known = tmp_path / "known_hosts"
    pub = other.export_public_key("openssh").decode().strip()
    known.write_text(f"[127.0.0.1]:{server.port} {pub}\n")
    hosts = {
        "pinned": _host(server, host_key_fingerprint=other.get_fingerprint("sha256")),
        "listed": _host(server, host_key_fingerprint=None, known_hosts=str(known)),
    }
    replica = Replica(rt, hosts)
    replicas.append(replica)
    marker = tmp_path / "ran"
    for name in hosts:
        req = _request(["touch", str(marker)], host=name, job_id=f"job_{name}")
        await rt.outbox.commit([req])
        outcome, out = await replica.outcome(req)
        assert outcome == Ack()
        done = out[-1].data
        assert isinstance(done, ev.JobFailed)
        assert done.error is not None
        assert "host key not accepted" in done.error
    assert not marker.exists()


async def test_known_hosts_file_accepts_the_right_key(
    rt: Runtime, server: SshServer, replicas: list[Replica], tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line())
    replica = Replica(
        rt, {"web1": _host(server, host_key_fingerprint=None, known_hosts=str(known))}
    )
    replicas.append(replica)
    req = _request(["echo", "hi"])
    await rt.outbox.commit([req])
    _, out = await replica.outcome(req)
    assert isinstance(out[-1].data, ev.JobSucceeded)
    assert out[-1].data.output == "hi\n"


async def test_unreachable_host_is_retried_then_failed(
    rt: Runtime, replicas: list[Replica], tmp_path: Path
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "key"
    _write_key(key_file, key)
    closed = free_port()  # nothing listens there
    host = SshHost(
        host="127.0.0.1", port=closed, user="nobody", key_file=str(key_file),
        host_key_fingerprint=key.get_fingerprint("sha256"),
    )  # fmt: skip
    replica = Replica(rt, {"down": host}, max_deliver=3)
    replicas.append(replica)
    req = _request(["true"], host="down")
    await rt.outbox.commit([req])
    before = _runs("down", "unreachable")
    outcome, out = await replica.outcome(req, deliveries=1)
    assert isinstance(outcome, Nak)
    assert [type(e.data) for e in out] == [ev.JobStarted]
    # Nothing ran, so the attempt was handed back: the next try is attempt 1 again.
    outcome, out = await replica.outcome(req, deliveries=2)
    assert isinstance(outcome, Nak)
    assert out[0].data.attempt == 1
    # The last try records the job's end instead of a dead letter.
    outcome, out = await replica.outcome(req, deliveries=3)
    assert outcome == Ack()
    done = out[-1].data
    assert isinstance(done, ev.JobFailed)
    assert done.attempt == 1
    assert done.error is not None
    assert "unreachable" in done.error
    assert _runs("down", "unreachable") == before + 3


async def test_stop_ends_the_remote_command_and_records_it_interrupted(
    rt: Runtime, server: SshServer, replicas: list[Replica], tmp_path: Path
) -> None:
    replica = Replica(rt, {"web1": _host(server)}, kill_grace_seconds=1.0)
    replicas.append(replica)
    pidfile = tmp_path / "pid"
    req = _request(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 600"])
    await rt.outbox.commit([req])
    task = asyncio.create_task(replica.outcome(req))
    await _until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", "the command")
    replica.runs.running["job_s"].interrupt("shutdown")
    outcome, out = await task
    done = out[-1].data
    assert isinstance(done, ev.JobInterrupted)
    assert done.reason == "shutdown"
    assert outcome == Ack()
    pid = int(pidfile.read_text())
    await _until(lambda: _gone(pid), "the remote process to end")


async def test_sessions_share_one_connection_and_respect_the_cap(
    rt: Runtime, server: SshServer, replicas: list[Replica], tmp_path: Path
) -> None:
    replica = Replica(rt, {"web1": _host(server, max_sessions=2)})
    replicas.append(replica)
    log = tmp_path / "log"
    # Each command records how many run at once (a lock-free count through files).
    script = f"echo start >> {log}; sleep 0.5; echo end >> {log}"
    reqs = [_request(["sh", "-c", script], job_id=f"job_{i}") for i in range(4)]
    await rt.outbox.commit(reqs)
    before = (
        REGISTRY.get_sample_value("hookbus_executor_ssh_connections_total", {"host": "web1"}) or 0.0
    )
    results = await asyncio.gather(*(replica.outcome(r) for r in reqs))
    assert all(isinstance(out[-1].data, ev.JobSucceeded) for _, out in results)
    running = peak = 0
    for line in log.read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak <= 2
    after = REGISTRY.get_sample_value("hookbus_executor_ssh_connections_total", {"host": "web1"})
    assert after == before + 1


async def test_a_job_waiting_for_a_session_place_is_not_recorded_started(
    rt: Runtime, server: SshServer, replicas: list[Replica], tmp_path: Path
) -> None:
    # With the host's one place taken, a second job waits for it before its start is
    # recorded: were the executor to die now, that job never ran and runs later, instead
    # of being recorded interrupted.
    replica = Replica(rt, {"web1": _host(server, max_sessions=1)})
    replicas.append(replica)
    gate = tmp_path / "gate"
    first = _request(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"], job_id="job_a")
    second = _request(["echo", "second"], job_id="job_b")
    await rt.outbox.commit([first, second])

    async def started(job_id: str) -> bool:
        async with rt.pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM events WHERE type = $1 AND data::jsonb->>'job_id' = $2",
                    ev.JobStarted.TYPE,
                    job_id,
                )
            )

    running = asyncio.create_task(replica.outcome(first))
    deadline = time.monotonic() + 20
    while not await started("job_a"):
        assert time.monotonic() < deadline, "timed out waiting for the first job to start"
        await asyncio.sleep(0.05)
    waiting = asyncio.create_task(replica.outcome(second))
    await asyncio.sleep(1.0)  # time enough to record a start, were it recorded early
    assert not await started("job_b")
    assert not waiting.done()
    gate.touch()
    (_, out_a), (_, out_b) = await asyncio.gather(running, waiting)
    assert isinstance(out_a[-1].data, ev.JobSucceeded)
    assert [type(e.data) for e in out_b] == [ev.JobStarted, ev.JobSucceeded]
    assert out_b[-1].data.output == "second\n"


async def test_a_command_runs_through_a_jump_host(
    rt: Runtime, server: SshServer, replicas: list[Replica]
) -> None:
    # The server is its own jump host: the second connection is tunnelled through the first.
    hosts = {"bastion": _host(server), "web1": _host(server, jump="bastion")}
    replica = Replica(rt, hosts)
    replicas.append(replica)
    before = REGISTRY.get_sample_value(
        "hookbus_executor_ssh_connections_total", {"host": "bastion"}
    )
    req = _request(["echo", "through"])
    await rt.outbox.commit([req])
    _, out = await replica.outcome(req)
    assert isinstance(out[-1].data, ev.JobSucceeded)
    assert out[-1].data.output == "through\n"
    after = REGISTRY.get_sample_value("hookbus_executor_ssh_connections_total", {"host": "bastion"})
    assert after == (before or 0.0) + 1


async def test_a_connection_lost_mid_run_is_recorded_interrupted_not_repeated(
    rt: Runtime, tmp_path: Path, replicas: list[Replica]
) -> None:
    async with asyncssh_server(tmp_path / "srv") as server:
        replica = Replica(rt, {"web1": _host(server)})
        replicas.append(replica)
        pidfile = tmp_path / "pid"
        req = _request(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 5"])
        await rt.outbox.commit([req])
        task = asyncio.create_task(replica.outcome(req))
        await _until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", "the command")
        for conn in server.connections:
            conn.abort()
        outcome, out = await task
        done = out[-1].data
        assert isinstance(done, ev.JobInterrupted)
        assert (done.reason, done.retrying, done.attempt) == ("connection_lost", False, 1)
        assert outcome == Ack()
        # Its end is recorded: a redelivery runs nothing.
        outcome, again = await replica.outcome(req, deliveries=2)
        assert (outcome, again) == (Ack(), [])
        await _until(lambda: _gone(int(pidfile.read_text())), "the sleep to end by itself")


async def test_accepting_unknown_host_keys_is_logged_loudly(
    rt: Runtime, tmp_path: Path, replicas: list[Replica], caplog: pytest.LogCaptureFixture
) -> None:
    async with asyncssh_server(tmp_path / "srv") as server:
        host = _host(server, host_key_fingerprint=None, insecure_accept_unknown_host_key=True)
        with caplog.at_level(logging.WARNING, logger="hookbus_executor.ssh"):
            replica = Replica(rt, {"lab": host})
            replicas.append(replica)
            req = _request(["true"], host="lab")
            await rt.outbox.commit([req])
            _, out = await replica.outcome(req)
        assert isinstance(out[-1].data, ev.JobSucceeded)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("NOT checked" in w and "lab" in w for w in warnings)  # at start
        assert any("WITHOUT checking its host key" in w for w in warnings)  # per connection


async def test_an_idle_or_broken_connection_is_opened_again_when_needed(
    rt: Runtime, tmp_path: Path, replicas: list[Replica]
) -> None:
    async with asyncssh_server(tmp_path / "srv") as server:
        replica = Replica(rt, {"web1": _host(server)})
        replica.executor.ssh.settings = SshSettings(
            hosts=replica.executor.ssh.settings.hosts, idle_seconds=0.2
        )
        replicas.append(replica)

        def opened() -> float:
            labels = {"host": "web1"}
            value = REGISTRY.get_sample_value("hookbus_executor_ssh_connections_total", labels)
            return value or 0.0

        before = opened()
        for i in range(2):
            req = _request(["echo", str(i)], job_id=f"job_idle{i}")
            await rt.outbox.commit([req])
            _, out = await replica.outcome(req)
            assert out[-1].data.output == f"{i}\n"
            # Closed once idle: the next command opens a new connection.
            await _until(lambda: all(c.is_closed() for c in server.connections), "idle close")
        assert opened() == before + 2
        # Broken under us (the server dropped it between two commands): opened again,
        # at the cost of no retry.
        replica.executor.ssh.settings = SshSettings(hosts=replica.executor.ssh.settings.hosts)
        req = _request(["echo", "kept"], job_id="job_idle_b")
        await rt.outbox.commit([req])
        _, out = await replica.outcome(req)
        assert out[-1].data.output == "kept\n"
        for conn in server.connections:
            conn.abort()
        req = _request(["echo", "after"], job_id="job_idle_c")
        await rt.outbox.commit([req])
        outcome, out = await replica.outcome(req)
        assert outcome == Ack()
        assert isinstance(out[-1].data, ev.JobSucceeded)
        assert out[-1].data.output == "after\n"
        assert opened() == before + 4


async def test_a_command_killed_by_a_signal_records_the_signal(
    rt: Runtime, server: SshServer, replicas: list[Replica]
) -> None:
    replica = Replica(rt, {"web1": _host(server)})
    replicas.append(replica)
    # payload = "none": standard input is empty (cat ends at once), not the payload.
    req = _request(["sh", "-c", "cat; echo read-nothing; kill -s TERM $$"], payload="none")
    await rt.outbox.commit([req])
    outcome, out = await replica.outcome(req)
    assert outcome == Ack()
    done = out[-1].data
    assert isinstance(done, ev.JobFailed)
    assert (done.exit_code, done.signal, done.timed_out) == (None, 15, False)
    assert done.output == "read-nothing\n"


async def test_closing_the_executor_closes_its_kept_connections(
    rt: Runtime, tmp_path: Path, replicas: list[Replica]
) -> None:
    # At shutdown the executor says goodbye to every host rather than dropping them.
    async with asyncssh_server(tmp_path / "srv") as server:
        replica = Replica(rt, {"web1": _host(server)})
        replicas.append(replica)
        req = _request(["echo", "hi"], job_id="job_close")
        await rt.outbox.commit([req])
        _, out = await replica.outcome(req)
        assert out[-1].data.output == "hi\n"
        assert server.connections
        assert not all(c.is_closed() for c in server.connections)  # kept for the next job

        await replica.executor.close()

        await _until(lambda: all(c.is_closed() for c in server.connections), "closed")
