"""Multi-event rules: a rule that fires when one event of each of its ``[[rules.events]]``
arrived with the same key within a window (see docs/rules.md, "Rules over several events").

The waiting state is a row of ``rule_waits`` per (rule, key) in Postgres, so it outlives
a router and is shared by every replica. Each arrival is one statement that inserts or
updates the row under its primary key (``ARRIVE``): the arrival that completes the set,
and only that one, closes the row and names itself ``fired_by``. The statement is
idempotent per event id (``seen``): a redelivered event changes nothing, and a redelivered
completing event fires again with the same derived ids, which the log refuses as
duplicates. A periodic sweep in every router (``FOR UPDATE SKIP LOCKED``) closes waits
whose window passed and records each as ``rule.wait.expired``.

``transition`` is the same logic in Python (for the unit tests and for the in-memory
store): the SQL and it must agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import asyncpg
import msgspec

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_common.eventlog import event_from_row
from hookbus_common.events import Event, RuleEvaluation, WebhookReceived, WebhookReplayed
from hookbus_common.outbox import Outbox

from . import conditions, templates
from .templates import RenderError, Template

if TYPE_CHECKING:
    from .config import Rule
    from .rules import CompiledRule, Facts

log = logging.getLogger(__name__)

SOURCE: Final = "/hookbus/router"
# Event ids kept per row to recognise redeliveries (the newest; far more than can be in
# flight for one key at once).
SEEN_KEPT: Final = 64
# Closed rows are kept this long (to recognise late redeliveries), then deleted.
CLOSED_KEPT: Final = timedelta(days=1)

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


# ------------------------------------------------------------------------ config


def parse_window(value: str | float, at: str) -> float:
    """A window in seconds from ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"`` or a number."""
    if isinstance(value, bool):
        raise ConfigError(f'{at}: expected a duration such as "1h", got {value!r}')
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _WINDOW.match(value)
        if m is None:
            raise ConfigError(
                f'{at}: {value!r} is not a duration (a number with s, m, h or d, like "1h")'
            )
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{at}: a window must be longer than 0 seconds")
    return seconds


@dataclass(frozen=True, slots=True)
class Part:
    """One of the events a rule waits for, compiled: its filters and condition."""

    index: int
    compiled: CompiledRule


@dataclass(frozen=True, slots=True)
class MultiEvent:
    parts: tuple[Part, ...]
    key: Template | str
    window: float

    def match(self, hook: WebhookReceived, facts: Facts) -> tuple[int | None, RuleEvaluation]:
        """The first part ``hook`` is an event of (None: none), and the rule's evaluation
        as a single event shows it (never matched: a multi-event rule fires only when
        its events are all there)."""
        misses: list[RuleEvaluation] = []
        name = self.parts[0].compiled.rule.name
        for part in self.parts:
            result = part.compiled.evaluate(hook, facts)
            if result.matched:
                try:
                    key = self.render_key(facts)
                except RenderError as exc:
                    return None, RuleEvaluation(
                        rule=name,
                        matched=False,
                        reason=f"events[{part.index}] matched, but the key failed: {exc}",
                        failed="key",
                    )
                return part.index, RuleEvaluation(
                    rule=name,
                    matched=False,
                    reason=f"events[{part.index}] of {len(self.parts)} matched: waits for the"
                    f" others with key {key!r}",
                    failed="events",
                )
            misses.append(result)
        first = misses[0]
        return None, msgspec.structs.replace(
            first,
            reason="no event of the rule matched: "
            + "; ".join(f"events[{i}]: {m.reason}" for i, m in enumerate(misses)),
            failed=f"events[0].{first.failed}",
        )

    def render_key(self, facts: Facts) -> str:
        if isinstance(self.key, str):
            return self.key
        key = self.key.render(facts.doc)
        if not key.strip():
            raise RenderError("key: rendered empty")
        return key


