"""Endpoints with their state and health, as the operator API shows them, and disabling or
enabling one by hand.

An endpoint is one of the config file (``[endpoints.<name>]``) or one added at run time
(the ``endpoints`` read model); its state is ``disabled`` when ``endpoint_state`` says so
(a 410, failing for ``dispatcher.disable_after``, or a person), else ``paused`` when a
run-time endpoint is paused, else ``active``. Its health is read from the delivery
outcome events of the last 24 hours, which name their endpoint (the ``deliveries`` read
model does not): counts by outcome, the newest success and the newest failed attempt.

Disabling and enabling record the events ``hookbus endpoints disable|enable`` records,
through :func:`state_event` and :func:`record_state`, which the CLI uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg
import msgspec

from hookbus_common import eventlog, readmodels
from hookbus_common import events as ev
from hookbus_common.errors import InvalidError
from hookbus_common.eventlog import Appended, Pending

from .config import EndpointView, shown_url

WINDOW_HOURS: Final = 24

State = Literal["active", "paused", "disabled"]
# "unconfigured": known only by its state (disabled or enabled once, since removed).
Kind = Literal["config", "runtime", "unconfigured"]

_OUT: dict[str, Any] = {"frozen": True, "kw_only": True}


class Outcomes(msgspec.Struct, **_OUT):
    """Deliveries to the endpoint that ended in the window, by how (``dead`` includes those
    not attempted because it was disabled), and its attempts (``failed_attempts``: no 2xx
    answer, or no answer at all)."""

    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    attempts: int = 0
    failed_attempts: int = 0


class AttemptSeen(msgspec.Struct, **_OUT):
    """One attempt at the endpoint: when, which delivery, and what came back."""

    at: datetime
    delivery_id: str
    attempt: int = 1
    status_code: int | None = None
    error: str | None = None


class EndpointHealth(msgspec.Struct, **_OUT):
    """How the endpoint did over the last ``window_hours``: its deliveries by outcome, its
    newest success and newest failed attempt there (null: none in the window), and since
    when every attempt at it has failed (null: the last one did not)."""

    window_hours: int = WINDOW_HOURS
    deliveries: Outcomes = Outcomes()
    last_success: AttemptSeen | None = None
    last_failure: AttemptSeen | None = None
    failing_since: datetime | None = None


class EndpointItem(msgspec.Struct, **_OUT):
    """An endpoint as an operator sees it: where it is defined, where it sends (password
    and query values hidden), its state with why, since when and by whom (null: the
    dispatcher), and its health. Never a secret or a header value."""

    name: str
    kind: Kind
    endpoint_id: str | None = None
    url: str = ""
    description: str = ""
    tenant: str = "default"
    events: list[str] = []
    signing: str = "standard"
    signed: bool = False
    header_names: list[str] = []
    allow_private: bool = False
    state: State = "active"
    reason: str = ""
    since: datetime | None = None
    changed_by: str | None = None
    health: EndpointHealth = EndpointHealth()


class EndpointList(msgspec.Struct, **_OUT):
    items: list[EndpointItem]


class ChangeEndpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why the endpoint is disabled or enabled (recorded with the event)."""

    reason: str | None = None


def parse_change(body: bytes) -> ChangeEndpoint:
    try:
        req = msgspec.json.decode(body or b"{}", type=ChangeEndpoint)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidError(f"body: {exc}") from None
    if req.reason is not None and len(req.reason) > 500:
        raise InvalidError("reason: at most 500 characters")
    return req


# ------------------------------------------------------------------------- state

_STATES = """
SELECT coalesce(s.endpoint, f.endpoint) AS endpoint, s.disabled, s.reason, s.changed_by,
       s.changed_at, f.since
FROM endpoint_state s FULL JOIN endpoint_failing f ON f.endpoint = s.endpoint
"""


