"""What a replay (or a tail) selects: times as people write them, type and event globs,
and the one SQL query that finds a replay's events in the log."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from hookbus_common import events as ev
from hookbus_common.eventlog import LoggedEvent, raw_event
from hookbus_common.events import ReplayMode, ReplaySelection

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_VERSIONED = re.compile(r"\.v\d+$")


def parse_time(text: str, now: datetime) -> datetime:
    """``2h``, ``90m``, ``1d12h`` (that long before ``now``), or an ISO 8601 time or date;
    a time without an offset is UTC, as ``hookbus events`` shows times. ValueError says why
    not."""
    value = text.strip()
    if value and _RELATIVE.sub("", value) == "" and _RELATIVE.match(value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _RELATIVE.findall(value))
        return now - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give an ISO 8601 time (2026-11-22T07:00:00Z), a date,"
            " or how long ago (30m, 2h, 1d)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def type_glob(pattern: str) -> str:
    """A type pattern as people write it, made whole: ``job.*`` is ``io.hookbus.job.*``,
    and ``job.failed`` (no version) is ``io.hookbus.job.failed.v*``."""
    full = pattern if pattern.startswith("io.") else f"io.hookbus.{pattern}"
    if not full.endswith("*") and not _VERSIONED.search(full):
        full += ".v*"
    return full


def like(glob: str) -> str:
    """A shell-style glob (``*``, ``?``) as a SQL LIKE pattern escaped with backslash."""
    out = []
    for ch in glob:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


class _Params:
    """Numbered query parameters: each value is added once and named ``$n``."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _conditions(sel: ReplaySelection, mode: ReplayMode, p: _Params) -> list[str]:
    conds: list[str] = []
    if mode == "redrive":
        # Only webhooks as received are redriven; a replay names its original.
        conds.append(f"type = {p(ev.WebhookReceived.TYPE)}")
    if sel.type:
        conds.append(f"type LIKE {p(like(type_glob(sel.type)))}")
    if sel.since:
        conds.append(f"time >= {p(sel.since)}")
    if sel.until:
        conds.append(f"time < {p(sel.until)}")
    if sel.tenant:
        conds.append(f"tenant = {p(sel.tenant)}")
    if sel.correlation:
        conds.append(f"correlation_id = {p(sel.correlation)}")
    if sel.source or sel.event:
        # Chains whose root is a webhook (received, or a replay of one) from this source.
        root = [f"r.type IN ({p(ev.WebhookReceived.TYPE)}, {p(ev.WebhookReplayed.TYPE)})"]
        if sel.source:
            root.append(
                f"coalesce(r.data->'webhook'->>'source', r.data->>'source') = {p(sel.source)}"
            )
        if sel.event:
            root.append(
                "coalesce(r.data->'webhook'->>'event_type', r.data->>'event_type')"
                f" LIKE {p(like(sel.event))}"
            )
        # EXISTS: one index lookup per candidate, where IN would gather every root anew
        # for each batch.
        root.append("r.id = events.correlation_id")
        conds.append(f"EXISTS (SELECT 1 FROM events r WHERE {' AND '.join(root)})")
    outcomes: list[str] = []
    if sel.failed_jobs:
        # A job's end: failed, or interrupted for good (a retrying interruption is not one).
        outcomes.append(
            f"o.type = {p(ev.JobFailed.TYPE)} OR (o.type = {p(ev.JobInterrupted.TYPE)}"
            " AND NOT coalesce((o.data->>'retrying')::boolean, false))"
        )
    if sel.dead_deliveries:
        outcomes.append(f"o.type = {p(ev.DeliveryDead.TYPE)}")
    if outcomes:
        conds.append(
            "EXISTS (SELECT 1 FROM events o WHERE o.correlation_id = events.correlation_id"
            f" AND ({' OR '.join(f'({o})' for o in outcomes)}))"
        )
    return conds


_COLUMNS = (
    "seq, id, type, source, subject, bus_subject, tenant, correlation_id, causation_id, time, data"
)


def count_query(sel: ReplaySelection, mode: ReplayMode, *, upto: int) -> tuple[str, list[Any]]:
    """How many events the selection holds among those up to log sequence ``upto``."""
    p = _Params()
    conds = [f"seq <= {p(upto)}", *_conditions(sel, mode, p)]
    return f"SELECT count(*) FROM events WHERE {' AND '.join(conds)}", p.values


