"""Run one SSH action: a command on a configured host, with bounded output and a timeout
that ends the remote process group, over a connection shared by the host's commands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signals
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncssh
from prometheus_client import Counter, Histogram

from hookbus_common.errors import RetryableError

from .shell import ShellResult
from .shell import _Capture as Capture
from .sshcommand import MarkerReader, kill_command, new_nonce, remote_command
from .sshconfig import SshHost, SshSettings

log = logging.getLogger(__name__)

# After the command exits, what it left in the background may hold the channel open; this
# is how long it gets before its process group is killed.
_DRAIN_AFTER_EXIT = 1.0
# A kill command, and the channel closing after it, are bounded by this.
_KILL_TIMEOUT = 10.0

RUNS = Counter(
    "hookbus_executor_ssh_runs_total",
    "SSH actions by host and outcome (succeeded, failed, timed_out, stopped, lost,"
    " unreachable, refused)",
    ["host", "outcome"],
)
RUN_SECONDS = Histogram(
    "hookbus_executor_ssh_run_seconds",
    "How long SSH actions ran on each host (connection set-up included)",
    ["host"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
CONNECTIONS = Counter(
    "hookbus_executor_ssh_connections_total",
    "SSH connections opened, by host",
    ["host"],
)


class SshUnreachable(RetryableError):
    """The host could not be reached (refused, timed out, no route, closed mid-handshake):
    nothing ran, and it may work later."""


class SshRefused(Exception):
    """The host can never be used as configured: its key did not match, or it refused our
    login. Recorded as the job's failure, not retried."""


class SshConnectionLost(Exception):
    """The connection ended while the command ran: how the command ended is unknown."""

    def __init__(self, message: str, result: ShellResult) -> None:
        super().__init__(message)
        self.result = result


def count(host: str, outcome: str) -> None:
    RUNS.labels(host, outcome).inc()


def ssh_outcome(result: ShellResult) -> str:
    """How a command that ran ended, as the runs counter names it."""
    if result.stopped:
        return "stopped"
    if result.timed_out:
        return "timed_out"
    return "succeeded" if result.ok else "failed"


class _Client(asyncssh.SSHClient):
    """Checks the host key against a pinned fingerprint, when one is configured."""

    def __init__(self, name: str, fingerprint: str | None) -> None:
        self._name = name
        self._fingerprint = fingerprint

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        if self._fingerprint is None:
            return False
        seen = key.get_fingerprint("sha256")
        if seen != self._fingerprint:
            log.error(
                "ssh host key of %s does not match its pinned fingerprint", self._name,
                extra={"ssh_host": self._name, "expected": self._fingerprint, "seen": seen},
            )  # fmt: skip
            return False
        return True


class _Host:
    def __init__(self, name: str, config: SshHost) -> None:
        self.name = name
        self.config = config
        self.sessions = asyncio.Semaphore(config.max_sessions)
        self.lock = asyncio.Lock()
        self.conn: asyncssh.SSHClientConnection | None = None
        self.users = 0
        self.idle: asyncio.TimerHandle | None = None