async def state_rows(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, asyncpg.Record]:
    """Each endpoint's row of ``endpoint_state`` and its failure streak, by name
    (``disabled``, ``reason``, ``changed_by``, ``changed_at``, ``since``)."""
    return {r["endpoint"]: r for r in await conn.fetch(_STATES)}


def state_event(
    name: str,
    tenant: str,
    *,
    enable: bool,
    by: str | None,
    reason: str | None,
    source: str,
    recover_since: datetime | None = None,
) -> ev.Event[ev.EndpointStateChanged]:
    """The endpoint.enabled or endpoint.disabled event a person's change records."""
    data: ev.EndpointStateChanged
    if enable:
        data = ev.EndpointEnabled(
            endpoint=name, reason=reason or "", by=by, tenant=tenant, recover_since=recover_since
        )
    else:
        data = ev.EndpointDisabled(
            endpoint=name, reason=reason or f"disabled by {by or 'hand'}", by=by, tenant=tenant
        )
    return ev.make_event(data, source=source, subject=name, tenant=tenant)


async def record_state(
    conn: asyncpg.Connection, prefix: str, event: ev.Event[ev.EndpointStateChanged]
) -> list[Appended]:
    """Append the change and project it, in one transaction; the failure streak starts
    again from here either way. The caller publishes what was appended (or the relay)."""
    async with conn.transaction():
        inserted, _ = await eventlog.insert(conn, prefix, [Pending(event)])
        await readmodels.project(conn, inserted)
        await conn.execute("DELETE FROM endpoint_failing WHERE endpoint = $1", event.data.endpoint)
    return inserted


# ---------------------------------------------------------------------- reading

_RUNTIME = """
SELECT endpoint, endpoint_id, tenant, url, description, events, paused, created_by,
       created_at, updated_at
FROM endpoints WHERE $1::text IS NULL OR endpoint = $1 ORDER BY endpoint
"""
# The newest endpoint.paused of each paused run-time endpoint: why and since when.
_PAUSES = """
SELECT DISTINCT ON (data->>'endpoint_id') data->>'endpoint_id' AS endpoint_id, time,
       data->>'reason' AS reason, data->>'by' AS by
FROM events WHERE type = $1 AND data->>'endpoint_id' = ANY($2::text[])
ORDER BY data->>'endpoint_id', seq DESC
"""
# An attempt failed at the endpoint's end as the dispatcher counts it (delivery._failed):
# no 2xx answer, or an error other than a request that could not be built.
_FAILED_ATTEMPT = (
    "type = $2 AND CASE WHEN (data->>'status_code') IS NOT NULL"
    " THEN (data->>'status_code')::int NOT BETWEEN 200 AND 299"
    " ELSE (data->>'error') IS NOT NULL"
    " AND (data->>'error') NOT LIKE 'request cannot be sent%' END"
)
# Outcome events of the window name their endpoint; the events_time index bounds the scan.
_HEALTH = f"""
SELECT data->>'endpoint' AS endpoint,
       count(*) FILTER (WHERE type = $2) AS attempts,
       count(*) FILTER (WHERE {_FAILED_ATTEMPT}) AS failed_attempts,
       count(*) FILTER (WHERE type = $3) AS succeeded,
       count(*) FILTER (WHERE type = $4) AS failed,
       count(*) FILTER (WHERE type = $5) AS dead,
       max(seq) FILTER (WHERE type = $3) AS success_seq,
       max(seq) FILTER (WHERE {_FAILED_ATTEMPT}) AS failure_seq
FROM events
WHERE time >= now() - make_interval(hours => $1) AND type = ANY(ARRAY[$2, $3, $4, $5])
  AND data->>'endpoint' IS NOT NULL AND ($6::text IS NULL OR data->>'endpoint' = $6)
GROUP BY data->>'endpoint'
"""
_SEEN = "SELECT seq, time, data::text AS data FROM events WHERE seq = ANY($1::bigint[])"


