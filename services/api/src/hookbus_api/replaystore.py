"""The ``replays`` table: each replay job's selection, cursor and counts, so an interrupted
replay resumes where it stopped, and a lock so that only one process runs it at a time."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeAlias

import asyncpg
import msgspec

from hookbus_common.events import ReplayMode, ReplaySelection

Status: TypeAlias = Literal["running", "interrupted", "finished"]


class ReplayJob(msgspec.Struct, frozen=True, kw_only=True):
    replay_id: str
    mode: ReplayMode
    selection: ReplaySelection
    requested_by: str | None
    reason: str | None
    status: Status
    max_seq: int
    cursor_seq: int
    selected: int
    done: int
    rate: float
    created_at: datetime | None = None
    finished_at: datetime | None = None


_COLUMNS = (
    "replay_id, mode, selection::text AS selection, requested_by, reason, status, max_seq,"
    " cursor_seq, selected, done, rate, created_at, finished_at"
)


def _job(row: asyncpg.Record) -> ReplayJob:
    fields = dict(row)
    fields["selection"] = msgspec.json.decode(row["selection"], type=ReplaySelection)
    return msgspec.convert(fields, ReplayJob)


async def create(conn: asyncpg.Connection, job: ReplayJob) -> None:
    await conn.execute(
        "INSERT INTO replays (replay_id, mode, selection, requested_by, reason, status,"
        " max_seq, cursor_seq, selected, done, rate)"
        " VALUES ($1, $2, $3::json, $4, $5, $6, $7, $8, $9, $10, $11)",
        job.replay_id, job.mode, msgspec.json.encode(job.selection).decode(), job.requested_by,
        job.reason, job.status, job.max_seq, job.cursor_seq, job.selected, job.done, job.rate,
    )  # fmt: skip


async def get(conn: asyncpg.Connection, replay_id: str) -> ReplayJob | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM replays WHERE replay_id = $1", replay_id)
    return _job(row) if row else None


async def recent(conn: asyncpg.Connection, limit: int = 20) -> list[ReplayJob]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM replays ORDER BY created_at DESC, replay_id DESC LIMIT $1",
        limit,
    )
    return [_job(r) for r in reversed(rows)]


async def advance(conn: asyncpg.Connection, replay_id: str, cursor_seq: int, done: int) -> None:
    """Record that everything selected up to ``cursor_seq`` is done, ``done`` events more."""
    await conn.execute(
        "UPDATE replays SET cursor_seq = $2, done = done + $3, updated_at = now()"
        " WHERE replay_id = $1",
        replay_id,
        cursor_seq,
        done,
    )


async def set_status(conn: asyncpg.Connection, replay_id: str, status: Status) -> None:
    await conn.execute(
        "UPDATE replays SET status = $2, updated_at = now(),"
        " finished_at = CASE WHEN $2 = 'finished' THEN now() ELSE finished_at END"
        " WHERE replay_id = $1",
        replay_id,
        status,
    )


async def set_rate(conn: asyncpg.Connection, replay_id: str, rate: float) -> None:
    await conn.execute("UPDATE replays SET rate = $2 WHERE replay_id = $1", replay_id, rate)


def _lock_key(replay_id: str) -> str:
    return f"hookbus:replay:{replay_id}"


async def try_lock(conn: asyncpg.Connection, replay_id: str) -> bool:
    """Take the replay's session lock on ``conn``: False while another process runs it. A
    process that dies loses the lock with its connection, so its replay can be resumed."""
    return bool(
        await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", _lock_key(replay_id))
    )


async def unlock(conn: asyncpg.Connection, replay_id: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _lock_key(replay_id))
