"""``hookbus deliveries list | show ID``: outbound deliveries and notifications, each
attempt with its time, status, duration, error and the start of the answer."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from hookbus_api.replayselect import parse_time

from .config import core_settings
from .database import connection

STATUSES = ("pending", "retrying", "succeeded", "failed", "dead")

REQUESTED = "io.hookbus.delivery.requested.v1"
REPLAYED = "io.hookbus.delivery.replayed.v1"


class Delivery(msgspec.Struct, kw_only=True):
    """One delivery as people see it (the read model joined with its request)."""

    delivery_id: str
    status: str
    attempts: int
    rule: str
    tenant: str
    # Where: an endpoint's name, a notification channel's name, or the URL.
    endpoint: str | None = None
    notification: str | None = None
    url: str = ""
    last_status_code: int | None = None
    last_error: str | None = None
    requested_at: datetime
    updated_at: datetime
    correlation_id: str
    request_id: str
    webhook_id: str = ""
    replay_of: str | None = None
    # Deliveries that replay this one (hookbus dlq replay).
    replayed_as: list[str] = []

    def destination(self) -> str:
        if self.notification:
            return f"notification:{self.notification}"
        return self.endpoint or self.url


class Attempt(msgspec.Struct, kw_only=True):
    attempt: int
    time: datetime
    outcome: str
    status_code: int | None = None
    duration_ms: float = 0.0
    error: str | None = None
    response_body: str | None = None
    next_attempt_at: datetime | None = None


_SELECT = f"""
SELECT d.delivery_id, d.status, d.attempts, d.rule, d.tenant, d.url, d.last_status_code,
       d.last_error, d.requested_at, d.updated_at, d.correlation_id,
       r.id AS request_id, r.data::text AS request,
       ARRAY(SELECT x.data->>'delivery_id' FROM events x
             WHERE x.correlation_id = d.correlation_id AND x.type = '{REPLAYED}'
               AND x.data->>'replay_of' = d.delivery_id ORDER BY x.seq) AS replayed_as
FROM deliveries d
JOIN LATERAL (
    SELECT e.id, e.data FROM events e
    WHERE e.correlation_id = d.correlation_id AND e.type = '{REQUESTED}'
      AND e.data->>'delivery_id' = d.delivery_id
    ORDER BY e.seq LIMIT 1
) r ON true
"""

_FILTERS = """
WHERE ($1::text[] IS NULL OR d.status = ANY($1))
  AND ($2::text IS NULL OR r.data->>'endpoint' = $2 OR r.data->>'notification' = $2)
  AND ($3::text IS NULL OR d.tenant = $3)
  AND ($4::timestamptz IS NULL OR d.updated_at >= $4)