def compile_multi(rule: Rule, where: str) -> MultiEvent | None:
    """The parts, key and window of a multi-event rule (None for a rule of one event);
    ConfigError names ``where`` and the part."""
    from .rules import CompiledRule, check_globs

    if not rule.events:
        for name in ("key", "window"):
            if getattr(rule, name) is not None:
                raise ConfigError(
                    f"{where}: {name}: only a rule over several events ([[rules.events]])"
                    f" has a {name}"
                )
        return None
    if len(rule.events) < 2:
        raise ConfigError(
            f"{where}: events: a rule over several events needs two or more [[rules.events]]"
            " (for one, put its filters on the rule itself)"
        )
    for name in ("source", "event", "repository", "branch"):
        if getattr(rule, name) != "*":
            raise ConfigError(
                f"{where}: {name}: a rule over several events has its filters in each"
                " [[rules.events]], not on the rule"
            )
    if rule.when is not None:
        raise ConfigError(
            f"{where}: when: a rule over several events has its conditions in each"
            " [[rules.events]], not on the rule"
        )
    if rule.key is None:
        raise ConfigError(
            f'{where}: key: a rule over several events needs a key (such as "{{{{ event.commit'
            ' }}") that joins its events'
        )
    if rule.window is None:
        raise ConfigError(
            f'{where}: window: a rule over several events needs a window (such as "1h")'
        )
    window = parse_window(rule.window, f"{where}: window")
    key = templates.compile_text(rule.key, f"{where}: key") or rule.key
    parts = []
    for i, spec in enumerate(rule.events):
        at = f"{where}: events[{i}]"
        part_rule = msgspec.structs.replace(
            rule,
            events=[],
            key=None,
            window=None,
            source=spec.source,
            event=spec.event,
            repository=spec.repository,
            branch=spec.branch,
            when=spec.when,
        )
        check_globs(part_rule, at)
        try:
            condition = (
                conditions.compile_condition(spec.when, "when") if spec.when is not None else None
            )
        except ConfigError as exc:
            raise ConfigError(f"{at}.{exc}") from None
        parts.append(Part(i, CompiledRule(part_rule, condition)))
    return MultiEvent(tuple(parts), key, window)


# ------------------------------------------------------------------- the wait rows


@dataclass(frozen=True, slots=True)
class Arrival:
    """One event of part ``part`` of ``rule`` arriving with ``key`` at ``now``."""

    rule: str
    key: str
    part: int
    of: int
    event_id: str
    now: datetime
    window: float
    tenant: str = "default"
    correlation_id: str = ""


@dataclass(frozen=True, slots=True)
class WaitRow:
    rule: str
    key: str
    of: int
    arrived: dict[str, str]
    seen: tuple[str, ...]
    first_seen: datetime
    expires_at: datetime
    open: bool
    fired_by: str | None = None
    fired_parts: dict[str, str] | None = None
    fired_at: datetime | None = None
    tenant: str = "default"
    correlation_id: str = ""


Verdict = Literal["fired", "waiting", "duplicate", "expired"]


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    row: WaitRow

    @property
    def events(self) -> list[str]:
        """A firing's events in the order of the rule's parts."""
        parts = self.row.fired_parts or {}
        return [parts[str(i)] for i in range(self.row.of) if str(i) in parts]


def _complete(arrived: Mapping[str, str], of: int) -> bool:
    return all(str(i) in arrived for i in range(of))


def transition(row: WaitRow | None, a: Arrival) -> tuple[WaitRow | None, Verdict]:
    """The row after ``a`` (None: unchanged) and what it means. The same as ``ARRIVE``."""
    if row is not None and a.event_id in row.seen:
        return None, "fired" if row.fired_by == a.event_id else "duplicate"
    if row is not None and row.open and row.expires_at <= a.now:
        return None, "expired"  # the sweep records it first; then the event starts anew
    mine = {str(a.part): a.event_id}
    seen = (*(row.seen if row else ()), a.event_id)[-SEEN_KEPT:]
    if row is None or not row.open:
        arrived, first, expires = mine, a.now, a.now + timedelta(seconds=a.window)
        correlation = a.correlation_id
    else:
        # The first event of a part stays; a later one of the same part only joins `seen`.
        arrived, first, expires = {**mine, **row.arrived}, row.first_seen, row.expires_at
        correlation = row.correlation_id
    base = WaitRow(
        rule=a.rule,
        key=a.key,
        of=a.of,
        arrived=arrived,
        seen=seen,
        first_seen=first,
        expires_at=expires,
        open=True,
        fired_by=row.fired_by if row else None,
        fired_parts=row.fired_parts if row else None,
        fired_at=row.fired_at if row else None,
        tenant=a.tenant,
        correlation_id=correlation,
    )
    if not _complete(arrived, a.of):
        return base, "waiting"
    closed = dataclasses.replace(
        base, arrived={}, open=False, fired_by=a.event_id, fired_parts=arrived, fired_at=a.now
    )
    return closed, "fired"