class SshHosts:
    """The configured hosts: one connection per host, opened when first needed, shared by
    up to ``max_sessions`` commands at once and closed after ``idle_seconds`` unused."""

    def __init__(
        self,
        settings: SshSettings,
        keys: Mapping[str, asyncssh.SSHKey],
        resolve_path: Callable[[str], Path],
    ) -> None:
        self.settings = settings
        self._keys = dict(keys)
        self._resolve = resolve_path
        self._hosts = {name: _Host(name, h) for name, h in settings.hosts.items()}
        library = logging.getLogger("asyncssh")
        if library.level == logging.NOTSET:
            # asyncssh logs every connection, channel and command line at INFO: noise
            # next to our own records (as the NATS client's is).
            library.setLevel(max(logging.WARNING, logging.getLogger().level))
        for name, h in settings.hosts.items():
            if h.insecure_accept_unknown_host_key:
                log.warning(
                    "ssh host %s: its host key is NOT checked"
                    " (insecure_accept_unknown_host_key = true); anyone on the path can pose"
                    " as it and receive its commands and payloads",
                    name,
                    extra={"ssh_host": name},
                )

    def __contains__(self, name: str) -> bool:
        return name in self._hosts

    @contextlib.asynccontextmanager
    async def place(self, name: str) -> AsyncIterator[None]:
        """One of ``name``'s ``max_sessions`` places, held by a job before it is recorded
        as started: a job that waits for a place has not started, so an executor that dies
        meanwhile leaves it to run later, not recorded as interrupted. ``session(name,
        placed=True)`` then uses the place held."""
        async with self._hosts[name].sessions:
            yield

    @contextlib.asynccontextmanager
    async def session(
        self, name: str, *, placed: bool = False
    ) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """A connection to ``name`` with one of its session places held (``placed``: the
        caller holds one already, from ``place``)."""
        host = self._hosts[name]
        async with contextlib.nullcontext() if placed else host.sessions:
            host.users += 1
            if host.idle is not None:
                host.idle.cancel()
                host.idle = None
            try:
                yield await self._connection(host)
            finally:
                host.users -= 1
                if host.users == 0 and host.conn is not None:
                    loop = asyncio.get_running_loop()
                    host.idle = loop.call_later(self.settings.idle_seconds, self._close_idle, host)

    def _close_idle(self, host: _Host) -> None:
        host.idle = None
        if host.users != 0 or host.conn is None:
            return
        host.conn.close()
        host.conn = None
        # The jump hosts it went through, unless something else still uses them.
        jump = host.config.jump
        while jump is not None:
            j = self._hosts[jump]
            through = any(
                h.conn is not None and h.config.jump == jump for h in self._hosts.values()
            )
            if j.users or j.conn is None or through:
                break
            j.conn.close()
            j.conn = None
            jump = j.config.jump

    async def reconnect(self, name: str) -> asyncssh.SSHClientConnection:
        """A connection to ``name`` in place of one found closed (its place kept)."""
        return await self._connection(self._hosts[name])

    async def _connection(self, host: _Host) -> asyncssh.SSHClientConnection:
        async with host.lock:
            if host.conn is not None and not host.conn.is_closed():
                return host.conn
            host.conn = None
            tunnel: asyncssh.SSHClientConnection | None = None
            if host.config.jump is not None:
                # Held open for as long as the connection through it.
                tunnel = await self._connection(self._hosts[host.config.jump])
            host.conn = await self._connect(host, tunnel)
            return host.conn

    async def _connect(
        self, host: _Host, tunnel: asyncssh.SSHClientConnection | None
    ) -> asyncssh.SSHClientConnection:
        c = host.config
        known_hosts: Any
        if c.insecure_accept_unknown_host_key:
            log.warning(
                "ssh host %s: connecting WITHOUT checking its host key", host.name,
                extra={"ssh_host": host.name},
            )  # fmt: skip
            known_hosts = None
        elif c.known_hosts is not None:
            known_hosts = str(self._resolve(c.known_hosts))
        else:
            # No key trusted up front: each is asked of _Client, which compares it with
            # the pinned fingerprint.
            known_hosts = asyncssh.SSHKnownHosts()
        options: dict[str, Any] = {
            "port": c.port,
            "username": c.user,
            "client_keys": [self._keys[host.name]],
            "known_hosts": known_hosts,
            # Nothing of this machine's own SSH set-up: no ~/.ssh/config, no agent, no
            # keys of the executor's user; passwords and keyboard prompts never.
            "config": None,
            "agent_path": None,
            "password_auth": False,
            "kbdint_auth": False,
            "connect_timeout": c.connect_timeout,
            "keepalive_interval": self.settings.keepalive_seconds,
            "tunnel": tunnel,
        }
        try:
            conn, _ = await asyncssh.create_connection(
                lambda: _Client(host.name, c.host_key_fingerprint), c.host, **options
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise SshRefused(
                f"ssh host {host.name} ({c.host}:{c.port}): host key not accepted ({exc.reason})"
            ) from None
        except asyncssh.PermissionDenied as exc:
            raise SshRefused(
                f"ssh host {host.name} ({c.host}:{c.port}): login as {c.user!r} refused"
                f" ({exc.reason})"
            ) from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            raise SshUnreachable(
                f"ssh host {host.name} ({c.host}:{c.port}) unreachable: {_describe(exc)}"
            ) from exc
        CONNECTIONS.labels(host.name).inc()
        log.info("ssh connection to %s opened", host.name, extra={"ssh_host": host.name})
        return conn

    async def close(self) -> None:
        conns = []
        for host in self._hosts.values():
            if host.idle is not None:
                host.idle.cancel()
                host.idle = None
            if host.conn is not None:
                conns.append(host.conn)
                host.conn = None
        # Targets before the jump hosts they go through.
        for conn in reversed(conns):
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.wait_closed()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class _Session(asyncssh.SSHClientSession[bytes]):
    def __init__(self, capture: Capture, marker: MarkerReader) -> None:
        self._capture = capture
        self._marker = marker
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.exited = asyncio.Event()
        self.closed = asyncio.Event()
        self.error: Exception | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            data = self._marker.feed(data)
        if data:
            self._capture.feed(data)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status
        self.exited.set()

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc
        rest = self._marker.flush()
        if rest:
            self._capture.feed(rest)
        self.closed.set()


def signal_number(name: str | None) -> int | None:
    """The number of a signal as SSH names it (``TERM``), if this platform knows it."""
    if not name:
        return None
    try:
        return int(signals.Signals[f"SIG{name.upper()}"])
    except KeyError:
        return None


async def run_ssh(
    hosts: SshHosts,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: bytes | None = None,
    timeout: float = 300.0,  # noqa: ASYNC109 - ends the remote group, then returns a result
    kill_grace: float = 5.0,
    max_output_bytes: int = 64 * 1024,
    on_progress: Callable[[], Awaitable[None]] | None = None,
    progress_interval: float = 10.0,
    on_spawn: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    placed: bool = False,
) -> ShellResult:
    """Run ``argv`` on host ``name`` with ``env`` exported and ``stdin`` (else nothing) on
    its standard input, and wait until it ends (``placed``: the caller holds one of the
    host's places already, ``SshHosts.place``).

    On timeout (or when ``stop`` is set) the remote process group gets SIGTERM, then
    SIGKILL after ``kill_grace``, each over a second channel of the same connection.
    Raises ValueError for an argv or env that cannot be sent, SshUnreachable when no
    session could be opened (nothing ran), SshRefused when the host's key or our login
    was refused, SshConnectionLost when the connection ended under the running command.
    ``on_spawn`` is awaited once the command has been started.
    """
    nonce = new_nonce()
    command = remote_command(argv, env, nonce)
    capture = Capture(max_output_bytes)
    marker = MarkerReader(nonce)
    started = time.monotonic()
    try:
        async with hosts.session(name, placed=placed) as conn:
            session = _Session(capture, marker)
            for last in (False, True):
                try:
                    # Bounded: a connection whose peer vanished silently answers nothing
                    # until its keepalives give up.
                    async with asyncio.timeout(hosts.settings.hosts[name].connect_timeout):
                        chan = await _open(conn, session, command)
                    break
                except (OSError, TimeoutError, asyncssh.Error) as exc:
                    if isinstance(exc, TimeoutError):
                        conn.abort()
                    if not last and conn.is_closed():
                        # The kept connection had died since its last use: once more,
                        # on a new one.
                        session = _Session(capture, marker)
                        conn = await hosts.reconnect(name)
                        continue
                    # Nothing ran: the host is away, or refused another channel.
                    raise SshUnreachable(
                        f"ssh host {name}: cannot open a session: {_describe(exc)}"
                    ) from exc
            try:
                result = await _attend(
                    conn, chan, session, marker, capture, argv=argv, name=name, stdin=stdin,
                    timeout=timeout, kill_grace=kill_grace, on_progress=on_progress,
                    progress_interval=progress_interval, on_spawn=on_spawn, stop=stop,
                    started=started,
                )  # fmt: skip
            finally:
                chan.close()
    finally:
        RUN_SECONDS.labels(name).observe(time.monotonic() - started)
    return result


async def _open(
    conn: asyncssh.SSHClientConnection, session: _Session, command: str
) -> asyncssh.SSHClientChannel[bytes]:
    chan, _ = await conn.create_session(lambda: session, command, encoding=None)
    return chan


async def _attend(
    conn: asyncssh.SSHClientConnection,
    chan: asyncssh.SSHClientChannel[bytes],
    session: _Session,
    marker: MarkerReader,
    capture: Capture,
    *,
    argv: Sequence[str],
    name: str,
    stdin: bytes | None,
    timeout: float,  # noqa: ASYNC109
    kill_grace: float,
    on_progress: Callable[[], Awaitable[None]] | None,
    progress_interval: float,
    on_spawn: Callable[[], Awaitable[None]] | None,
    stop: asyncio.Event | None,
    started: float,
) -> ShellResult:
    heartbeat: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[Any] | None = None
    exited = asyncio.ensure_future(session.closed.wait())
    ended_by_itself = asyncio.ensure_future(session.exited.wait())
    timed_out = stopped = False
    ran_until: float | None = None
    try:
        if on_spawn is not None:
            await on_spawn()
        if stdin:
            chan.write(stdin)
        chan.write_eof()
        if on_progress is not None:
            heartbeat = asyncio.create_task(_heartbeat(on_progress, progress_interval))
        waits: set[asyncio.Future[Any]] = {exited}
        if stop is not None:
            stop_task = asyncio.ensure_future(stop.wait())
            waits.add(stop_task)
        waits.add(ended_by_itself)
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if ended_by_itself.done() and not exited.done():
            # Exited; what it left in the background may still hold the channel.
            await asyncio.wait({exited}, timeout=_DRAIN_AFTER_EXIT)
            if not exited.done():
                log.info("%s on %s exited but left processes holding its output; killing"
                         " them", argv[0], name)  # fmt: skip
                await _signal(conn, marker.pid, chan, "KILL", name)
                await asyncio.wait({exited}, timeout=_KILL_TIMEOUT)
        elif not exited.done():
            stopped = stop_task is not None and stop_task.done()
            timed_out = not stopped
            ran_until = time.monotonic()
            log.warning(
                "%s on %s %s; terminating its remote process group",
                argv[0], name, "stopped" if stopped else f"timed out after {timeout:.1f}s",
            )  # fmt: skip
            await _signal(conn, marker.pid, chan, "TERM", name)
            await asyncio.wait({exited}, timeout=kill_grace)
            if not exited.done():
                await _signal(conn, marker.pid, chan, "KILL", name)
                await asyncio.wait({exited}, timeout=_KILL_TIMEOUT)
    except BaseException:
        # Cancelled: the remote command must not run on unattended.
        if not exited.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(_signal(conn, marker.pid, chan, "KILL", name))
        raise
    finally:
        exited.cancel()
        ended_by_itself.cancel()
        if stop_task is not None:
            stop_task.cancel()
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.wait({heartbeat})

    done = time.monotonic()
    output, truncated = capture.render()
    result = ShellResult(
        exit_code=session.exit_status,
        signal=signal_number(session.exit_signal),
        timed_out=timed_out,
        duration_ms=((done if ran_until is None else ran_until) - started) * 1000.0,
        output=output,
        output_bytes=capture.total,
        truncated=truncated,
        elapsed_ms=(done - started) * 1000.0,
        stopped=stopped,
        pgid=None,
    )
    if (
        session.exit_status is None
        and session.exit_signal is None
        and not timed_out
        and not stopped
    ):
        raise SshConnectionLost(
            f"ssh host {name}: the connection ended while {argv[0]!r} ran"
            + (f" ({_describe(session.error)})" if session.error is not None else ""),
            result,
        )
    return result


async def _signal(
    conn: asyncssh.SSHClientConnection,
    pid: int | None,
    chan: asyncssh.SSHClientChannel[bytes],
    signal_name: str,
    name: str,
) -> None:
    """Signal the remote command's process group over a second channel; without its pid
    (its marker never came), ask the server to signal the session, and close it."""
    if pid is not None:
        try:
            async with asyncio.timeout(_KILL_TIMEOUT):
                await conn.run(kill_command(pid, signal_name), check=False, stdin=asyncssh.DEVNULL)
            return
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            log.warning("could not signal the remote process group on %s: %s", name,
                        _describe(exc), extra={"ssh_host": name})  # fmt: skip
    with contextlib.suppress(OSError, asyncssh.Error):
        chan.send_signal(signal_name)
    if signal_name == "KILL":
        chan.close()


async def _heartbeat(on_progress: Callable[[], Awaitable[None]], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await on_progress()
        except Exception:
            log.exception("on_progress callback failed; the action keeps running")