"""


def _delivery(row: asyncpg.Record) -> Delivery:
    req: dict[str, Any] = msgspec.json.decode(row["request"])
    return Delivery(
        delivery_id=row["delivery_id"],
        status=row["status"],
        attempts=row["attempts"],
        rule=row["rule"],
        tenant=row["tenant"],
        endpoint=req.get("endpoint"),
        notification=req.get("notification"),
        url=row["url"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        requested_at=row["requested_at"],
        updated_at=row["updated_at"],
        correlation_id=row["correlation_id"],
        request_id=row["request_id"],
        webhook_id=req.get("webhook_id", ""),
        replay_of=req.get("replay_of"),
        replayed_as=[r for r in row["replayed_as"] if r],
    )


async def select(
    conn: asyncpg.Connection,
    *,
    statuses: Sequence[str] | None = None,
    endpoint: str | None = None,
    tenant: str | None = None,
    since: datetime | None = None,
    limit: int | None = 50,
    not_replayed: bool = False,
) -> list[Delivery]:
    """Deliveries, newest change first, narrowed by each filter given."""
    sql = _SELECT + _FILTERS
    if not_replayed:
        sql += (
            f" AND NOT EXISTS (SELECT 1 FROM events x WHERE x.correlation_id = d.correlation_id"
            f" AND x.type = '{REPLAYED}' AND x.data->>'replay_of' = d.delivery_id)"
        )
    sql += " ORDER BY d.updated_at DESC, d.delivery_id LIMIT $5"
    rows = await conn.fetch(
        sql, list(statuses) if statuses else None, endpoint, tenant, since, limit
    )
    return [_delivery(r) for r in rows]


async def get(conn: asyncpg.Connection, delivery_id: str) -> Delivery | None:
    row = await conn.fetchrow(_SELECT + " WHERE d.delivery_id = $1", delivery_id)
    return None if row is None else _delivery(row)


async def attempts(conn: asyncpg.Connection, d: Delivery) -> list[Attempt]:
    """Every attempt at ``d`` and its outcome, in order (from the log)."""
    rows = await conn.fetch(
        "SELECT type, time, data::text AS data FROM events"
        " WHERE correlation_id = $1 AND type LIKE 'io.hookbus.delivery.%'"
        " AND type NOT IN ($3, $4) AND data->>'delivery_id' = $2 ORDER BY seq",
        d.correlation_id,
        d.delivery_id,
        REQUESTED,
        REPLAYED,
    )
    out = []
    for r in rows:
        data: dict[str, Any] = msgspec.json.decode(r["data"])
        outcome = r["type"].removeprefix("io.hookbus.delivery.").rsplit(".", 1)[0]
        out.append(
            Attempt(
                attempt=int(data.get("attempt", 0)),
                time=r["time"],
                outcome=outcome,
                status_code=data.get("status_code"),
                duration_ms=float(data.get("duration_ms", 0.0)),
                error=data.get("error"),
                response_body=data.get("response_body"),
                next_attempt_at=data.get("next_attempt_at"),
            )
        )
    return out


# --------------------------------------------------------------------- output


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str | None, width: int) -> str:
    one = " ".join((text or "").split())
    return one if len(one) <= width else one[: width - 1] + "…"


def table(rows: Sequence[Delivery]) -> str:
    """Deliveries as an aligned table for people."""
    head = ("DELIVERY", "STATUS", "TRIES", "LAST", "UPDATED", "TO", "RULE", "ERROR")
    lines = [head]
    for d in rows:
        status = d.status + (" (replayed)" if d.replayed_as else "")
        last = str(d.last_status_code) if d.last_status_code is not None else "-"
        lines.append((
            d.delivery_id, status, str(d.attempts), last, _ts(d.updated_at),
            _short(d.destination(), 40), d.rule, _short(d.last_error, 60),
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    ).rstrip()


def show(d: Delivery, tries: Sequence[Attempt]) -> str:
    lines = [
        f"delivery:    {d.delivery_id}",
        f"status:      {d.status}",
        f"to:          {d.destination()}",
        f"rule:        {d.rule}",
        f"tenant:      {d.tenant}",
        f"webhook:     {d.webhook_id}",
        f"requested:   {_ts(d.requested_at)}",
    ]
    if d.replay_of:
        lines.append(f"replay of:   {d.replay_of}")
    if d.replayed_as:
        lines.append(f"replayed as: {', '.join(d.replayed_as)}")
    lines.append(f"attempts:    {len([t for t in tries if t.outcome == 'attempted'])}")
    for t in tries:
        status = str(t.status_code) if t.status_code is not None else "-"
        text = f"  #{t.attempt} {_ts(t.time)} {t.outcome:<9} {status:>3} {t.duration_ms:7.0f} ms"
        if t.error:
            text += f"  {_short(t.error, 200)}"
        lines.append(text)
        if t.response_body and t.outcome == "attempted":
            lines.append(f"       response: {_short(t.response_body, 200)}")
        if t.next_attempt_at:
            lines.append(f"       next attempt due {t.next_attempt_at}")
    return "\n".join(lines)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# -------------------------------------------------------------------- commands


def since_arg(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text, datetime.now(UTC))
    except ValueError as exc:
        raise SystemExit(f"hookbus: --since: {exc}") from None


def cmd_list(args: argparse.Namespace) -> int:
    settings = core_settings(args)
    since = since_arg(args.since)

    async def run() -> list[Delivery]:
        async with connection(settings.database) as conn:
            return await select(
                conn,
                statuses=[args.status] if args.status else None,
                endpoint=args.endpoint,
                tenant=args.tenant,
                since=since,
                limit=args.limit,
            )

    rows = asyncio.run(run())
    if args.json:
        for d in rows:
            print(_json(d))
    elif rows:
        print(table(rows))
    else:
        print("no deliveries", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    settings = core_settings(args)

    async def run() -> tuple[Delivery | None, list[Attempt]]:
        async with connection(settings.database) as conn:
            d = await get(conn, args.id)
            return d, (await attempts(conn, d) if d is not None else [])

    d, tries = asyncio.run(run())
    if d is None:
        print(f"hookbus: no delivery {args.id}", file=sys.stderr)
        return 1
    if args.json:
        print(_json({**msgspec.to_builtins(d), "history": msgspec.to_builtins(tries)}))
    else:
        print(show(d, tries))
    return 0


def add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", metavar="NAME", help="to this endpoint or notification channel")
    p.add_argument("--tenant", help="of this tenant")
    p.add_argument("--since", metavar="TIME", help="changed at or after TIME (ISO 8601, or 2h)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("deliveries", help="outbound deliveries and their attempts")
    cmds = p.add_subparsers(dest="deliveries_command", required=True)
    ls = cmds.add_parser("list", help="recent deliveries, newest change first")
    add_filters(ls)
    ls.add_argument("--status", choices=STATUSES, help="in this status")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="JSON, one delivery a line")
    ls.set_defaults(func=cmd_list)
    sh = cmds.add_parser("show", help="one delivery and every attempt at it")
    sh.add_argument("id", metavar="ID", help="the delivery id (dlv_…)")
    sh.add_argument("--json", action="store_true", help="as one JSON object")
    sh.set_defaults(func=cmd_show)