def verdict_of(row: WaitRow, event_id: str, applied: bool) -> Verdict:
    """What a row the arrival statement returned means for ``event_id``."""
    if applied:
        return "fired" if not row.open and row.fired_by == event_id else "waiting"
    if event_id in row.seen:
        return "fired" if row.fired_by == event_id else "duplicate"
    return "expired"


class Store(Protocol):
    async def arrive(self, a: Arrival) -> Outcome: ...

    async def load(self, ids: Sequence[str]) -> dict[str, Event[Any]]: ...


class MemoryStore:
    """The wait rows in memory (tests, the bench): the same transitions as Postgres."""

    def __init__(self, known: Mapping[str, Event[Any]] | None = None) -> None:
        self.rows: dict[tuple[str, str], WaitRow] = {}
        self.known: dict[str, Event[Any]] = dict(known or {})

    async def arrive(self, a: Arrival) -> Outcome:
        row = self.rows.get((a.rule, a.key))
        new, verdict = transition(row, a)
        if new is not None:
            self.rows[(a.rule, a.key)] = new
        current = new or row
        assert current is not None
        return Outcome(verdict, current)

    async def load(self, ids: Sequence[str]) -> dict[str, Event[Any]]:
        return {i: self.known[i] for i in ids if i in self.known}


# The arrival: one statement, inserting or updating the row under its primary key. The
# update is skipped for an event the row has seen (a redelivery) and for an open wait
# whose window passed (the sweep records it first); the row is then read as it is.
_COLS = (
    "rule, wait_key, parts, arrived, seen, first_seen, expires_at, open, fired_by,"
    " fired_parts, fired_at, tenant, correlation_id"
)
ARRIVE: Final = f"""
WITH up AS (
    INSERT INTO rule_waits AS w ({_COLS}, updated_at)
    VALUES ($1::text, $2::text, $3::integer, jsonb_build_object($4::text, $5::text),
            ARRAY[$5::text], $6::timestamptz, $6::timestamptz + make_interval(secs => $7::float8),
            true, NULL, NULL, NULL, $8::text, $9::text, $6::timestamptz)
    ON CONFLICT (rule, wait_key) DO UPDATE SET
        (arrived, open, fired_by, fired_parts, fired_at, first_seen, expires_at,
         correlation_id) = (
            SELECT CASE WHEN m.done THEN '{{}}'::jsonb ELSE m.merged END,
                   NOT m.done,
                   CASE WHEN m.done THEN $5 ELSE w.fired_by END,
                   CASE WHEN m.done THEN m.merged ELSE w.fired_parts END,
                   CASE WHEN m.done THEN $6 ELSE w.fired_at END,
                   CASE WHEN w.open THEN w.first_seen ELSE EXCLUDED.first_seen END,
                   CASE WHEN w.open THEN w.expires_at ELSE EXCLUDED.expires_at END,
                   CASE WHEN w.open THEN w.correlation_id ELSE EXCLUDED.correlation_id END
            FROM (SELECT merged,
                         (SELECT count(*) FROM jsonb_object_keys(merged)) >= $3 AS done
                  FROM (SELECT CASE WHEN w.open THEN EXCLUDED.arrived || w.arrived
                                    ELSE EXCLUDED.arrived END AS merged) x) m
        ),
        seen = (w.seen || $5::text)[greatest(1, cardinality(w.seen) + 2 - {SEEN_KEPT}):],
        parts = $3,
        tenant = $8,
        updated_at = $6
    WHERE NOT ($5::text = ANY (w.seen)) AND NOT (w.open AND w.expires_at <= $6)
    RETURNING {", ".join(f"w.{c.strip()}" for c in _COLS.split(","))}
)
SELECT true AS applied, * FROM up
UNION ALL
SELECT false, {_COLS} FROM rule_waits
WHERE rule = $1 AND wait_key = $2 AND NOT EXISTS (SELECT 1 FROM up)
"""


def _row(r: asyncpg.Record) -> WaitRow:
    return WaitRow(
        rule=r["rule"],
        key=r["wait_key"],
        of=r["parts"],
        arrived=_json(r["arrived"]) or {},
        seen=tuple(r["seen"]),
        first_seen=r["first_seen"],
        expires_at=r["expires_at"],
        open=r["open"],
        fired_by=r["fired_by"],
        fired_parts=_json(r["fired_parts"]),
        fired_at=r["fired_at"],
        tenant=r["tenant"],
        correlation_id=r["correlation_id"],
    )


