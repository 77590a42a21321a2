"""``hookbus rules test``: what the rules (the config's, or a proposed file's) decide for
recorded webhooks, and with ``--compare`` how that differs from other rules. Nothing runs
and nothing is written: the router's own evaluation, in this process."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from hookbus_common import events as ev
from hookbus_common import settings as core
from hookbus_common.errors import ConfigError
from hookbus_common.eventlog import event_from_row
from hookbus_router import config as router
from hookbus_router.routing import route, route_replay
from hookbus_router.rules import RuleSet

from . import ruleswaits
from .config import core_settings, environment, fail
from .database import connection

DEFAULT_LIMIT = 1000


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What one set of rules made of one webhook."""

    version: str
    evaluations: list[ev.RuleEvaluation]
    skipped: list[ev.ActionSkipped]
    # What each matched rule would request, by rule: one line per action.
    requests: dict[str, list[str]]


class Tested(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    time: datetime
    source: str
    event_type: str
    repository: str | None = None
    ref: str | None = None
    decision: Decision
    compare: Decision | None = None
    # Rules whose decision differs between the two (matched, or the test that failed).
    changed: list[str] = []


# -------------------------------------------------------------------- which rules


def _rules_only(path: Path, base: router.RouterConfig, env: dict[str, str]) -> router.RouterConfig:
    """The rules of a config file, or of a file of only [[rules]] checked against the
    names (sources, endpoints, hosts) ``base`` configures."""
    label = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML: {exc}") from None
    if set(data) - {"rules"}:
        return router.load(path, env)
    rules = core.convert(data.get("rules", []), list[router.Rule], label, "rules")
    config = msgspec.structs.replace(base, rules=rules)
    try:
        router.check(config)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    return config


def load_rules(args: argparse.Namespace) -> tuple[RuleSet, str, RuleSet | None, str | None]:
    """The rules under test and where they came from; the rules to compare with, if any."""
    env = environment(args)
    try:
        base = router.load(args.config, env)
        where = str(args.config or core.default_config_path(env) or "the environment")
        if args.rules:
            base, where = _rules_only(Path(args.rules), base, env), args.rules
        other = _rules_only(Path(args.compare), base, env) if args.compare else None
    except ConfigError as exc:
        fail(exc)
    return (
        RuleSet.build(base.rules),
        where,
        RuleSet.build(other.rules) if other is not None else None,
        args.compare,
    )


# --------------------------------------------------------------------- which events

_COLUMNS = "id, time, data, type, source, correlation_id, causation_id, tenant, subject"
_TYPES = (ev.WebhookReceived.TYPE, ev.WebhookReplayed.TYPE)


async def _select(
    conn: asyncpg.Connection,
    event_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[ev.Event[Any]]:
    if event_id is not None:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE id = $1 AND type = ANY($2::text[])",
            event_id,
            list(_TYPES),
        )
    else:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE type = $1"
            " AND ($2::timestamptz IS NULL OR time >= $2)"
            " AND ($3::timestamptz IS NULL OR time < $3) ORDER BY seq LIMIT $4",
            ev.WebhookReceived.TYPE,
            since,
            until,
            limit,
        )
    return [event_from_row(r) for r in rows]


_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime) -> datetime:
    """``2h``, ``90m``, ``1d12h`` (that long before ``now``), or an ISO 8601 time or date
    (UTC without an offset), as ``hookbus replay`` takes them."""
    value = text.strip()
    if value and _AGO.sub("", value) == "":
        return now - timedelta(seconds=sum(float(n) * _SECONDS[u] for n, u in _AGO.findall(value)))
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give an ISO 8601 time (2026-11-22T07:00:00Z), a date,"
            " or how long ago (30m, 2h, 1d)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# ------------------------------------------------------------------------ deciding


def _describe(request: ev.Event[Any]) -> str:
    match request.data:
        case ev.JobRequestedV2(spec=spec):
            what = getattr(spec, "command", None)
            shown = " ".join(what) if isinstance(what, list) else str(what or "")
            return f"{request.data.kind}: {shown}"[:300]
        case ev.DeliveryRequested(endpoint=endpoint, url=url, method=method):
            return f"webhook: {method} {f'endpoint {endpoint}' if endpoint else url}"[:300]
    return request.type


def decide(rules: RuleSet, event: ev.Event[Any]) -> Decision:
    if isinstance(event.data, ev.WebhookReplayed):
        out = route_replay(rules, event, record_unmatched=True)
    else:
        out = route(rules, event, record_unmatched=True)
    routed: ev.WebhookRouted = out[0].data
    requests: dict[str, list[str]] = {}
    for request in out[1:]:
        rule = getattr(request.data, "rule", "")
        requests.setdefault(rule, []).append(_describe(request))
    return Decision(
        version=rules.version,
        evaluations=list(routed.evaluations),
        skipped=list(routed.skipped),
        requests=requests,
    )


def _key(e: ev.RuleEvaluation | None) -> tuple[Any, ...]:
    return (None,) if e is None else (e.matched, e.failed, e.path, e.operator)


