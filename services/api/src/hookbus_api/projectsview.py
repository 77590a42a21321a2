"""Projects and stages for the dashboard: what is deployed where, read from the log and
the read models. A stage is known by its deploy jobs (rule ``project.<name>.<stage>``, the
router's name for them): the newest job says what happens now, the newest successful one
what runs there. Projects made from images add their repository and port (the
``projects`` read model); projects of the config file show once they deployed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec

_PREFIX = "project."

# The newest job of each project rule (the jobs read model), and the newest successful
# one with its deploy record (its job.succeeded event).
_LATEST_JOBS = """
SELECT DISTINCT ON (rule) rule, job_id, kind, status, updated_at
FROM jobs WHERE rule LIKE 'project.%' ORDER BY rule, updated_at DESC, job_id
"""
_LAST_DEPLOYS = """
SELECT DISTINCT ON (d->>'rule') d->>'rule' AS rule, d->>'job_id' AS job_id,
       d->'deploy' AS deploy, time
FROM (SELECT data::jsonb AS d, time, seq FROM events WHERE type = $1) s
WHERE d->>'rule' LIKE 'project.%'
ORDER BY d->>'rule', seq DESC
"""
_MADE = """
SELECT project, repository, image, port, host_port, stages, created_at FROM projects
ORDER BY project
"""


class Deployed(msgspec.Struct, frozen=True, kw_only=True):
    """The newest successful deploy of a stage: the job, when, and what it left running."""

    job_id: str
    at: datetime
    container: str | None = None
    image: str | None = None
    image_id: str | None = None
    health: str | None = None
    rolled_back: bool = False


class LastJob(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    kind: str
    status: str
    at: datetime


class StageView(msgspec.Struct, frozen=True, kw_only=True):
    stage: str
    rule: str
    deployed: Deployed | None = None
    last_job: LastJob | None = None


class ProjectView(msgspec.Struct, frozen=True, kw_only=True):
    """A project, its stages and what each runs. ``repository``, ``image`` (the one it was
    made from), ``port`` and ``host_port`` are known for projects made from images."""

    project: str
    stages: list[StageView]
    made_from_image: bool = False
    repository: str | None = None
    image: str | None = None
    port: int | None = None
    host_port: int | None = None
    created_at: datetime | None = None


class Projects(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ProjectView]


def split_rule(rule: str) -> tuple[str, str] | None:
    """``project.<name>.<stage>`` → (name, stage); a project's name may hold dots."""
    if not rule.startswith(_PREFIX):
        return None
    name, _, stage = rule[len(_PREFIX) :].rpartition(".")
    return (name, stage) if name and stage else None


def _deployed(row: asyncpg.Record) -> Deployed:
    info: dict[str, Any] = msgspec.json.decode(row["deploy"]) if row["deploy"] else {}
    return Deployed(
        job_id=row["job_id"], at=row["time"], container=info.get("container"),
        image=info.get("image_after"), image_id=info.get("image_after_id"),
        health=info.get("health"), rolled_back=bool(info.get("rolled_back")),
    )  # fmt: skip


async def projects(conn: asyncpg.Connection) -> Projects:
    jobs = {r["rule"]: r for r in await conn.fetch(_LATEST_JOBS)}
    deploys = {r["rule"]: r for r in await conn.fetch(_LAST_DEPLOYS, "io.hookbus.job.succeeded.v1")}
    made = {r["project"]: r for r in await conn.fetch(_MADE)}
    stages: dict[str, dict[str, StageView]] = {}
    for name, row in made.items():
        for stage in msgspec.json.decode(row["stages"]):
            rule = f"{_PREFIX}{name}.{stage.get('name', 'dev')}"
            stages.setdefault(name, {})[rule] = StageView(stage=stage.get("name", "dev"), rule=rule)
    for rule in sorted({*jobs, *deploys}):
        parts = split_rule(rule)
        if parts is None:
            continue
        name, stage = parts
        job, deploy = jobs.get(rule), deploys.get(rule)
        stages.setdefault(name, {})[rule] = StageView(
            stage=stage,
            rule=rule,
            deployed=None if deploy is None else _deployed(deploy),
            last_job=None
            if job is None
            else LastJob(
                job_id=job["job_id"], kind=job["kind"], status=job["status"], at=job["updated_at"]
            ),
        )
    items = []
    for name in sorted(stages):
        m = made.get(name)
        items.append(
            ProjectView(
                project=name,
                stages=sorted(stages[name].values(), key=lambda s: s.stage),
                made_from_image=m is not None,
                repository=None if m is None else m["repository"],
                image=None if m is None else m["image"],
                port=None if m is None or not m["port"] else m["port"],
                host_port=None if m is None or not m["host_port"] else m["host_port"],
                created_at=None if m is None else m["created_at"],
            )
        )
    return Projects(items=items)
