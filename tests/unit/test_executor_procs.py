"""/proc as the executor reads it: which process a recorded pid is, and ending a group."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from hookbus_executor import procs


def test_this_host_names_the_boot_and_the_pid_namespace():
    host = procs.this_host()
    assert host.id.endswith(os.readlink("/proc/self/ns/pid"))
    assert host.id == procs.this_host().id
    assert host.name


def test_a_pid_with_its_start_time_names_one_process():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        started = procs.start_time(proc.pid)
        assert started is not None
        assert procs.alive(proc.pid, started)
        assert procs.alive(proc.pid, None)
        assert not procs.alive(proc.pid, started + 1)  # a reused pid is someone else
    finally:
        proc.kill()
    # Dead but not reaped yet (a zombie) counts as gone.
    deadline = time.monotonic() + 10
    while procs.alive(proc.pid, started):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.wait()
    assert procs.stat(proc.pid) is None or not procs.alive(proc.pid, started)


def test_a_command_name_with_parentheses_and_spaces_is_read_right(tmp_path):
    odd = tmp_path / "a) b ("
    odd.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(odd), "30"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while (st := procs.stat(proc.pid)) is None or st.pgrp != proc.pid:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert st.state in ("R", "S", "D")
    finally:
        proc.kill()
        proc.wait()


async def test_end_group_ends_every_member_even_one_that_ignores_sigterm():
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "sh -c 'trap \"\" TERM; sleep 30' & wait"], start_new_session=True
    )
    started = procs.start_time(proc.pid)
    deadline = time.monotonic() + 10
    while len(procs.group_members(proc.pid, started)) < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)

    assert await procs.end_group(proc.pid, started, grace=0.3)

    assert procs.group_members(proc.pid, started) == []
    await asyncio.to_thread(proc.wait, 10)


async def test_end_group_leaves_a_group_whose_leader_is_another_process():
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        started = procs.start_time(proc.pid)
        assert started is not None
        assert procs.group_members(proc.pid, started - 1) == []
        assert not await procs.end_group(proc.pid, started - 1, grace=0.1)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("attempt", ["1", "2"])
def test_groups_are_found_by_the_run_their_environment_names(attempt):
    marks = {"HOOKBUS_JOB_ID": "job_procs_test", "HOOKBUS_JOB_ATTEMPT": "1"}
    proc = subprocess.Popen(
        ["sleep", "30"],
        start_new_session=True,
        env={"PATH": os.environ["PATH"], **marks, "HOOKBUS_JOB_ATTEMPT": attempt},
    )
    try:
        # Popen returns once the exec has closed its error pipe, which the kernel does
        # before it lays out the new program's environment: wait until /proc shows it.
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{proc.pid}/environ").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        found = procs.groups_with_env(marks)
        assert (proc.pid in found) == (attempt == "1")
    finally:
        proc.kill()
        proc.wait()
