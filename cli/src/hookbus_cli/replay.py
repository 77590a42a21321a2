"""``hookbus replay``: send recorded webhooks through the current rules again (redrive), or
publish recorded events again for downstream consumers (republish); resumable, audited."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors

from hookbus_api import replayrun, replayselect, replaystore
from hookbus_api.replayrun import DEFAULT_RATE, Progress
from hookbus_api.replaystore import ReplayJob
from hookbus_common.events import ReplayMode, ReplaySelection
from hookbus_common.service import Runtime, runtime
from hookbus_common.settings import Settings

from .config import core_settings
from .database import connection
from .tail import BusUnreachable, nats_connection

_NOUNS: dict[ReplayMode, tuple[str, str]] = {
    "redrive": ("webhook", "redriven"),
    "republish": ("event", "republished"),
}
_TO: dict[ReplayMode, str] = {"redrive": "to redrive", "republish": "to republish"}


def _selected(n: int, mode: ReplayMode) -> str:
    """``12 webhooks to redrive``, ``1 event to republish``."""
    noun = _NOUNS[mode][0]
    return f"{n} {noun if n == 1 else noun + 's'} {_TO[mode]}"


_SELECTION_OPTIONS = (
    "since", "until", "source", "event", "type", "tenant", "correlation", "failed_jobs",
    "dead_deliveries",
)  # fmt: skip


class Refused(Exception):
    """The command cannot do what was asked; the message is for people."""


def _requester(args: argparse.Namespace) -> str | None:
    if args.by:
        return str(args.by)
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def _selection(args: argparse.Namespace) -> ReplaySelection:
    try:
        return replayselect.selection(
            now=datetime.now(UTC),
            **{name: getattr(args, name) for name in _SELECTION_OPTIONS},
        )
    except ValueError as exc:
        raise Refused(str(exc)) from None


async def _check_bus(settings: Settings) -> None:
    """Fail within seconds, with one line, when NATS is not there (the runtime would wait
    ``nats.connect_timeout`` for it, as a service does)."""
    async with nats_connection(settings.nats, "hookbus-replay"):
        pass


@asynccontextmanager
async def _locked(rt: Runtime, replay_id: str) -> AsyncIterator[Any]:
    """A connection holding the replay's lock: one process runs a replay at a time."""
    async with rt.pool.acquire() as conn:
        if not await replaystore.try_lock(conn, replay_id):
            raise Refused(f"replay {replay_id} is being run by another process")
        try:
            yield conn
        finally:
            await replaystore.unlock(conn, replay_id)


