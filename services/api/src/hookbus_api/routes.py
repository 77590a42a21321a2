"""The API's routes, as one table: each operation's method, path, scope, parameters and
answer. The app serves it and the OpenAPI document is built from it, so the two agree."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hookbus_common.errors import InvalidError, NotFoundError
from hookbus_common.events import ReplaySelection
from hookbus_common.service import Runtime

from . import dlq, endpointsview, live, messages, queries, replays, replayselect, tokens, trigger
from .auth import require_tenant
from .config import ApiConfig
from .dlq import DeadLettersReplayed, ReplayDeadLetters, ReplayDelivery, Replayed
from .dryrun import RulesDryRun, dry_run
from .endpointsview import ChangeEndpoint, EndpointItem, EndpointList
from .messages import MessageAccepted, SendMessage
from .problems import ApiError
from .projectsview import Projects, projects
from .replays import Replays
from .replaystore import ReplayJob
from .schemas import (
    Chain,
    DeadLetters,
    DeliveryDetail,
    DeliveryItem,
    EventDetail,
    EventItem,
    Health,
    JobDetail,
    JobItem,
    Overview,
    Page,
    PartnerItem,
    ReplayStarted,
    Rules,
    StartReplay,
    Tokens,
    WhoAmI,
)
from .schemas import (
    Replays as ReplayList,
)
from .tokens import ApiToken, Scope
from .trigger import RuleTriggerAccepted, TriggerRule, parse_trigger, record_trigger


class State(TypedDict):
    """What the lifespan opens; handed to every request as ``scope["state"]``."""

    runtime: Runtime
    settings: ApiConfig
    replays: Replays


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    where: str = "query"


@dataclass(frozen=True)
class Ctx:
    request: Request
    state: State
    who: ApiToken | None

    @property
    def rt(self) -> Runtime:
        return self.state["runtime"]


Handler = Callable[[Ctx], Awaitable[Any]]


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    handler: Handler
    summary: str
    scope: Scope | None = "read"
    answer: Any = None
    body: Any = None
    params: tuple[Param, ...] = ()
    status: int = 200
    media_type: str = "application/json"
    tag: str = "read"
    # Other success statuses answered with the same schema (and why).
    also: tuple[tuple[int, str], ...] = ()

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.lstrip("_")


# ---------------------------------------------------------------- parameters

_INT = {"type": "integer", "minimum": 0}
AFTER = Param("after", "Log sequence: items after it, oldest first", _INT)
BEFORE = Param("before", "Log sequence: items before it, newest first (the default)", _INT)
LIMIT = Param("limit", "Items in a page (default 100; at most api.max_page)", _INT)
PAGING = (AFTER, BEFORE, LIMIT)


def path_param(name: str, description: str) -> Param:
    return Param(name, description, where="path")


def _int(ctx: Ctx, name: str) -> int | None:
    text = ctx.request.query_params.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidError(f"{name}: {text!r} is not a whole number") from None
    if value < 0:
        raise InvalidError(f"{name}: must be 0 or more")
    return value


def _str(ctx: Ctx, name: str) -> str | None:
    return ctx.request.query_params.get(name) or None


def _paging(ctx: Ctx) -> tuple[int | None, int | None, int]:
    after, before = _int(ctx, "after"), _int(ctx, "before")
    if after is not None and before is not None:
        raise InvalidError("after and before: give one of them")
    limit = _int(ctx, "limit") or 100
    return after, before, min(max(limit, 1), ctx.state["settings"].api.max_page)


def _path(ctx: Ctx, name: str) -> str:
    return str(ctx.request.path_params[name])


def _found(value: Any, what: str) -> Any:
    if value is None:
        raise NotFoundError(f"no {what}")
    return value


# ------------------------------------------------------------------ handlers


async def _health(ctx: Ctx) -> Health:
    checks = await ctx.rt.ready()
    return Health(status="ok" if all(checks.values()) else "degraded", checks=checks)


async def _whoami(ctx: Ctx) -> WhoAmI:
    assert ctx.who is not None
    return WhoAmI(token_id=ctx.who.token_id, name=ctx.who.name, scope=ctx.who.scope)


EVENT_FILTERS = (
    Param("source", "Chains started by a webhook from this source"),
    Param("type", "Event types matching this glob (job.*, webhook.received)"),
    Param("event", "Chains started by a webhook of this event type (glob)"),
    Param("tenant", "Events of this tenant"),
    Param("since", "Events at or after this time (ISO 8601, or how long ago: 2h)"),
    Param("until", "Events before this time"),
    Param("correlation", "The events of this one chain (its correlation id)"),
)


def _selection(ctx: Ctx) -> ReplaySelection:
    try:
        return replayselect.selection(
            now=datetime.now(UTC), source=_str(ctx, "source"), type=_str(ctx, "type"),
            event=_str(ctx, "event"), tenant=_str(ctx, "tenant"), since=_str(ctx, "since"),
            until=_str(ctx, "until"), correlation=_str(ctx, "correlation"),
        )  # fmt: skip
    except ValueError as exc:
        raise InvalidError(str(exc).replace("--", "")) from None


async def _list_events(ctx: Ctx) -> Page[EventItem]:
    sel = _selection(ctx)
    after, before, limit = _paging(ctx)
    async with ctx.rt.pool.acquire() as conn:
        return await queries.events_page(conn, sel, after=after, before=before, limit=limit)


async def _get_event(ctx: Ctx) -> EventDetail:
    async with ctx.rt.pool.acquire() as conn:
        return _found(await queries.event_detail(conn, _path(ctx, "event_id")), "such event")  # type: ignore[no-any-return]


async def _get_chain(ctx: Ctx) -> Chain:
    async with ctx.rt.pool.acquire() as conn:
        return _found(await queries.chain(conn, _path(ctx, "event_id")), "such event")  # type: ignore[no-any-return]


async def _list_jobs(ctx: Ctx) -> Page[JobItem]:
    after, before, limit = _paging(ctx)
    async with ctx.rt.pool.acquire() as conn:
        return await queries.jobs_page(
            conn, status=_str(ctx, "status"), rule=_str(ctx, "rule"),
            after=after, before=before, limit=limit,
        )  # fmt: skip


async def _get_job(ctx: Ctx) -> JobDetail:
    async with ctx.rt.pool.acquire() as conn:
        return _found(await queries.job_detail(conn, _path(ctx, "job_id")), "such job")  # type: ignore[no-any-return]


async def _list_deliveries(ctx: Ctx) -> Page[DeliveryItem]:
    after, before, limit = _paging(ctx)
    async with ctx.rt.pool.acquire() as conn:
        return await queries.deliveries_page(
            conn, status=_str(ctx, "status"), tenant=_str(ctx, "tenant"),
            after=after, before=before, limit=limit,
        )  # fmt: skip


async def _get_delivery(ctx: Ctx) -> DeliveryDetail:
    async with ctx.rt.pool.acquire() as conn:
        found = await queries.delivery_detail(conn, _path(ctx, "delivery_id"))
    return _found(found, "such delivery")  # type: ignore[no-any-return]


async def _dead_letters(ctx: Ctx) -> DeadLetters:
    _, _, limit = _paging(ctx)
    async with ctx.rt.pool.acquire() as conn:
        return await queries.dead_letters(conn, limit=limit)


async def _replay_dead_letter(ctx: Ctx) -> DeadLettersReplayed:
    """Recorded as `hookbus dlq replay ID` records it (delivery.replayed), naming the token."""
    assert ctx.who is not None
    req = dlq.parse_one(await ctx.request.body())
    async with ctx.rt.pool.acquire() as conn:
        letter = await dlq.one(conn, _path(ctx, "delivery_id"))
        new_ids, appended = await dlq.replay_events(
            conn, ctx.rt.settings.prefix, [letter], requested_by=f"api:{ctx.who.name}",
            reason=req.reason, source=trigger.SOURCE,
        )  # fmt: skip
    # Committed: on the bus now, or by the outbox relay if this process dies first.
    ctx.rt.outbox.publish_later(appended)
    return DeadLettersReplayed(
        selected=1, replayed=[Replayed(replay_of=letter.delivery_id, delivery_id=new_ids[0])]
    )


async def _replay_dead_letters(ctx: Ctx) -> DeadLettersReplayed:
    """Recorded as `hookbus dlq replay --endpoint/--tenant/--since/--all` records it."""
    assert ctx.who is not None
    req = dlq.parse_bulk(await ctx.request.body())
    since = dlq.since(req.since)
    async with ctx.rt.pool.acquire() as conn:
        chosen = await dlq.select(conn, endpoint=req.endpoint, tenant=req.tenant, since=since)
        if req.dry_run or not chosen:
            return DeadLettersReplayed(selected=len(chosen), dry_run=req.dry_run)
        new_ids, appended = await dlq.replay_events(
            conn, ctx.rt.settings.prefix, chosen, requested_by=f"api:{ctx.who.name}",
            reason=req.reason, source=trigger.SOURCE,
        )  # fmt: skip
    ctx.rt.outbox.publish_later(appended)
    return DeadLettersReplayed(
        selected=len(chosen),
        replayed=[
            Replayed(replay_of=d.delivery_id, delivery_id=n)
            for d, n in zip(chosen, new_ids, strict=True)
        ],
    )


async def _list_endpoints(ctx: Ctx) -> EndpointList:
    async with ctx.rt.pool.acquire() as conn:
        items = await endpointsview.listing(conn, ctx.state["settings"].endpoint_views)
    return EndpointList(items=items)


async def _get_endpoint(ctx: Ctx) -> EndpointItem:
    async with ctx.rt.pool.acquire() as conn:
        found = await endpointsview.one(
            conn, ctx.state["settings"].endpoint_views, _path(ctx, "name")
        )
    return _found(found, "such endpoint")  # type: ignore[no-any-return]


async def _change_endpoint(ctx: Ctx, *, enable: bool) -> EndpointItem:
    """Recorded as `hookbus endpoints enable|disable` records it, naming the token."""
    assert ctx.who is not None
    req = endpointsview.parse_change(await ctx.request.body())
    views = ctx.state["settings"].endpoint_views
    async with ctx.rt.pool.acquire() as conn:
        ep = _found(await endpointsview.one(conn, views, _path(ctx, "name")), "such endpoint")
        event = endpointsview.state_event(
            ep.name, ep.tenant, enable=enable, by=f"api:{ctx.who.name}", reason=req.reason,
            source=trigger.SOURCE,
        )  # fmt: skip
        appended = await endpointsview.record_state(conn, ctx.rt.settings.prefix, event)
        # Committed: on the bus now, or by the outbox relay if this process dies first.
        ctx.rt.outbox.publish_later(appended)
        return _found(await endpointsview.one(conn, views, ep.name), "such endpoint")  # type: ignore[no-any-return]


async def _disable_endpoint(ctx: Ctx) -> EndpointItem:
    return await _change_endpoint(ctx, enable=False)


async def _enable_endpoint(ctx: Ctx) -> EndpointItem:
    return await _change_endpoint(ctx, enable=True)


async def _list_rules(ctx: Ctx) -> Rules:
    return Rules(items=ctx.state["settings"].rule_views)


async def _trigger_rule(ctx: Ctx) -> Response:
    assert ctx.who is not None
    req = parse_trigger(await ctx.request.body())
    accepted, appended = await record_trigger(
        ctx.rt, [r.name for r in ctx.state["settings"].rule_views], _path(ctx, "rule"), req,
        by=f"api:{ctx.who.name}", key=ctx.request.headers.get("idempotency-key") or None,
    )  # fmt: skip
    # Committed: on the bus now, or by the outbox relay if this process dies first.
    ctx.rt.outbox.publish_later(appended)
    return Response(
        msgspec.json.encode(accepted),
        200 if accepted.duplicate else 202,
        media_type="application/json",
    )


async def _dry_run_rules(ctx: Ctx) -> RulesDryRun:
    event_id = _str(ctx, "event")
    if event_id is None:
        raise InvalidError("event: give the id of a recorded webhook")
    return await dry_run(ctx.rt, event_id)


async def _list_projects(ctx: Ctx) -> Projects:
    async with ctx.rt.pool.acquire() as conn:
        return await projects(conn)


async def _list_partners(ctx: Ctx) -> list[PartnerItem]:
    everyone = ctx.request.query_params.get("all") in ("1", "true")
    async with ctx.rt.pool.acquire() as conn:
        return await queries.partners(conn, include_deleted=everyone)


async def _list_replays(ctx: Ctx) -> ReplayList:
    _, _, limit = _paging(ctx)
    return ReplayList(items=await replays.recent(ctx.rt, min(limit, 200)))


async def _get_replay(ctx: Ctx) -> ReplayJob:
    from . import replaystore

    async with ctx.rt.pool.acquire() as conn:
        return _found(await replaystore.get(conn, _path(ctx, "replay_id")), "such replay")  # type: ignore[no-any-return]


async def _start_replay(ctx: Ctx) -> ReplayStarted:
    assert ctx.who is not None
    body = await ctx.request.body()
    try:
        req = msgspec.json.decode(body or b"{}", type=StartReplay)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidError(f"body: {exc}") from None
    try:
        return await ctx.state["replays"].start(req, by=f"api:{ctx.who.name}")
    except ValueError as exc:
        raise InvalidError(str(exc).replace("--", "")) from None


async def _send_message(ctx: Ctx) -> Response:
    assert ctx.who is not None
    messages.check_length(ctx.request.headers.get("content-length"))
    msg = messages.parse(await ctx.request.body())
    require_tenant(ctx.who, msg.tenant)  # a send token bound to tenants sends for those only
    bound = ctx.state["settings"].backlog_bounds.get(msg.tenant)
    async with ctx.rt.pool.acquire() as conn:
        if bound is not None:
            # overflow = "block": back-pressure once the tenant's backlog passes its bound.
            waiting = await messages.backlog(conn, msg.tenant)
            if waiting >= bound:
                raise ApiError(
                    "too_many",
                    f"tenant {msg.tenant!r} has {waiting} deliveries waiting (max_backlog"
                    f" {bound}); send again later",
                )
        accepted, appended = await messages.submit(
            conn, ctx.rt.settings.prefix, msg, by=f"api:{ctx.who.name}"
        )
    # Committed: on the bus now, or by the outbox relay if this process dies first.
    ctx.rt.outbox.publish_later(appended)
    return Response(
        msgspec.json.encode(accepted),
        200 if accepted.duplicate else 202,
        media_type="application/json",
    )


async def _list_tokens(ctx: Ctx) -> Tokens:
    async with ctx.rt.pool.acquire() as conn:
        return Tokens(items=await tokens.list_tokens(conn, include_revoked=True))


async def _overview(ctx: Ctx) -> Overview:
    async with ctx.rt.pool.acquire() as conn:
        last = await replayselect.last_seq(conn)
        rates = await queries.rates(conn)
        failures = await queries.failures(conn)
        jobs = await queries.by_status(conn, "jobs")
        deliveries = await queries.by_status(conn, "deliveries")
    return Overview(
        last_seq=last,
        rates=rates,
        failures_24h=failures,
        consumers=await live.consumer_lag(ctx.rt.bus),
        jobs_by_status=jobs,
        deliveries_by_status=deliveries,
    )


async def _live(ctx: Ctx) -> Response:
    return StreamingResponse(
        live.stream(ctx.rt.bus, ctx.state["replays"].stop),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


# -------------------------------------------------------------------- the table

EVENT_ID = path_param("event_id", "An event id (evt_…, or any id of the chain)")
ENDPOINT = path_param("name", "An endpoint's name")

OPS: tuple[Op, ...] = (
    Op("GET", "/api/health", _health, "Whether NATS and Postgres answer", None, Health, tag="meta"),
    Op("GET", "/api/whoami", _whoami, "The token this request signed in with", "read", WhoAmI,
       tag="meta"),
    Op("GET", "/api/overview", _overview, "Rates, failures, read-model counts, consumer lag",
       "read", Overview),
    Op("GET", "/api/events", _list_events, "Events of the log, filtered, a page at a time",
       "read", Page[EventItem], params=(*EVENT_FILTERS, *PAGING)),
    Op("GET", "/api/events/{event_id}", _get_event,
       "One event with its raw body and headers (credentials redacted)", "read", EventDetail,
       params=(EVENT_ID,)),
    Op("GET", "/api/chains/{event_id}", _get_chain,
       "The chain an event belongs to: the webhook and everything it caused", "read", Chain,
       params=(EVENT_ID,)),
    Op("GET", "/api/jobs", _list_jobs, "Jobs (the read model), most recently changed first",
       "read", Page[JobItem],
       params=(Param("status", "requested, running, succeeded, failed or interrupted"),
               Param("rule", "Jobs of this rule"), *PAGING)),
    Op("GET", "/api/jobs/{job_id}", _get_job, "One job with its output and events", "read",
       JobDetail, params=(path_param("job_id", "A job id (job_…)"),)),
    Op("GET", "/api/deliveries", _list_deliveries,
       "Deliveries (the read model), most recently changed first", "read", Page[DeliveryItem],
       params=(Param("status", "requested, retrying, succeeded, failed or dead"),
               Param("tenant", "Deliveries of this tenant"), *PAGING)),
    Op("GET", "/api/deliveries/{delivery_id}", _get_delivery, "One delivery with its attempts",
       "read", DeliveryDetail, params=(path_param("delivery_id", "A delivery id (dlv_…)"),)),
    Op("GET", "/api/dead-letters", _dead_letters,
       "Dead deliveries and dead-lettered bus messages", "read", DeadLetters, params=(LIMIT,)),
    Op("POST", "/api/dlq/{delivery_id}/replay", _replay_dead_letter,
       "Send a dead or failed delivery again: a new delivery linked to it, with the same"
       " webhook-id; recorded as delivery.replayed naming the token (409: not dead or failed)",
       "operate", DeadLettersReplayed, body=ReplayDelivery,
       params=(path_param("delivery_id", "A dead or failed delivery's id (dlv_…)"),),
       tag="operate"),
    Op("POST", "/api/dlq/replay", _replay_dead_letters,
       "Send again every dead and failed delivery the selection takes (endpoint, tenant,"
       " since, or all) and not replayed before; dry_run: only count them. Each recorded as"
       " delivery.replayed naming the token", "operate", DeadLettersReplayed,
       body=ReplayDeadLetters, tag="operate"),
    Op("GET", "/api/endpoints", _list_endpoints,
       "Endpoints of the config file and added at run time, with their state (active, paused,"
       " disabled: why, since when, by whom) and their health over the last 24 h (no secrets)",
       "read", EndpointList, tag="config"),
    Op("GET", "/api/endpoints/{name}", _get_endpoint, "One endpoint with its state and health",
       "read", EndpointItem, params=(ENDPOINT,), tag="config"),
    Op("POST", "/api/endpoints/{name}/disable", _disable_endpoint,
       "Disable an endpoint: nothing more is sent to it (its deliveries end dead); recorded"
       " as endpoint.disabled naming the token", "operate", EndpointItem, body=ChangeEndpoint,
       params=(ENDPOINT,), tag="operate"),
    Op("POST", "/api/endpoints/{name}/enable", _enable_endpoint,
       "Enable an endpoint again (its failure streak starts anew); recorded as"
       " endpoint.enabled naming the token", "operate", EndpointItem, body=ChangeEndpoint,
       params=(ENDPOINT,), tag="operate"),
    Op("GET", "/api/rules", _list_rules, "The router's rules: names, matches, action kinds",
       "read", Rules, tag="config"),
    Op("GET", "/api/rules/dry-run", _dry_run_rules,
       "What the router's rules in use make of a recorded webhook (nothing runs)", "read",
       RulesDryRun, params=(Param("event", "A recorded webhook's id (evt_…)"),), tag="config"),
    Op("POST", "/api/rules/{rule}/trigger", _trigger_rule,
       "Run a rule's actions now with a payload; recorded as rule.triggered naming the token"
       " (Idempotency-Key: sent again, nothing new)", "operate", RuleTriggerAccepted,
       body=TriggerRule, params=(path_param("rule", "A rule's name"),), status=202,
       tag="operate"),
    Op("GET", "/api/projects", _list_projects,
       "Projects and their stages: what each stage runs (its last successful deploy) and its"
       " newest deploy job", "read", Projects, tag="config"),
    Op("GET", "/api/partners", _list_partners, "Partners (never their tokens)", "read",
       list[PartnerItem], params=(Param("all", "true: deleted ones too"),), tag="config"),
    Op("GET", "/api/replays", _list_replays, "Replay jobs, oldest first", "read", ReplayList,
       params=(LIMIT,), tag="replay"),
    Op("GET", "/api/replays/{replay_id}", _get_replay, "One replay job", "read", ReplayJob,
       params=(path_param("replay_id", "A replay id (rpl_…)"),), tag="replay"),
    Op("POST", "/api/replays", _start_replay,
       "Start a replay (redrive or republish); recorded as replay.started naming the token",
       "operate", ReplayStarted, body=StartReplay, status=202, tag="replay"),
    Op("POST", "/api/v1/messages", _send_message,
       "Send a message to the tenant's subscribed endpoints: recorded (message.submitted)"
       " before any attempt; 202 with its id, 200 with the original's for a repeated"
       " idempotency_key", "send", MessageAccepted, body=SendMessage, status=202,
       tag="messages",
       also=((200, "Recorded before under this idempotency_key: the original message"),)),
    Op("GET", "/api/tokens", _list_tokens, "API tokens (never the tokens themselves)", "admin",
       Tokens, tag="meta"),
    Op("GET", "/api/live", _live, "Every event published from now on, as server-sent events",
       "read", None, media_type="text/event-stream", tag="live"),
)  # fmt: skip
