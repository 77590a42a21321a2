"""Run one shell action as its own process group, with bounded output and a hard timeout."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

log = logging.getLogger(__name__)

# After the main process exits, background children may still hold the output pipe;
# this is how long they get to finish writing before the group is killed.
_DRAIN_AFTER_EXIT = 1.0
# Buffered pipe data is still readable after its writers die; collect it, but never hang
# on a writer that escaped the process group (setsid) and so survived the kill.
_DRAIN_AFTER_KILL = 0.5
# A SIGKILLed process is normally reaped within milliseconds; the bound only guards
# against one stuck in uninterruptible sleep.
_REAP_TIMEOUT = 5.0
_GROUP_POLL = 0.02


class ShellSpawnError(OSError):
    """The action's program could not be started (missing, not executable, bad cwd)."""


class ShellResult(msgspec.Struct, frozen=True):
    exit_code: int | None
    """The exit status; None when the process was ended by a signal."""
    signal: int | None
    """The number of the signal that ended the process, if any."""
    timed_out: bool
    duration_ms: float
    """How long the action ran: until it exited, or until its timeout fired."""
    output: str
    """stdout and stderr interleaved, decoded as UTF-8 (invalid bytes replaced), bounded."""
    output_bytes: int
    """Everything the process wrote, including any bytes left out of `output`."""
    truncated: bool
    elapsed_ms: float | None = None
    """From start until the process group was gone and its output read; after a timeout
    this also counts the kill grace and the reaping."""
    stopped: bool = False
    """Ended from outside (``stop`` was set) before it exited by itself."""
    pgid: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.stopped