async def _drive(rt: Runtime, conn: Any, job: ReplayJob) -> int:
    """Run ``job`` (its lock held on ``conn``) until it is finished or stopped (Ctrl-C,
    SIGTERM: the batch in hand is finished first)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    progress = Progress(job.selected, done=job.done, label=job.replay_id)
    try:
        job = await replayrun.run(rt, conn, job, stop=stop, progress=progress)
    except (OSError, nats.errors.Error) as exc:
        progress.close()
        print(
            f"hookbus: replay {job.replay_id} stopped: {exc!r}; resume with:"
            f" hookbus replay --resume {job.replay_id}",
            file=sys.stderr,
        )
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    progress.close()
    if job.status == "finished":
        past = _NOUNS[job.mode][1]
        print(f"replay {job.replay_id} finished: {job.done} of {job.selected} {past}")
        return 0
    print(
        f"replay {job.replay_id} interrupted after {job.done} of {job.selected}; resume with:"
        f" hookbus replay --resume {job.replay_id}",
        file=sys.stderr,
    )
    return 130


async def start(settings: Settings, args: argparse.Namespace) -> int:
    mode: ReplayMode = args.mode or "redrive"
    sel = _selection(args)
    async with connection(settings.database, migrate=True) as conn:
        upto = await replayselect.last_seq(conn)
        selected = await replayselect.count(conn, sel, mode, upto)
    print(f"{_selected(selected, mode)} ({replayselect.describe(sel)})")
    if args.dry_run or selected == 0:
        if args.dry_run:
            print("dry run: nothing replayed")
        return 0
    await _check_bus(settings)
    async with runtime(settings, "cli") as rt:
        async with rt.pool.acquire() as conn:
            job = await replayrun.create(
                rt, conn, mode=mode, selection=sel, requested_by=_requester(args),
                reason=args.reason, rate=args.rate or DEFAULT_RATE, max_seq=upto,
                selected=selected,
            )  # fmt: skip
        print(f"replay {job.replay_id} started", flush=True)
        async with _locked(rt, job.replay_id) as conn:
            return await _drive(rt, conn, job)


async def resume(settings: Settings, args: argparse.Namespace) -> int:
    given = [f"--{n.replace('_', '-')}" for n in _SELECTION_OPTIONS if getattr(args, n)]
    given += [f"--{args.mode}"] if args.mode else []
    given += ["--dry-run"] if args.dry_run else []
    if given:
        raise Refused(f"--resume goes on with the replay's own selection; drop {' '.join(given)}")
    async with connection(settings.database, migrate=True) as conn:
        job = await replaystore.get(conn, args.resume)
    if job is None:
        raise Refused(f"no replay {args.resume}")
    if job.status == "finished":
        print(f"replay {job.replay_id} finished already: {job.done} of {job.selected}")
        return 0
    await _check_bus(settings)
    async with runtime(settings, "cli") as rt, _locked(rt, job.replay_id) as conn:
        # Read again under the lock: the process that held it may have moved on.
        fresh = await replaystore.get(conn, job.replay_id)
        assert fresh is not None
        if fresh.status == "finished":
            print(f"replay {job.replay_id} finished already: {fresh.done} of {fresh.selected}")
            return 0
        job = msgspec.structs.replace(fresh, rate=args.rate or fresh.rate)
        job = await replayrun.resume(rt, conn, job, by=_requester(args))
        print(f"replay {job.replay_id} resumed after {job.done} of {job.selected}", flush=True)
        return await _drive(rt, conn, job)


def list_line(job: ReplayJob) -> str:
    created = job.created_at.strftime("%Y-%m-%d %H:%M") if job.created_at else ""
    by = job.requested_by or "-"
    counts = f"{job.done}/{job.selected}"
    return (
        f"{job.replay_id}  {job.status:<11} {job.mode:<9} {counts:>11}  {by:<12} {created}"
        f"  {replayselect.describe(job.selection)}"
    )


async def list_jobs(settings: Settings, args: argparse.Namespace) -> int:
    async with connection(settings.database, migrate=True) as conn:
        jobs = await replaystore.recent(conn, limit=args.limit)
    if args.json:
        for job in jobs:
            sys.stdout.buffer.write(msgspec.json.encode(job) + b"\n")
        return 0
    print("\n".join(list_line(job) for job in jobs) or "no replays")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    settings = core_settings(args)
    if args.list:
        work = list_jobs
    elif args.resume:
        work = resume
    else:
        work = start
    try:
        return asyncio.run(work(settings, args))
    except KeyboardInterrupt:
        # Ctrl-C before the replay ran (while counting, or connecting): a replay already
        # created stays resumable (`--list` shows it).
        return 130
    except (Refused, BusUnreachable) as exc:
        print(f"hookbus: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, BusUnreachable) else 2


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not 1 or more")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="redrive recorded webhooks through the current rules, or republish events",
        description="Send recorded webhooks through the current rules again (--redrive, the"
        " default), or publish recorded events again for downstream consumers (--republish)."
        " The count of what is selected comes first; --dry-run stops there.",
    )
    sel = p.add_argument_group("what to replay (each option narrows the selection)")
    sel.add_argument("--since", metavar="TIME", help="events at or after TIME (ISO 8601, or 2h)")
    sel.add_argument("--until", metavar="TIME", help="events before TIME")
    sel.add_argument("--source", help="chains started by a webhook from this source")
    sel.add_argument("--event", metavar="GLOB", help="chains started by a webhook of this type")
    sel.add_argument("--type", metavar="GLOB", help="event types matching this (job.*)")
    sel.add_argument("--tenant", help="events of this tenant")
    sel.add_argument("--correlation", metavar="ID", help="the events of this one chain")
    sel.add_argument(
        "--failed-jobs", action="store_true", help="chains with a failed or interrupted job"
    )
    sel.add_argument("--dead-deliveries", action="store_true", help="chains with a dead delivery")
    how = p.add_argument_group("how").add_mutually_exclusive_group()
    how.add_argument(
        "--redrive", dest="mode", action="store_const", const="redrive",
        help="route the selected webhooks again by the current rules (the default)",
    )  # fmt: skip
    how.add_argument(
        "--republish", dest="mode", action="store_const", const="republish",
        help="publish the selected events again, as they were, for downstream consumers",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="count what is selected, and stop")
    p.add_argument(
        "--rate", type=_rate, metavar="N", help=f"events a second (default {DEFAULT_RATE:g})"
    )
    p.add_argument("--by", metavar="NAME", help="who asks, for the log (default: $USER)")
    p.add_argument("--reason", help="why, for the log")
    jobs = p.add_argument_group("replay jobs").add_mutually_exclusive_group()
    jobs.add_argument("--resume", metavar="ID", help="go on with an interrupted replay")
    jobs.add_argument("--list", action="store_true", help="list replays")
    p.add_argument("--limit", type=_count, default=20, help="how many replays --list shows")
    p.add_argument("--json", action="store_true", help="--list as JSON, one a line")
    p.set_defaults(func=cmd_replay, mode=None)
