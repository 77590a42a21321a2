"""What the operator API answers and accepts, as msgspec structs (its OpenAPI components
are generated from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import msgspec

from hookbus_common.events import ReplayMode, ReplaySelection

from .config import RuleView
from .replaystore import ReplayJob
from .tokens import ApiToken

T = TypeVar("T")

_OUT: dict[str, Any] = {"frozen": True, "kw_only": True}


class Page(msgspec.Struct, Generic[T], **_OUT):
    """One page of a listing. Ask for the next with ``?after=<next_after>`` (oldest first)
    or ``?before=<next_before>`` (newest first); null when there is no more."""

    items: list[T]
    next_after: int | None = None
    next_before: int | None = None


class EventItem(msgspec.Struct, **_OUT):
    """An event of the log: its CloudEvents envelope, its log sequence and bus subject.
    Header values that carry credentials are redacted in ``data``."""

    seq: int
    id: str
    type: str
    source: str
    time: datetime
    correlationid: str
    causationid: str | None
    tenant: str
    subject: str | None
    bus_subject: str
    data: Any


class EventDetail(msgspec.Struct, **_OUT):
    """One event with what only an inbound webhook carries: its exact body and headers."""

    event: EventItem
    headers: dict[str, str] = {}
    raw_body: str | None = None
    raw_body_base64: str | None = None
    raw_body_bytes: int = 0


class Chain(msgspec.Struct, **_OUT):
    """Every event of one chain (a webhook and everything it caused), in log order."""

    correlationid: str
    events: list[EventItem]


class JobItem(msgspec.Struct, **_OUT):
    job_id: str
    kind: str
    rule: str
    correlation_id: str
    status: str
    attempts: int
    exit_code: int | None
    duration_ms: float | None
    requested_at: datetime
    updated_at: datetime
    last_seq: int


class JobDetail(msgspec.Struct, **_OUT):
    """A job with its output, from the event that finished it (none yet while it runs)."""

    job: JobItem
    output: str | None = None
    output_bytes: int = 0
    truncated: bool = False
    error: str | None = None
    events: list[EventItem] = []


class DeliveryItem(msgspec.Struct, **_OUT):
    delivery_id: str
    url: str
    rule: str
    tenant: str
    correlation_id: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    requested_at: datetime
    updated_at: datetime
    last_seq: int


class Attempt(msgspec.Struct, **_OUT):
    attempt: int
    time: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    response_body: str | None = None
    next_attempt_at: datetime | None = None


class DeliveryDetail(msgspec.Struct, **_OUT):
    delivery: DeliveryItem
    attempts: list[Attempt] = []


class DeadLetters(msgspec.Struct, **_OUT):
    """What gave up: deliveries that are dead (every attempt failed) and bus messages no
    service could ever handle (recorded as message.deadlettered), newest first."""

    deliveries: list[DeliveryItem]
    messages: list[EventItem]


class PartnerItem(msgspec.Struct, **_OUT):
    """A partner (never its token)."""

    partner_id: str
    name: str
    description: str
    tenant: str
    status: str
    created_at: datetime
    modified_at: datetime
    deleted_at: datetime | None = None


class Rules(msgspec.Struct, **_OUT):
    items: list[RuleView]


class Replays(msgspec.Struct, **_OUT):
    items: list[ReplayJob]


class Tokens(msgspec.Struct, **_OUT):
    items: list[ApiToken]


class StartReplay(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to replay, as ``hookbus replay`` takes it: times are ISO 8601 or how long ago
    (``2h``); each field narrows the selection."""

    mode: ReplayMode = "redrive"
    since: str | None = None
    until: str | None = None
    source: str | None = None
    event: str | None = None
    type: str | None = None
    tenant: str | None = None
    correlation: str | None = None
    failed_jobs: bool = False
    dead_deliveries: bool = False
    reason: str | None = None
    rate: float | None = msgspec.field(default=None)
    dry_run: bool = False


class ReplayStarted(msgspec.Struct, **_OUT):
    """A replay asked for: how many events it selected, and the job (none on a dry run or
    when nothing was selected)."""

    selected: int
    description: str
    selection: ReplaySelection
    dry_run: bool = False
    replay: ReplayJob | None = None


class Rate(msgspec.Struct, **_OUT):
    """Events of one area (``webhook.received``, ``job.failed``…) recorded lately."""

    type: str
    last_5m: int
    last_hour: int


class ConsumerLag(msgspec.Struct, **_OUT):
    """A service's durable consumer as JetStream sees it (``found`` false when absent)."""

    service: str
    durable: str
    found: bool
    pending: int = 0
    ack_pending: int = 0
    redelivered: int = 0
    waiting: int = 0


class Overview(msgspec.Struct, **_OUT):
    last_seq: int
    rates: list[Rate]
    failures_24h: dict[str, int]
    consumers: list[ConsumerLag]
    jobs_by_status: dict[str, int]
    deliveries_by_status: dict[str, int]


class Health(msgspec.Struct, **_OUT):
    status: Literal["ok", "degraded"]
    checks: dict[str, bool]


class WhoAmI(msgspec.Struct, **_OUT):
    token_id: str
    name: str
    scope: str