def _json(value: str | None) -> dict[str, str] | None:
    return None if value is None else msgspec.json.decode(value, type=dict[str, str])


_OPEN_DUE: Final = f"""
SELECT {_COLS} FROM rule_waits
WHERE open AND expires_at <= $1 AND ($2::text IS NULL OR (rule = $2 AND wait_key = $3))
ORDER BY expires_at
LIMIT $4
FOR UPDATE SKIP LOCKED
"""


def expired_event(row: WaitRow) -> Event[ev.RuleWaitExpired]:
    """The record of a wait whose window passed (one id per wait, whoever notices)."""
    data = ev.RuleWaitExpired(
        rule=row.rule,
        key=row.key,
        arrived=dict(row.arrived),
        missing=[i for i in range(row.of) if str(i) not in row.arrived],
        first_seen=row.first_seen,
        expires_at=row.expires_at,
    )
    wait = f"{row.rule}/{row.key}/{row.first_seen.isoformat()}"
    event = ev.make_event(
        data, source=SOURCE, id=ev.derived_id(wait, "wait/expired"), tenant=row.tenant
    )
    first = min(row.arrived.items(), default=None)
    return msgspec.structs.replace(
        event,
        correlationid=row.correlation_id or event.correlationid,
        causationid=first[1] if first else None,
    )