def decide_event(rules: RuleSet, event: ev.Event[Any], other: RuleSet | None) -> Tested:
    hook = event.data.webhook if isinstance(event.data, ev.WebhookReplayed) else event.data
    decision = decide(rules, event)
    compare = decide(other, event) if other is not None else None
    changed: list[str] = []
    if compare is not None:
        new = {e.rule: e for e in decision.evaluations}
        old = {e.rule: e for e in compare.evaluations}
        names = [*new, *(n for n in old if n not in new)]
        changed = [n for n in names if _key(new.get(n)) != _key(old.get(n))]
    return Tested(
        event_id=event.id,
        time=event.time,
        source=hook.source,
        event_type=hook.event_type,
        repository=hook.repository,
        ref=hook.branch or hook.tag,
        decision=decision,
        compare=compare,
        changed=changed,
    )


# ------------------------------------------------------------------------- showing


def _line(e: ev.RuleEvaluation) -> str:
    if e.matched:
        return "matched"
    if e.failed and e.saw is not None:
        test = f"{e.path} {e.operator}" if e.path else e.operator
        return f"no: {e.failed}: {test}; saw {e.saw}"
    return f"no: {e.reason}"


def _header(t: Tested) -> str:
    where = f" {t.repository}" if t.repository else ""
    ref = f"@{t.ref}" if t.ref else ""
    when = t.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{t.event_id}  {when}  {t.source} {t.event_type}{where}{ref}"


def print_table(tested: Sequence[Tested], where: str, version: str, other: str | None) -> None:
    compared = any(t.compare is not None for t in tested)
    print(f"rules {version} from {where}", end="")
    if compared and tested[0].compare is not None:
        print(f", compared with {tested[0].compare.version} from {other}")
    else:
        print()
    width = max((len(e.rule) for t in tested for e in t.decision.evaluations), default=4)
    differ = 0
    for t in tested:
        if compared:
            if not t.changed:
                continue
            differ += 1
            print(_header(t))
            new = {e.rule: e for e in t.decision.evaluations}
            old = {e.rule: e for e in (t.compare.evaluations if t.compare else [])}
            for name in t.changed:
                was = _line(old[name]) if name in old else "(no such rule)"
                now = _line(new[name]) if name in new else "(no such rule)"
                print(f"  {name:<{width}}  was: {was}")
                print(f"  {'':<{width}}  now: {now}")
            continue
        print(_header(t))
        for e in t.decision.evaluations:
            mark = "+" if e.matched else "-"
            print(f"  {mark} {e.rule:<{width}}  {_line(e)}")
            for action in t.decision.requests.get(e.rule, []) if e.matched else []:
                print(f"    {'':<{width}}  -> {action}")
        for s in t.decision.skipped:
            print(f"  ! {s.rule:<{width}}  actions[{s.action}] not run: {s.field}: {s.reason}")
    n = len(tested)
    total = f"{n} webhook{'' if n == 1 else 's'}"
    if compared:
        print(f"{total}, {differ} decided differently")
    else:
        matched = sum(1 for t in tested if any(e.matched for e in t.decision.evaluations))
        print(f"{total}, {matched} matched by a rule")


# ------------------------------------------------------------------------- command


def cmd_rules_test(args: argparse.Namespace) -> int:
    if args.event is None and args.since is None:
        print("hookbus: rules test needs --event ID or --since TIME", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    try:
        since = parse_time(args.since, now) if args.since else None
        until = parse_time(args.until, now) if args.until else None
    except ValueError as exc:
        print(f"hookbus: {exc}", file=sys.stderr)
        return 2
    rules, where, other, other_where = load_rules(args)
    settings = core_settings(args)

    async def run() -> list[ev.Event[Any]]:
        async with connection(settings.database) as conn:
            return await _select(conn, args.event, since, until, args.limit)

    events = asyncio.run(run())
    if args.event is not None and not events:
        print(f"hookbus: no webhook with id {args.event}", file=sys.stderr)
        return 1
    tested = [decide_event(rules, e, other) for e in events]
    if args.json:
        for t in tested:
            sys.stdout.buffer.write(msgspec.json.encode(t) + b"\n")
        return 0
    print_table(tested, where, rules.version, other_where)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = sub.add_parser("rules", help="the routing rules")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    test = rules_sub.add_parser(
        "test",
        help="what the rules decide for recorded webhooks (nothing runs, nothing is written)",
        description="Evaluate the rules of the config (or of --rules FILE) against one recorded"
        " webhook (--event) or every webhook of a time range (--since/--until): which rules"
        " match, each rule's decision, and what they would request. --compare OLD shows only"
        " the decisions that differ from OLD's rules. Nothing runs and nothing is written.",
    )
    test.add_argument("--event", metavar="ID", help="a recorded webhook (received or replayed)")
    test.add_argument("--since", help="webhooks from this time (2h, 30m, 2026-11-22T07:00Z)")
    test.add_argument("--until", help="webhooks before this time")
    test.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="at most this many")
    test.add_argument(
        "--rules", metavar="FILE", help="test these rules instead: a config file, or [[rules]] only"
    )
    test.add_argument(
        "--compare", metavar="OLD", help="show what differs from these rules (same kinds of file)"
    )
    test.add_argument("--json", action="store_true", help="one JSON object per webhook")
    test.set_defaults(func=cmd_rules_test)
    ruleswaits.register(rules_sub)
