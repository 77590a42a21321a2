"""run_shell against real processes: env isolation, stdin, bounding, timeouts, cleanup."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hookbus_executor import shell
from hookbus_executor.shell import ShellResult, ShellSpawnError, run_shell

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
SH = "/bin/sh"


def _alive(pid: int) -> bool:
    # A killed orphan may sit as a zombie until init reaps it; it is gone all the same.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _until(predicate, what: str, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _pid_from(path: Path) -> int:
    await _until(lambda: path.exists() and path.read_text().endswith("\n"), f"{path.name}")
    return int(path.read_text())


async def test_success_captures_stdout_and_stderr_in_order():
    result = await run_shell([SH, "-c", "echo out; echo err >&2"], env=ENV)

    assert result.ok
    assert result.exit_code == 0
    assert result.signal is None
    assert not result.timed_out
    assert result.output == "out\nerr\n"
    assert result.output_bytes == 8
    assert not result.truncated
    assert result.duration_ms > 0


async def test_nonzero_exit_code():
    result = await run_shell([SH, "-c", "echo failing; exit 3"], env=ENV)

    assert result.exit_code == 3
    assert result.signal is None
    assert not result.ok
    assert result.output == "failing\n"


async def test_death_by_signal_reports_the_signal():
    result = await run_shell([SH, "-c", "kill -KILL $$"], env=ENV)

    assert result.exit_code is None
    assert result.signal == signal.SIGKILL
    assert not result.timed_out
    assert not result.ok


async def test_child_gets_exactly_the_given_env(monkeypatch):
    monkeypatch.setenv("HOOKBUS_TEST_LEAK", "from-parent")

    result = await run_shell(["/usr/bin/env"], env={"ONLY_THIS": "1"})

    assert result.ok
    assert result.output == "ONLY_THIS=1\n"


async def test_inherited_variable_is_unset_unless_passed(monkeypatch):
    monkeypatch.setenv("HOOKBUS_TEST_X", "from-parent")
    script = 'echo "${HOOKBUS_TEST_X-unset}"'

    absent = await run_shell([SH, "-c", script], env=ENV)
    passed = await run_shell([SH, "-c", script], env={**ENV, "HOOKBUS_TEST_X": "given"})

    assert absent.output == "unset\n"
    assert passed.output == "given\n"


async def test_cwd(tmp_path):
    result = await run_shell(["/bin/pwd"], env=ENV, cwd=str(tmp_path))

    assert result.output == f"{tmp_path}\n"


async def test_shell_metacharacters_in_argv_are_not_interpreted():
    args = ["$(id)", ";", "|", "&&", "`id`", "$HOME", "*", "> /tmp/x"]

    result = await run_shell(["/bin/echo", *args], env=ENV)

    assert result.output == " ".join(args) + "\n"


async def test_argv_as_a_string_is_refused():
    with pytest.raises(TypeError, match="not a command string"):
        await run_shell("echo hi", env=ENV)


async def test_stdin_payload_is_delivered():
    payload = b"line one\nline two\x00binary\n"

    result = await run_shell(["/bin/cat"], env=ENV, stdin=payload)

    assert result.ok
    assert result.output.encode() == payload


async def test_without_stdin_the_child_reads_dev_null():
    result = await run_shell(["/bin/cat"], env=ENV, timeout=2)

    assert result.ok
    assert result.output == ""


async def test_large_stdin_to_a_child_that_never_reads_it():
    result = await run_shell(
        [SH, "-c", "echo ignored stdin"], env=ENV, stdin=b"x" * (1 << 20), timeout=2
    )

    assert result.ok
    assert not result.timed_out
    assert result.output == "ignored stdin\n"


async def test_large_stdin_round_trip_while_output_is_read():
    # cat blocks on a full stdout pipe unless output is read while stdin is written.
    payload = bytes(range(256)) * 4096

    result = await run_shell(["/bin/cat"], env=ENV, stdin=payload, timeout=2)

    assert result.ok
    assert result.output_bytes == len(payload)
    assert result.truncated


async def test_output_is_bounded_to_head_and_tail():
    script = "printf HEAD; head -c 1000000 /dev/zero; printf TAIL"

    result = await run_shell([SH, "-c", script], env=ENV, max_output_bytes=1024, timeout=2)

    assert result.ok
    assert result.truncated
    assert result.output_bytes == 1_000_008
    omitted = 1_000_008 - 1024
    assert result.output == (
        "HEAD" + "\0" * 508 + f"\n…[{omitted} bytes omitted]…\n" + "\0" * 508 + "TAIL"
    )


async def test_output_exactly_at_the_bound_is_kept_whole():
    whole = await run_shell(["/usr/bin/printf", "abcdefgh"], env=ENV, max_output_bytes=8)
    cut = await run_shell(["/usr/bin/printf", "abcdefgh"], env=ENV, max_output_bytes=7)

    assert (whole.output, whole.truncated, whole.output_bytes) == ("abcdefgh", False, 8)
    assert (cut.output, cut.truncated, cut.output_bytes) == (
        "abc\n…[1 bytes omitted]…\nefgh",
        True,
        8,
    )


async def test_invalid_utf8_is_replaced():
    result = await run_shell([SH, "-c", r"printf '\377ok'"], env=ENV)

    assert result.output == "\ufffdok"
    assert result.output_bytes == 3


async def test_timeout_terminates_promptly_when_the_group_obeys_sigterm():
    result = await run_shell(["/bin/sleep", "30"], env=ENV, timeout=0.2, kill_grace=60.0)

    assert result.timed_out
    assert not result.ok
    assert result.exit_code is None
    assert result.signal == signal.SIGTERM
    # The group was empty right after SIGTERM, so the minute of grace was not sat out.
    assert result.elapsed_ms is not None
    assert result.elapsed_ms < 30_000


async def test_timeout_kills_the_whole_group_including_a_term_ignoring_grandchild(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(shell, "_DRAIN_AFTER_EXIT", 60.0)
    monkeypatch.setattr(shell, "_DRAIN_AFTER_KILL", 60.0)
    leader_file, grandchild_file = tmp_path / "leader.pid", tmp_path / "grandchild.pid"
    script = """
        echo $$ > "$1"
        sh -c 'trap "" TERM; echo $$ > "$1"; exec sleep 30' grandchild "$2" &
        while [ ! -s "$2" ]; do sleep 0.01; done
        echo started
        sleep 30
    """
    job = asyncio.create_task(
        run_shell(
            [SH, "-c", script, "leader", str(leader_file), str(grandchild_file)],
            env=ENV,
            timeout=0.5,
            kill_grace=0.3,
        )
    )
    leader, grandchild = await _pid_from(leader_file), await _pid_from(grandchild_file)
    assert os.getpgid(grandchild) == leader

    result = await job

    assert result.timed_out
    assert result.signal == signal.SIGTERM
    assert result.output == "started\n"
    # SIGKILL came at the end of the grace period, not from the later leftover sweep
    # (which would only run after the output drain the grandchild keeps open, made a
    # minute long here).
    assert result.elapsed_ms is not None
    assert result.elapsed_ms < 30_000
    await _until(lambda: not _alive(leader), "the leader to die")
    await _until(lambda: not _alive(grandchild), "the TERM-ignoring grandchild to die")


async def test_a_timeout_is_recorded_as_the_time_until_it_fired_not_the_kill_grace():
    # Nothing in the group obeys SIGTERM, so the group lives on for the whole kill grace
    # before SIGKILL: time the action did not spend running.
    timeout, kill_grace = 0.5, 8.0

    result = await run_shell(
        [SH, "-c", 'trap "" TERM; sleep 30; echo never'],
        env=ENV,
        timeout=timeout,
        kill_grace=kill_grace,
    )

    assert result.timed_out
    assert result.signal == signal.SIGKILL
    # The margin is generous but well below the grace that used to be counted in.
    assert timeout * 1000 <= result.duration_ms < (timeout + kill_grace / 2) * 1000
    assert result.elapsed_ms is not None
    assert result.elapsed_ms >= (timeout + kill_grace) * 1000
    assert result.duration_ms < result.elapsed_ms


async def test_background_straggler_is_killed_after_normal_exit():
    # The background sleep holds the output pipe open after the shell has exited.
    started = time.monotonic()

    result = await run_shell([SH, "-c", "sleep 300 & echo $!"], env=ENV, timeout=120)

    assert result.ok
    assert not result.timed_out
    # Not held until the timeout (or the straggler's end) by the pipe it keeps open.
    assert time.monotonic() - started < 60
    straggler = int(result.output)
    await _until(lambda: not _alive(straggler), "the straggler to die")


async def test_cancellation_kills_the_process_group(tmp_path):
    leader_file, child_file = tmp_path / "leader.pid", tmp_path / "child.pid"
    script = 'sleep 30 & echo $! > "$2"; echo $$ > "$1"; wait'
    job = asyncio.create_task(
        run_shell([SH, "-c", script, "sh", str(leader_file), str(child_file)], env=ENV)
    )
    leader, child = await _pid_from(leader_file), await _pid_from(child_file)

    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job

    await _until(lambda: not _alive(leader), "the leader to die")
    await _until(lambda: not _alive(child), "its child to die")


async def test_stop_ends_the_whole_group_and_says_it_was_stopped(tmp_path):
    leader_file, child_file = tmp_path / "leader.pid", tmp_path / "child.pid"
    script = """
        sh -c 'trap "" TERM; echo $$ > "$1"; exec sleep 30' child "$2" &
        while [ ! -s "$2" ]; do sleep 0.01; done
        echo $$ > "$1"
        echo working
        sleep 30
    """
    stop = asyncio.Event()
    job = asyncio.create_task(
        run_shell(
            [SH, "-c", script, "sh", str(leader_file), str(child_file)],
            env=ENV,
            timeout=60,
            kill_grace=0.3,
            stop=stop,
        )
    )
    leader, child = await _pid_from(leader_file), await _pid_from(child_file)

    stop.set()
    result = await job

    assert result.stopped
    assert not result.timed_out
    assert not result.ok
    assert result.signal == signal.SIGTERM
    assert result.output == "working\n"
    assert result.pgid == leader
    await _until(lambda: not _alive(leader), "the leader to die")
    await _until(lambda: not _alive(child), "the TERM-ignoring child to die")


async def test_a_stop_that_comes_after_the_exit_changes_nothing():
    stop = asyncio.Event()

    result = await run_shell([SH, "-c", "echo done"], env=ENV, stop=stop)
    stop.set()

    assert result.ok
    assert not result.stopped


async def test_on_spawn_gets_the_process_group_while_the_action_runs(tmp_path):
    seen: list[tuple[int, bool]] = []

    async def spawned(pgid: int) -> None:
        seen.append((pgid, _alive(pgid)))

    # It waits for its stdin, which is fed only after on_spawn: it is running meanwhile.
    result = await run_shell(
        [SH, "-c", "read x; echo $$"], env=ENV, stdin=b"go\n", on_spawn=spawned
    )

    assert result.ok
    assert seen == [(int(result.output), True)]
    assert result.pgid == int(result.output)


async def test_a_failing_on_spawn_kills_the_group_and_raises(tmp_path):
    leader_file = tmp_path / "leader.pid"
    pgids: list[int] = []

    async def spawned(pgid: int) -> None:
        pgids.append(pgid)
        await _until(lambda: leader_file.exists(), "the action to start")
        raise RuntimeError("cannot record it")

    with pytest.raises(RuntimeError, match="cannot record it"):
        await run_shell([SH, "-c", f"echo $$ > {leader_file}; sleep 30"], env=ENV, on_spawn=spawned)

    await _until(lambda: not _alive(pgids[0]), "the action to die")


async def test_missing_executable_raises_spawn_error_naming_it():
    with pytest.raises(ShellSpawnError, match="hookbus-no-such-program") as caught:
        await run_shell(["/nonexistent/hookbus-no-such-program"], env={"TOKEN": "s3cret"})

    assert isinstance(caught.value, OSError)
    assert "s3cret" not in str(caught.value)


async def test_missing_executable_on_the_given_path_raises_spawn_error():
    with pytest.raises(ShellSpawnError, match="hookbus-no-such-program"):
        await run_shell(["hookbus-no-such-program"], env=ENV)


async def test_non_executable_file_raises_spawn_error(tmp_path):
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)

    with pytest.raises(ShellSpawnError, match=r"not-executable\.sh"):
        await run_shell([str(script)], env=ENV)


async def test_missing_cwd_raises_spawn_error(tmp_path):
    missing = tmp_path / "gone"

    with pytest.raises(ShellSpawnError, match="working directory"):
        await run_shell(["/bin/true"], env=ENV, cwd=str(missing))


async def test_on_progress_is_called_while_the_job_runs():
    calls = 0

    async def progress() -> None:
        nonlocal calls
        calls += 1

    result = await run_shell(
        ["/bin/sleep", "0.35"], env=ENV, on_progress=progress, progress_interval=0.1
    )

    assert result.ok
    assert calls >= 1


async def test_failing_on_progress_is_logged_and_ignored(caplog):
    async def progress() -> None:
        raise RuntimeError("nats is down")

    with caplog.at_level(logging.ERROR, logger="hookbus_executor.shell"):
        result = await run_shell(
            ["/bin/sleep", "0.25"], env=ENV, on_progress=progress, progress_interval=0.1
        )

    assert result.ok
    assert "on_progress callback failed" in caplog.text


def test_result_ok_requires_exit_zero_and_no_timeout():
    base = {
        "signal": None,
        "duration_ms": 1.0,
        "output": "",
        "output_bytes": 0,
        "truncated": False,
    }

    assert ShellResult(exit_code=0, timed_out=False, **base).ok
    assert not ShellResult(exit_code=0, timed_out=True, **base).ok
    assert not ShellResult(exit_code=0, timed_out=False, stopped=True, **base).ok
    assert not ShellResult(exit_code=1, timed_out=False, **base).ok
    assert not ShellResult(exit_code=None, timed_out=False, **base).ok


async def test_a_progress_report_still_under_way_at_the_end_is_cancelled_and_none_follows():
    began: list[float] = []
    cancelled = asyncio.Event()

    async def progress() -> None:
        began.append(time.monotonic())
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    result = await run_shell(
        ["/bin/sleep", "0.3"], env=ENV, on_progress=progress, progress_interval=0.1
    )
    await asyncio.sleep(0.3)

    assert result.ok
    assert cancelled.is_set()
    assert len(began) == 1  # the one under way held up the next


# --------------------------------------------------------------- where actions are spawned


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_an_action_started_alone_is_spawned_on_the_event_loop(monkeypatch):
    spawned_on: list[int] = []
    real = shell._spawn

    def spawn(*args, **kwargs):
        spawned_on.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(shell, "_spawn", spawn)
    result = await run_shell([SH, "-c", "echo alone"], env=ENV)
    assert result.output == "alone\n"
    assert spawned_on == [threading.get_ident()]


async def test_an_action_started_beside_another_is_spawned_while_the_loop_goes_on(
    monkeypatch, tmp_path
):
    # The second spawn is held in its thread until the event loop itself lets it go: were
    # it spawned on the loop, nothing could let it go and it would wait out its bound.
    real = shell._spawn
    loop_ran = threading.Event()
    spawned_on: list[int] = []

    def spawn(*args, **kwargs):
        spawned_on.append(threading.get_ident())
        if len(spawned_on) == 2:
            loop.call_soon_threadsafe(loop_ran.set)
            assert loop_ran.wait(30), "the event loop did not run while an action was spawned"
        return real(*args, **kwargs)

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(shell, "_spawn", spawn)
    marker = tmp_path / "first.pid"
    first = asyncio.create_task(
        run_shell([SH, "-c", 'echo $$ > "$1"; sleep 30', "sh", str(marker)], env=ENV, timeout=60)
    )
    await _pid_from(marker)
    second = await run_shell([SH, "-c", "echo beside"], env=ENV)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert second.output == "beside\n"
    assert loop_ran.is_set()
    assert spawned_on[0] == threading.get_ident() != spawned_on[1]


async def test_a_cancel_during_a_spawn_off_the_loop_ends_what_it_started(monkeypatch, tmp_path):
    real = shell._spawn
    release = threading.Event()
    started: list[int] = []

    def spawn(argv, **kwargs):
        if "late" not in argv:
            return real(argv, **kwargs)
        assert release.wait(30)
        popen, out_fd, in_fd = real(argv, **kwargs)
        started.append(popen.pid)
        return popen, out_fd, in_fd

    monkeypatch.setattr(shell, "_spawn", spawn)
    marker = tmp_path / "first.pid"
    first = asyncio.create_task(
        run_shell([SH, "-c", 'echo $$ > "$1"; sleep 30', "sh", str(marker)], env=ENV, timeout=60)
    )
    await _pid_from(marker)
    fds = _open_fds()
    late = asyncio.create_task(run_shell(["/bin/sleep", "30", "late"], env=ENV, timeout=60))
    await asyncio.sleep(0.05)
    late.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await late
    await _until(lambda: bool(started), "the held spawn to go on", within=10)
    await _until(lambda: not _alive(started[0]), "what the cancelled spawn started to end", 10)
    await _until(lambda: _open_fds() <= fds, "its pipes to be closed", within=10)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_every_pipe_is_closed_once_actions_end(tmp_path):
    # Many actions at once (some spawned off the loop), with input and output: afterwards
    # no descriptor of theirs is left open, and none opened since was closed under us.
    before = _open_fds()
    results = await asyncio.gather(
        *(
            run_shell([SH, "-c", "cat; echo done $1", "sh", str(i)], env=ENV, stdin=b"in\n")
            for i in range(24)
        )
    )
    assert [r.output for r in results] == [f"in\ndone {i}\n" for i in range(24)]
    keeper_r, keeper_w = os.pipe()
    try:
        await run_shell([SH, "-c", "echo after"], env=ENV)
        os.write(keeper_w, b"still mine")
        assert os.read(keeper_r, 32) == b"still mine"
    finally:
        os.close(keeper_r)
        os.close(keeper_w)
    assert _open_fds() <= before