class PgStore:
    """The wait rows in Postgres, and the events they name from the log."""

    def __init__(self, pool: asyncpg.Pool, outbox: Outbox) -> None:
        self.pool = pool
        self.outbox = outbox

    async def arrive(self, a: Arrival) -> Outcome:
        for _ in range(5):
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(
                    ARRIVE, a.rule, a.key, a.of, str(a.part), a.event_id, a.now, a.window,
                    a.tenant, a.correlation_id,
                )  # fmt: skip
            if not rows:
                continue  # the row was made after this statement's snapshot: read again
            row = _row(rows[0])
            verdict = verdict_of(row, a.event_id, rows[0]["applied"])
            if verdict != "expired":
                return Outcome(verdict, row)
            # The wait's window passed and no sweep closed it yet: record it now, and
            # start a new wait with this event.
            await self.expire(a.now, rule=a.rule, key=a.key)
        raise RuntimeError(
            f"rule wait {a.rule}/{a.key} changed under every try"
        )  # pragma: no cover

    async def load(self, ids: Sequence[str]) -> dict[str, Event[Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, type, source, subject, tenant, correlation_id, causation_id, time,"
                " data FROM events WHERE id = ANY($1::text[])",
                list(ids),
            )
        found: dict[str, Event[Any]] = {}
        for r in rows:
            found[r["id"]] = event_from_row(r)
        return found

    async def expire(
        self, now: datetime, *, rule: str | None = None, key: str | None = None, limit: int = 200
    ) -> int:
        """Close the open waits whose window passed by ``now`` and record each (rows
        another router is closing are skipped); returns how many this call closed."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = [_row(r) for r in await conn.fetch(_OPEN_DUE, now, rule, key, limit)]
            if not rows:
                return 0
            inserted, known = await self.outbox.commit([expired_event(r) for r in rows], conn=conn)
            await conn.execute(
                "UPDATE rule_waits SET open = false, arrived = '{}', updated_at = $1"
                " FROM unnest($2::text[], $3::text[]) AS d(rule, wait_key)"
                " WHERE rule_waits.rule = d.rule AND rule_waits.wait_key = d.wait_key",
                now,
                [r.rule for r in rows],
                [r.key for r in rows],
            )
        self.outbox.publish_later([*inserted, *known])
        return len(rows)

    async def forget_closed(self, now: datetime) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM rule_waits WHERE NOT open AND updated_at < $1", now - CLOSED_KEPT
            )


async def open_waits(conn: asyncpg.Connection, *, limit: int = 200) -> list[WaitRow]:
    """Open waits, the ones expiring soonest first (``hookbus rules waits``)."""
    rows = await conn.fetch(
        f"SELECT {_COLS} FROM rule_waits WHERE open ORDER BY expires_at LIMIT $1", limit
    )
    return [_row(r) for r in rows]


def now() -> datetime:
    return datetime.now(UTC)


# Closed rows older than CLOSED_KEPT are deleted at most this often (seconds).
FORGET_EVERY: Final = 3600.0
# With no rule over several events configured, waits left by earlier rules are still
# closed and recorded, this often (seconds).
IDLE_SWEEP: Final = 60.0


async def run_sweeper(
    store: PgStore,
    stop: asyncio.Event,
    *,
    interval: float,
    clock: Callable[[], datetime] = now,
    active: Callable[[], bool] = lambda: True,
) -> None:
    """Every ``interval`` seconds (``IDLE_SWEEP`` while ``active()`` says no rule waits for
    several events), close and record the waits whose window passed."""
    forgot_at: float | None = None
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            while await store.expire(clock()) > 0:
                pass
            if forgot_at is None or loop.time() - forgot_at >= FORGET_EVERY:
                await store.forget_closed(clock())
                forgot_at = loop.time()
        except Exception as exc:  # an outage: the next round tries again
            log.warning("rule wait sweep failed", extra={"error": repr(exc)})
        wait = interval if active() else max(interval, IDLE_SWEEP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=wait)


# ------------------------------------------------------------------------ routing


@dataclass(frozen=True, slots=True)
class Joined:
    """What an event did to one multi-event rule: its evaluation in the record and, when
    it completed the rule's events, the context its actions are rendered with."""

    evaluation: RuleEvaluation
    key: str | None = None
    events: list[str] = field(default_factory=list)
    context: dict[str, Any] | None = None

    @property
    def fired(self) -> bool:
        return self.context is not None


def hook_of(event: Event[Any]) -> WebhookReceived | None:
    match event.data:
        case WebhookReceived() as hook:
            return hook
        case WebhookReplayed() as replay:
            return replay.webhook
    return None


def event_docs(ids: Sequence[str], loaded: Mapping[str, Event[Any]]) -> list[dict[str, Any]]:
    """What templates see of a firing's events (``events[0].payload`` …), in part order."""
    from .rules import Facts

    docs: list[dict[str, Any]] = []
    for i in ids:
        event = loaded.get(i)
        hook = hook_of(event) if event is not None else None
        if event is None or hook is None:
            docs.append({"event": {"id": i}, "payload": None, "headers": {}})
            continue
        facts = Facts(hook, event_id=i, tenant=event.tenant, time=event.time.isoformat())
        docs.append(facts.doc)
    return docs


async def arrive_all(
    rules: Sequence[CompiledRule],
    event: Event[Any],
    hook: WebhookReceived,
    facts: Facts,
    store: Store,
    clock: Callable[[], datetime] = now,
) -> dict[str, Joined]:
    """Enter ``event`` into the wait of every multi-event rule it is an event of; the
    rules it completed get the context to render their actions with."""
    out: dict[str, Joined] = {}
    for compiled in rules:
        multi = compiled.multi
        if multi is None or not compiled.rule.enabled:
            continue
        part, evaluation = multi.match(hook, facts)
        if part is None:
            if evaluation.failed == "key":
                out[compiled.rule.name] = Joined(evaluation)
            continue
        rule = compiled.rule
        key = multi.render_key(facts)
        result = await store.arrive(
            Arrival(
                rule=rule.name,
                key=key,
                part=part,
                of=len(multi.parts),
                event_id=event.id,
                now=clock(),
                window=multi.window,
                tenant=event.tenant,
                correlation_id=event.correlationid,
            )
        )
        of = len(multi.parts)
        if result.verdict == "fired":
            ids = result.events
            loaded = await store.load([i for i in ids if i != event.id])
            loaded[event.id] = event
            context = {**facts.doc, "events": event_docs(ids, loaded)}
            reason = f"matched: all {of} events arrived with key {key!r}"
            out[rule.name] = Joined(
                RuleEvaluation(rule=rule.name, matched=True, reason=reason), key, ids, context
            )
        elif result.verdict == "waiting":
            have = len(result.row.arrived)
            missing = [i for i in range(of) if str(i) not in result.row.arrived]
            reason = (
                f"waiting: events[{part}] arrived with key {key!r}; {have} of {of} are here"
                f" (still missing events{missing})"
            )
            out[rule.name] = Joined(
                RuleEvaluation(rule=rule.name, matched=False, reason=reason, failed="events"), key
            )
        else:  # a redelivery of an event the wait has seen
            out[rule.name] = Joined(
                msgspec.structs.replace(
                    evaluation, reason=f"already counted for key {key!r} (a redelivery)"
                ),
                key,
            )
    return out