def batch_query(
    sel: ReplaySelection, mode: ReplayMode, *, after: int, upto: int, limit: int
) -> tuple[str, list[Any]]:
    """The next ``limit`` selected events after log sequence ``after``, in log order."""
    p = _Params()
    conds = [f"seq > {p(after)}", f"seq <= {p(upto)}", *_conditions(sel, mode, p)]
    where = " AND ".join(conds)
    return f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY seq LIMIT {p(limit)}", p.values


def page_query(
    sel: ReplaySelection, *, after: int | None = None, before: int | None = None, limit: int
) -> tuple[str, list[Any]]:
    """A page of the events the selection holds, for listings (the operator API): those
    after log sequence ``after`` in log order, else those before ``before`` (or the newest)
    newest first."""
    p = _Params()
    conds = _conditions(sel, "republish", p)
    if after is not None:
        conds.insert(0, f"seq > {p(after)}")
        order = "seq"
    else:
        if before is not None:
            conds.insert(0, f"seq < {p(before)}")
        order = "seq DESC"
    where = " AND ".join(conds) or "true"
    return (
        f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY {order} LIMIT {p(limit)}",
        p.values,
    )


async def page(
    conn: asyncpg.Connection,
    sel: ReplaySelection,
    *,
    after: int | None = None,
    before: int | None = None,
    limit: int,
) -> list[LoggedEvent]:
    sql, args = page_query(sel, after=after, before=before, limit=limit)
    return [_logged(r) for r in await conn.fetch(sql, *args)]


async def last_seq(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))


async def count(conn: asyncpg.Connection, sel: ReplaySelection, mode: ReplayMode, upto: int) -> int:
    sql, args = count_query(sel, mode, upto=upto)
    return int(await conn.fetchval(sql, *args))


async def batch(
    conn: asyncpg.Connection,
    sel: ReplaySelection,
    mode: ReplayMode,
    *,
    after: int,
    upto: int,
    limit: int,
) -> list[LoggedEvent]:
    sql, args = batch_query(sel, mode, after=after, upto=upto, limit=limit)
    return [_logged(r) for r in await conn.fetch(sql, *args)]


def _logged(row: asyncpg.Record) -> LoggedEvent:
    return LoggedEvent(
        seq=row["seq"],
        bus_subject=row["bus_subject"],
        event=raw_event(row),
    )


def describe(sel: ReplaySelection) -> str:
    """The selection in one line for people (``all events`` when nothing narrows it)."""
    parts: list[str] = []
    if sel.since:
        parts.append(f"since {sel.since.isoformat()}")
    if sel.until:
        parts.append(f"until {sel.until.isoformat()}")
    for name, value in (
        ("source", sel.source),
        ("event", sel.event),
        ("type", sel.type),
        ("tenant", sel.tenant),
        ("correlation", sel.correlation),
    ):
        if value:
            parts.append(f"{name} {value}")
    outcomes = [n for n, on in (("failed jobs", sel.failed_jobs),
                                ("dead deliveries", sel.dead_deliveries)) if on]  # fmt: skip
    if outcomes:
        parts.append("with " + " or ".join(outcomes))
    return ", ".join(parts) or "everything"


def selection(
    *,
    now: datetime,
    since: str | None = None,
    until: str | None = None,
    source: str | None = None,
    event: str | None = None,
    type: str | None = None,
    tenant: str | None = None,
    correlation: str | None = None,
    failed_jobs: bool = False,
    dead_deliveries: bool = False,
) -> ReplaySelection:
    """A selection from options as given on the command line; ValueError says what is wrong."""
    start = parse_time(since, now) if since else None
    end = parse_time(until, now) if until else None
    if start and end and end <= start:
        raise ValueError(f"--until ({end.isoformat()}) is not after --since ({start.isoformat()})")
    return ReplaySelection(
        since=start,
        until=end,
        source=source or None,
        event=event or None,
        type=type or None,
        tenant=tenant or None,
        correlation=correlation or None,
        failed_jobs=failed_jobs,
        dead_deliveries=dead_deliveries,
    )
