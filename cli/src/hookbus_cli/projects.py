"""``hookbus projects list | show``: the projects image pushes deploy — those written in
the config file ([projects.<name>]) and those made from images (the ``projects`` table)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_router import config as router
from hookbus_router import projects as routerprojects

from .config import core_settings, environment, fail
from .database import connection


class StageView(msgspec.Struct, kw_only=True):
    name: str
    tags: list[str]
    auto_deploy: bool = True
    containers: list[str] = []


class ProjectView(msgspec.Struct, kw_only=True):
    """A project as people see it."""

    name: str
    origin: str  # "config" or "image"
    image: str
    stages: list[StageView] = []
    health: str | None = None
    port: int | None = None
    host_port: int | None = None
    created_at: datetime | None = None
    made_from: str | None = None
    inspected: bool | None = None
    reason: str | None = None
    labels: dict[str, str] = {}


def _probe(http: str | None, tcp: Any) -> str | None:
    if http:
        return f"GET {http}"
    return None if tcp is None else f"tcp {tcp}"


def _configured(args: argparse.Namespace) -> list[ProjectView]:
    try:
        cfg = router.load(args.config, environment(args))
    except ConfigError as exc:
        fail(exc)
    out = []
    for name, p in cfg.projects.items():
        stages = []
        for stage_name, s in p.stages.items():
            tags = [s.tags] if isinstance(s.tags, str) else list(s.tags)
            containers = routerprojects.containers(name, stage_name, s)
            stages.append(StageView(name=stage_name, tags=tags, auto_deploy=s.auto_deploy,
                                    containers=containers))  # fmt: skip
        h = p.health
        out.append(ProjectView(name=name, origin="config", image=p.image, stages=stages,
                               health=None if h is None else _probe(h.http, h.tcp)))  # fmt: skip
    return out


async def _made(conn: asyncpg.Connection) -> list[ProjectView]:
    rows = await conn.fetch("SELECT * FROM projects ORDER BY project")
    out = []
    for r in rows:
        stages = msgspec.json.decode(r["stages"], type=list[ev.ProjectStage])
        h = None if r["health"] is None else msgspec.json.decode(r["health"], type=ev.HealthProbe)
        out.append(ProjectView(
            name=r["project"], origin="image", image=r["repository"], port=r["port"],
            host_port=r["host_port"], created_at=r["created_at"], made_from=r["image"],
            inspected=r["inspected"], reason=r["reason"],
            labels=msgspec.json.decode(r["labels"], type=dict[str, str]),
            health=None if h is None else _probe(h.http, h.tcp),
            stages=[StageView(name=s.name, tags=list(s.tags), auto_deploy=s.auto_deploy,
                              containers=[s.container or f"{r['project']}-{s.name}"])
                    for s in stages],
        ))  # fmt: skip
    return out


def _views(args: argparse.Namespace) -> list[ProjectView]:
    configured = _configured(args)
    settings = core_settings(args)

    async def run() -> list[ProjectView]:
        async with connection(settings.database, migrate=True) as conn:
            return await _made(conn)

    made = asyncio.run(run())
    return sorted([*configured, *made], key=lambda v: v.name)


def table(views: list[ProjectView]) -> str:
    head = ("NAME", "FROM", "IMAGE", "STAGES", "HEALTH")
    lines = [head]
    for v in views:
        stages = ", ".join(f"{s.name} ({' '.join(s.tags)})" for s in v.stages)
        lines.append((v.name, v.origin, v.image, stages or "-", v.health or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join(
        ("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1])
        .rstrip()
        for line in lines
    )  # fmt: skip


def show(v: ProjectView) -> str:
    lines = [
        f"project:     {v.name}",
        f"from:        {'the config file' if v.origin == 'config' else 'an image push'}",
        f"image:       {v.image}",
    ]
    if v.made_from is not None:
        lines.append(f"made from:   {v.made_from}")
    if v.created_at is not None:
        lines.append(f"created:     {v.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}")
    if v.port is not None:
        published = f" (published on 127.0.0.1:{v.host_port})" if v.port else ""
        lines.append(f"port:        {v.port or 'none'}{published}")
    if v.inspected is False:
        lines.append(f"inspected:   no: {v.reason}")
    lines.append(f"health:      {v.health or 'the container keeps running'}")
    for s in v.stages:
        deploys = "" if s.auto_deploy else " (recorded, not deployed)"
        lines.append(f"stage:       {s.name}: tags {' '.join(s.tags)} -> "
                     f"{', '.join(s.containers)}{deploys}")  # fmt: skip
    for key, value in sorted(v.labels.items()):
        lines.append(f"label:       {key}={value}")
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    views = _views(args)
    if args.json:
        for v in views:
            print(msgspec.json.encode(v).decode())
    elif views:
        print(table(views))
    else:
        print("no projects: none configured, none made from images yet", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    found = [v for v in _views(args) if v.name == args.name]
    if not found:
        print(f"hookbus: no project named {args.name!r}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(found[0]).decode() if args.json else show(found[0]))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("projects", help="the projects image pushes deploy")
    cmds = p.add_subparsers(dest="projects_command", required=True)
    ls = cmds.add_parser("list", help="every project: configured, and made from images")
    ls.add_argument("--json", action="store_true", help="JSON, one project a line")
    ls.set_defaults(func=cmd_list)
    sh = cmds.add_parser("show", help="one project")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true", help="as one JSON object")
    sh.set_defaults(func=cmd_show)
