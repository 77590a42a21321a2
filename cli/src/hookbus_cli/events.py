"""``hookbus events``: recent events, or one webhook's whole chain, for people or as JSON."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from hookbus_common import eventlog
from hookbus_common.eventlog import LoggedEvent

from .config import core_settings
from .database import connection


def summary(e: LoggedEvent) -> str:
    """One line saying what an event is about, for people reading the log."""

    def webhook(d: dict[str, Any]) -> str:
        where = d.get("repository") or ""
        ref = d.get("branch") or d.get("tag")
        return f"{d.get('source')} {d.get('event_type')} {where}{'@' + ref if ref else ''}"

    d: dict[str, Any] = msgspec.json.decode(e.event.data) if e.event.data else {}
    short = e.event.type.removeprefix("io.hookbus.").rsplit(".", 1)[0]
    match short:
        case "webhook.received":
            return webhook(d)
        case "webhook.replayed":
            by = f" by {d['requested_by']}" if d.get("requested_by") else ""
            why = f": {d['reason']}" if d.get("reason") else ""
            hook = webhook(d.get("webhook") or {}).rstrip()
            return f"replay of {d.get('replay_of')}{by}{why} ({hook})"
        case "webhook.routed":
            matched = f"matched: {', '.join(d.get('matched', [])) or 'nothing'}"
            if d.get("config_version"):
                matched += f" (rules {d['config_version']})"
            return f"{matched} (replay of {d['replay_of']})" if d.get("replay_of") else matched
        case "job.requested":
            # v1 names the kind; v2 has it as the tag of its spec.
            kind = d.get("kind") or (d.get("spec") or {}).get("kind")
            return f"{d.get('job_id')} {kind} (rule {d.get('rule')})"
        case "job.started":
            return f"{d.get('job_id')} attempt {d.get('attempt')}"
        case "job.interrupted":
            then = "; runs again" if d.get("retrying") else ""
            return (
                f"{d.get('job_id')} attempt {d.get('attempt')} interrupted: {d.get('reason')}{then}"
            )
        case "job.skipped":
            return f"{d.get('job_id')} skipped: {d.get('reason')} by {d.get('superseded_by')}"
        case "job.succeeded" | "job.failed":
            if d.get("timed_out"):
                how = "timed out"
            elif d.get("error"):
                how = str(d["error"])
            elif d.get("signal") is not None:
                how = f"killed by signal {d['signal']}"
            else:
                how = f"exit {d.get('exit_code')}"
            then = (
                f"; attempt {d.get('attempt', 1) + 1} at {d['retry_at']}"
                if d.get("retrying")
                else ""
            )
            return f"{d.get('job_id')} {how} in {d.get('duration_ms', 0):.0f} ms{then}"
        case "delivery.replayed":
            by = f" by {d['requested_by']}" if d.get("requested_by") else ""
            return f"{d.get('replay_of')} replayed as {d.get('delivery_id')}{by}"
        case s if s.startswith("delivery."):
            status = d.get("status_code") or d.get("error") or ""
            return f"{d.get('delivery_id')} {d.get('url')} {status}".rstrip()
        case "endpoint.disabled" | "endpoint.enabled":
            by = f" by {d['by']}" if d.get("by") else ""
            why = f": {d['reason']}" if d.get("reason") else ""
            return f"{d.get('endpoint')}{by}{why}"
        case "project.created":
            stage = ", ".join(
                f"{st.get('name')} -> {st.get('container')}" for st in d.get("stages") or []
            )
            port = (
                f"port {d.get('port')} on 127.0.0.1:{d.get('host_port')}"
                if d.get("port")
                else "no port"
            )
            return f"{d.get('project')} from {d.get('image')}: {port}; {stage}"
        case "rule.wait.expired":
            missing = ", ".join(f"events[{i}]" for i in d.get("missing") or [])
            return f"{d.get('rule')} key {d.get('key')!r}: window passed; missing {missing}"
        case "rule.sequence.ended":
            at = f"action {d.get('index', 0) + 1} of {d.get('of')}"
            why = f": {d['reason']}" if d.get("reason") else ""
            return f"{d.get('rule')} {d.get('outcome')} at {at}{why}"
        case "message.deadlettered":
            return f"{d.get('service')}: {d.get('error')}"
        case s if s.startswith("partner."):
            return f"{d.get('partner_id')} {d.get('name') or d.get('status') or ''}".rstrip()
    return ""


def decisions(e: LoggedEvent) -> list[str]:
    """A routing record's decision for each rule, one line each: matched, or the first
    test that failed and the value it saw; then the actions a failed template left out."""
    if not e.event.type.startswith("io.hookbus.webhook.routed."):
        return []
    d: dict[str, Any] = msgspec.json.decode(e.event.data) if e.event.data else {}
    lines = []
    for r in d.get("evaluations") or []:
        if r.get("matched"):
            lines.append(f"+ {r.get('rule')}: matched")
        elif r.get("failed") and r.get("saw") is not None:
            test = f"{r.get('path')} {r.get('operator')}" if r.get("path") else r.get("operator")
            lines.append(f"- {r.get('rule')}: {r['failed']}: {test}; saw {r['saw']}")
        else:
            lines.append(f"- {r.get('rule')}: {r.get('reason')}")
    for g in d.get("passed_over") or []:
        # Rules passed over by the webhook's source, event type or repository, together.
        lines.append(f"- {', '.join(g.get('rules') or [])}: {g.get('reason')}")
    for j in d.get("joined") or []:
        lines.append(
            f"= {j.get('rule')}: key {j.get('key')!r} joined {', '.join(j.get('events') or [])}"
        )
    for s in d.get("skipped") or []:
        lines.append(
            f"! {s.get('rule')}: actions[{s.get('action')}] not run: {s.get('field')}:"
            f" {s.get('reason')}"
        )
    return lines


def json_line(e: LoggedEvent) -> bytes:
    """The event as one line of CloudEvents JSON: a payload kept as the sender formatted it
    may hold newlines, which a JSON-lines reader must not see."""
    return msgspec.json.encode(msgspec.json.decode(e.payload())) + b"\n"


def _depths(rows: Sequence[LoggedEvent]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for r in rows:
        cause = r.event.causationid
        depth[r.event.id] = depth.get(cause, -1) + 1 if cause else 0
    return depth


def _print_events(rows: Sequence[LoggedEvent], *, tree: bool, verbose: bool) -> None:
    depth = _depths(rows) if tree else {}
    for r in rows:
        short = r.event.type.removeprefix("io.hookbus.")
        indent = "  " * depth.get(r.event.id, 0)
        ts = r.event.time.strftime("%H:%M:%S.%f")[:-3]
        print(f"{r.seq:>7} {ts} {indent}{short:<28} {r.event.id}  {summary(r)}")
        if tree:
            for line in decisions(r):
                print(f"{'':>20}{indent}  {line}")
        if verbose:
            data = msgspec.json.decode(r.event.data)
            if isinstance(data, dict) and data.get("output"):
                for line in str(data["output"]).rstrip().splitlines():
                    print(f"{'':>20}{indent}| {line}")


def cmd_events(args: argparse.Namespace) -> int:
    settings = core_settings(args)

    async def run() -> list[LoggedEvent]:
        async with connection(settings.database) as conn:
            if args.chain:
                return await eventlog.chain(conn, args.chain)
            return await eventlog.recent(conn, limit=args.limit, type_prefix=args.type)

    rows = asyncio.run(run())
    if args.json:
        for r in rows:
            sys.stdout.buffer.write(json_line(r))
        return 0
    if args.chain and not rows:
        print(f"no event with id {args.chain}", file=sys.stderr)
        return 1
    _print_events(rows, tree=bool(args.chain), verbose=args.verbose)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = sub.add_parser("events", help="list recent events, or one webhook's chain")
    events.add_argument("--chain", metavar="ID", help="everything caused by the webhook of ID")
    events.add_argument("--limit", type=int, default=50)
    events.add_argument("--type", help="only types starting with this (io.hookbus.job.)")
    events.add_argument("--json", action="store_true", help="CloudEvents JSON, one a line")
    events.add_argument("--verbose", "-v", action="store_true", help="show job output")
    events.set_defaults(func=cmd_events)