async def _health(
    conn: asyncpg.Connection, name: str | None, failing: dict[str, datetime | None]
) -> dict[str, EndpointHealth]:
    rows = await conn.fetch(
        _HEALTH, WINDOW_HOURS, ev.DeliveryAttempted.TYPE, ev.DeliverySucceeded.TYPE,
        ev.DeliveryFailed.TYPE, ev.DeliveryDead.TYPE, name,
    )  # fmt: skip
    seqs = [s for r in rows for s in (r["success_seq"], r["failure_seq"]) if s is not None]
    seen: dict[int, AttemptSeen] = {}
    for r in await conn.fetch(_SEEN, seqs) if seqs else []:
        d = msgspec.json.decode(r["data"], type=ev.DeliveryOutcome)
        seen[r["seq"]] = AttemptSeen(
            at=r["time"], delivery_id=d.delivery_id, attempt=d.attempt,
            status_code=d.status_code, error=d.error,
        )  # fmt: skip
    out = {}
    for r in rows:
        out[r["endpoint"]] = EndpointHealth(
            deliveries=Outcomes(
                succeeded=r["succeeded"], failed=r["failed"], dead=r["dead"],
                attempts=r["attempts"], failed_attempts=r["failed_attempts"],
            ),
            last_success=seen.get(r["success_seq"]),
            last_failure=seen.get(r["failure_seq"]),
            failing_since=failing.get(r["endpoint"]),
        )  # fmt: skip
    return out


async def listing(
    conn: asyncpg.Connection, configured: Sequence[EndpointView], name: str | None = None
) -> list[EndpointItem]:
    """Every endpoint (or the one named) with its state and health, by name."""
    states = await state_rows(conn)
    runtime = {r["endpoint"]: r for r in await conn.fetch(_RUNTIME, name)}
    config = {v.name: v for v in configured if name is None or v.name == name}
    paused_ids = [r["endpoint_id"] for r in runtime.values() if r["paused"]]
    pauses = (
        {r["endpoint_id"]: r for r in await conn.fetch(_PAUSES, ev.EndpointPaused.TYPE, paused_ids)}
        if paused_ids
        else {}
    )
    failing = {n: r["since"] for n, r in states.items()}
    health = await _health(conn, name, failing)
    names = set(config) | set(runtime) | {n for n in states if name is None or n == name}
    items = []
    for n in sorted(names):
        fields: dict[str, Any] = {"name": n}
        if (c := config.get(n)) is not None:
            fields |= msgspec.structs.asdict(c) | {"kind": "config"}
        elif (rt := runtime.get(n)) is not None:
            fields |= {
                "kind": "runtime", "endpoint_id": rt["endpoint_id"], "url": shown_url(rt["url"]),
                "description": rt["description"], "tenant": rt["tenant"],
                "events": list(rt["events"]), "signed": True, "since": rt["created_at"],
                "changed_by": rt["created_by"],
            }  # fmt: skip
            if rt["paused"]:
                p = pauses.get(rt["endpoint_id"])
                fields |= {"state": "paused", "since": rt["updated_at"]}
                if p is not None:
                    fields |= {
                        "reason": p["reason"] or "",
                        "since": p["time"],
                        "changed_by": p["by"],
                    }
        else:
            fields["kind"] = "unconfigured"
        s = states.get(n)
        if s is not None and s["disabled"] is not None:
            if s["disabled"]:
                fields["state"] = "disabled"
            if s["disabled"] or fields.get("state") != "paused":
                fields |= {
                    "reason": s["reason"] or "", "since": s["changed_at"],
                    "changed_by": s["changed_by"],
                }  # fmt: skip
        fields["health"] = health.get(n) or EndpointHealth(failing_since=failing.get(n))
        items.append(EndpointItem(**fields))
    return items


async def one(
    conn: asyncpg.Connection, configured: Sequence[EndpointView], name: str
) -> EndpointItem | None:
    found = await listing(conn, configured, name)
    return found[0] if found else None