async def run_shell(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    stdin: bytes | None = None,
    # Not a cancel scope (ASYNC109): expiry must TERM, wait and KILL the whole group and
    # still return a result, which a caller-side asyncio.timeout cannot do.
    timeout: float = 300.0,  # noqa: ASYNC109
    kill_grace: float = 5.0,
    max_output_bytes: int = 64 * 1024,
    on_progress: Callable[[], Awaitable[None]] | None = None,
    progress_interval: float = 10.0,
    on_spawn: Callable[[int], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> ShellResult:
    """Execute `argv` directly (never via a shell) and wait for it and its process group.

    The child gets exactly `env`, leads a new session and process group, and sees `stdin`
    (or /dev/null). On timeout the whole group gets SIGTERM, then SIGKILL after
    `kill_grace`; after a normal exit leftover group members are killed too, so nothing
    started by the action outlives it. `on_progress` is awaited every
    `progress_interval` seconds until the result is ready; its failures are only logged.
    `on_spawn` is awaited with the process group's id as soon as the action runs (to
    record where it is); if it fails, the group is killed and the error propagates.
    Setting `stop` ends the group as a timeout does (SIGTERM, `kill_grace`, SIGKILL) and
    returns a result marked `stopped`. Cancelling the caller SIGKILLs the group before
    CancelledError propagates.
    """
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not a command string")
    if not argv:
        raise ValueError("argv must not be empty")
    if timeout <= 0 or kill_grace < 0 or max_output_bytes < 0 or progress_interval <= 0:
        raise ValueError(
            "timeout and progress_interval must be > 0, kill_grace and max_output_bytes >= 0"
        )

    loop = asyncio.get_running_loop()
    capture = _Capture(max_output_bytes)
    started = time.monotonic()
    global _acting
    _acting += 1
    try:
        popen, out_fd, in_fd = await _start(argv, env=env, cwd=cwd, feed_stdin=stdin is not None)
        try:
            proc = Child(popen)
        except BaseException:
            popen.kill()
            popen.wait()
            _close_fds(out_fd, in_fd)
            raise
    except BaseException:
        _acting -= 1
        raise
    # start_new_session made the child the leader of a group whose id is its pid.
    pgid = proc.pid
    exit_task = proc.exited
    # Both pipes are read and written through the loop's readiness callbacks, and each fd
    # is closed exactly once, here: uvloop's pipe transports close theirs twice (its issue
    # 763), which can close an unrelated descriptor that took the number meanwhile.
    out_pipe = _OutputReader(loop, out_fd, capture)
    in_pipe = None if in_fd is None else _InputWriter(loop, in_fd, stdin or b"")
    heartbeat: _Heartbeat | None = None
    stop_task: asyncio.Future[Any] | None = None
    timed_out = False
    stopped = False
    ran_until: float | None = None
    cancelled = False
    try:
        if on_spawn is not None:
            await on_spawn(pgid)
        if stop is not None:
            stop_task = asyncio.ensure_future(stop.wait())
        if on_progress is not None:
            heartbeat = _Heartbeat(on_progress, progress_interval)
        # The input is written as the child reads it, alongside the output reading, so a
        # big payload cannot deadlock; a child that never reads just leaves it behind.
        out_pipe.start()
        if in_pipe is not None:
            in_pipe.start()

        waits: set[asyncio.Future[Any]] = (
            {exit_task} if stop_task is None else {exit_task, stop_task}
        )
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not exit_task.done():
            stopped = stop_task is not None and stop_task.done()
            timed_out = not stopped
            # What ran was the action up to its timeout (or stop); the termination that
            # follows (up to kill_grace, then reaping) is ours, not the action's.
            ran_until = time.monotonic()
            if stopped:
                log.warning("%s stopped; terminating its process group", argv[0])
            else:
                log.warning(
                    "%s timed out after %.1fs; terminating its process group", argv[0], timeout
                )
            await _terminate_group(pgid, exit_task, kill_grace)

        if not await _settled(out_pipe.lost, _DRAIN_AFTER_EXIT):
            log.info("%s exited but its output pipe is still open; killing leftovers", argv[0])
        if _signal_group(pgid, signal.SIGKILL):
            log.info("killed leftover processes of %s (process group %d)", argv[0], pgid)
    except BaseException:
        cancelled = True
        _signal_group(pgid, signal.SIGKILL)
        raise
    finally:
        if stop_task is not None:
            stop_task.cancel()
        try:
            await _release(
                heartbeat=heartbeat,
                in_pipe=in_pipe,
                out_pipe=out_pipe,
                exit_task=exit_task,
                child=proc,
                pgid=pgid,
                drain=not cancelled,
            )
        finally:
            _acting -= 1

    done = time.monotonic()
    returncode = proc.returncode
    output, truncated = capture.render()
    return ShellResult(
        exit_code=returncode if returncode is not None and returncode >= 0 else None,
        signal=-returncode if returncode is not None and returncode < 0 else None,
        timed_out=timed_out,
        duration_ms=((done if ran_until is None else ran_until) - started) * 1000.0,
        output=output,
        output_bytes=capture.total,
        truncated=truncated,
        elapsed_ms=(done - started) * 1000.0,
        stopped=stopped,
        pgid=pgid,
    )


# Without pidfds (Linux before 5.3), how often a child's exit is looked for.
_EXIT_POLL = 0.05


class Child:
    """A process this executor started, whose exit the event loop learns through a pidfd.

    No child watcher and no thread: the pidfd becomes readable when the process exits, and
    only then is it reaped (``waitpid`` on its own pid, never on any child). This works on
    any event loop, uvloop's included; the spawn itself is ``subprocess.Popen``'s, which
    uses vfork. ``exited`` resolves to the return code (negative: killed by that signal).
    Where the kernel has no pidfds, the exit is looked for every ``_EXIT_POLL`` seconds.
    """

    def __init__(self, popen: subprocess.Popen[bytes], *, use_pidfd: bool = True) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self._fd: int | None = None
        self._poll: asyncio.TimerHandle | None = None
        try:
            if not use_pidfd:
                raise OSError(errno.ENOSYS, "pidfds not used")
            self._fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._poll = self._loop.call_later(_EXIT_POLL, self._look)
        else:
            self._loop.add_reader(self._fd, self._reap)

    def _look(self) -> None:
        self._poll = None
        self._reap()
        if self.returncode is None:
            self._poll = self._loop.call_later(_EXIT_POLL, self._look)

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: its status is lost
            pid, status = self.pid, 0
        if pid == 0:
            return  # not yet (a spurious wake-up)
        self.returncode = os.waitstatus_to_exitcode(status)
        # Popen must not try to reap (or warn about) a process that is gone.
        self._popen.returncode = self.returncode
        self.close()
        if not self.exited.done():
            self.exited.set_result(self.returncode)

    def close(self) -> None:
        """Stop watching (the process has exited, or is given up on)."""
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None


# Actions of this process between their spawn and their release.
_acting = 0
# Spawning blocks the thread that spawns until the child has executed its program (vfork),
# which on a busy machine can take milliseconds, while CPython lets other threads run. An
# action started while others are running is spawned by one of these threads, so the event
# loop goes on meanwhile with the other jobs' commits and messages; one started alone is
# spawned on the loop, which then has nothing else to do and is spared the hand-off.
SPAWN_THREADS = 4
_spawners: ThreadPoolExecutor | None = None


async def _start(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None, feed_stdin: bool
) -> tuple[subprocess.Popen[bytes], int, int | None]:
    spawn = functools.partial(_spawn, argv, env=env, cwd=cwd, feed_stdin=feed_stdin)
    if _acting <= 1:
        return spawn()
    global _spawners
    if _spawners is None:
        _spawners = ThreadPoolExecutor(SPAWN_THREADS, thread_name_prefix="hookbus-spawn")
    started = asyncio.get_running_loop().run_in_executor(_spawners, spawn)
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        # The spawn goes on in its thread; what it starts must not outlive the cancel.
        started.add_done_callback(_abandon)
        raise


def _abandon(started: asyncio.Future[tuple[subprocess.Popen[bytes], int, int | None]]) -> None:
    if started.cancelled() or started.exception() is not None:
        return
    popen, out_fd, in_fd = started.result()
    _signal_group(popen.pid, signal.SIGKILL)
    _close_fds(out_fd, in_fd)
    assert _spawners is not None
    _spawners.submit(popen.wait)  # reaped off the loop; SIGKILL ends it promptly


def _spawn(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None, feed_stdin: bool
) -> tuple[subprocess.Popen[bytes], int, int | None]:
    """Start the process with its output into a pipe (and its input from one): the
    process and our ends of the pipes. Touches no event loop: runs in any thread."""
    # The pipes are ours: the process's exit is known by its pidfd, not by its pipes
    # closing, which a background grandchild can hold open forever.
    out_r, out_w = os.pipe()
    in_r: int | None = None
    in_w: int | None = None
    try:
        if feed_stdin:
            in_r, in_w = os.pipe()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL if in_r is None else in_r,
            stdout=out_w,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        _close_fds(out_r, in_w)
        reason = exc.strerror or str(exc)
        if cwd is not None and exc.filename == cwd:
            reason = f"{reason} (working directory {cwd!r})"
        message = f"cannot execute {argv[0]!r}: {reason}"
        raise (
            ShellSpawnError(message) if exc.errno is None else ShellSpawnError(exc.errno, message)
        ) from exc
    except BaseException:
        _close_fds(out_r, in_w)
        raise
    finally:
        # The child holds its own copies; keeping ours would stop EOF from ever arriving.
        _close_fds(out_w, in_r)
    return popen, out_r, in_w


def _close_fds(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


async def _settled(fut: asyncio.Future[Any], seconds: float) -> bool:
    """Wait up to `seconds` for `fut` without cancelling it; True if it is done."""
    if not fut.done():
        await asyncio.wait({fut}, timeout=max(seconds, 0.0))
    return fut.done()


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal the group; False when it no longer has any members."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member we may not signal (e.g. a setuid program) still counts as present.
        if sig:
            log.warning("not permitted to send signal %d to process group %d", sig, pgid)
    return True


async def _terminate_group(pgid: int, exit_task: asyncio.Future[int], grace: float) -> None:
    deadline = time.monotonic() + grace
    _signal_group(pgid, signal.SIGTERM)
    await _settled(exit_task, grace)
    # The leader may be gone while a descendant that ignores SIGTERM lingers on;
    # it gets the rest of the grace period, not more. Nothing signals "group empty",
    # hence the polling.
    while time.monotonic() < deadline and _signal_group(pgid, 0):  # noqa: ASYNC110
        await asyncio.sleep(_GROUP_POLL)
    _signal_group(pgid, signal.SIGKILL)
    await _settled(exit_task, _REAP_TIMEOUT)


class _Heartbeat:
    """Awaits ``on_progress`` every ``interval`` seconds (counted from the end of the last
    report) until stopped. Between reports only a timer waits, no task: most actions end
    before the first report, and then nothing but the timer was made."""

    def __init__(self, on_progress: Callable[[], Awaitable[None]], interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_progress = on_progress
        self._interval = interval
        self._report: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(interval, self._due)

    def _due(self) -> None:
        self._timer = None
        self._report = self._loop.create_task(self._reporting())

    async def _reporting(self) -> None:
        try:
            await self._on_progress()
        except Exception:
            # A failed progress report must not fail the action it reports on.
            log.exception("on_progress callback failed; the action keeps running")
        self._report = None
        self._timer = self._loop.call_later(self._interval, self._due)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        report = self._report
        if report is not None:
            report.cancel()
            await asyncio.wait({report})


async def _release(
    *,
    heartbeat: _Heartbeat | None,
    in_pipe: _InputWriter | None,
    out_pipe: _OutputReader,
    exit_task: asyncio.Future[int],
    child: Child,
    pgid: int,
    drain: bool,
) -> None:
    """Close everything run_shell opened, so no fd, timer or task outlives it."""
    if heartbeat is not None:
        await heartbeat.stop()

    if in_pipe is not None:
        # Input still unwritten means the child never read it: it is dropped.
        in_pipe.close()

    if drain and out_pipe.watched:
        await _settled(out_pipe.lost, _DRAIN_AFTER_KILL)
    out_pipe.close()

    if not await _settled(exit_task, _REAP_TIMEOUT):
        log.error("process %d survived SIGKILL for %.0fs", pgid, _REAP_TIMEOUT)
        exit_task.cancel()
    child.close()


class _Capture:
    """Keeps the first and the last bytes of a stream, counting what falls in between."""

    def __init__(self, limit: int) -> None:
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data or self._tail_limit == 0:
            return
        if len(data) >= self._tail_limit:
            self._tail = bytearray(data[-self._tail_limit :])
        else:
            self._tail += data
            del self._tail[: len(self._tail) - self._tail_limit]

    def render(self) -> tuple[str, bool]:
        omitted = self.total - len(self._head) - len(self._tail)
        if omitted == 0:
            return (self._head + self._tail).decode("utf-8", errors="replace"), False
        head = self._head.decode("utf-8", errors="replace")
        tail = self._tail.decode("utf-8", errors="replace")
        return f"{head}\n…[{omitted} bytes omitted]…\n{tail}", True


class _PipeEnd:
    """Our end of a pipe to the action, watched through the loop's readiness callbacks and
    closed once, by ``close``, which resolves ``lost``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd: int | None = fd
        self.lost: asyncio.Future[None] = loop.create_future()
        self.watched = False

    def _unwatch(self, fd: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._fd is not None:
            if self.watched:
                self._unwatch(self._fd)
            os.close(self._fd)
            self._fd = None
        if not self.lost.done():
            self.lost.set_result(None)


class _OutputReader(_PipeEnd):
    """Reads the action's output as it comes, never pausing: bytes past the capture bound
    are counted and dropped, so the child cannot block on a full pipe. ``lost`` resolves
    at end of file."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, capture: _Capture) -> None:
        super().__init__(loop, fd)
        self._capture = capture

    def start(self) -> None:
        if self._fd is not None and not self.watched:
            self.watched = True
            os.set_blocking(self._fd, False)
            self._loop.add_reader(self._fd, self._readable)

    def _unwatch(self, fd: int) -> None:
        self._loop.remove_reader(fd)

    def _readable(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._capture.feed(data)
        else:
            self.close()


class _InputWriter(_PipeEnd):
    """Writes ``data`` to the action's input as the child reads it, then closes the pipe so
    the child sees its end. A child that stops reading (EPIPE) just leaves the rest."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, data: bytes) -> None:
        super().__init__(loop, fd)
        self._rest = memoryview(data)

    def start(self) -> None:
        if self._fd is not None:
            os.set_blocking(self._fd, False)
            self._writable()

    def _unwatch(self, fd: int) -> None:
        self._loop.remove_writer(fd)

    def _writable(self) -> None:
        if self._fd is None:
            return
        try:
            while self._rest:
                written = os.write(self._fd, self._rest[:_WRITE_SIZE])
                self._rest = self._rest[written:]
        except (BlockingIOError, InterruptedError):
            if not self.watched:
                self.watched = True
                self._loop.add_writer(self._fd, self._writable)
            return
        except OSError:
            pass  # the child closed its end (EPIPE): what it did not read is dropped
        self._rest = memoryview(b"")
        self.close()


_READ_SIZE = 65536
_WRITE_SIZE = 65536


def find_program(program: str, *, cwd: str | os.PathLike[str], path: str | None) -> str:
    """The file an action's ``program`` (its argv[0]) runs, found the way run_shell's exec
    finds it: a name with a slash relative to ``cwd`` (the action's working directory), a
    bare name in the directories of ``path`` (the action's PATH; ``os.defpath`` when it has
    none), whose relative entries are relative to ``cwd`` as well.

    Raises FileNotFoundError when there is no such file, PermissionError when what is
    there cannot be executed (no execute permission, or a directory). Reads the file
    system only: for checking a config before anything runs.
    """
    if not program:
        raise FileNotFoundError(errno.ENOENT, "empty program name", program)
    if "/" in program:
        candidates = [os.path.join(cwd, program)]
    else:
        dirs = (os.defpath if path is None else path).split(os.pathsep)
        candidates = [os.path.join(cwd, d, program) for d in dirs]
    refused: str | None = None
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        if refused is None and os.path.exists(candidate):
            # exec goes on to the next directory, and reports this only if none has it.
            refused = candidate
    if refused is not None:
        raise PermissionError(errno.EACCES, "not executable", refused)
    raise FileNotFoundError(errno.ENOENT, "not found", program)
