"""The event contract: the CloudEvents envelope, every event type, ids and bus subjects.

Schema evolution is additive: a new field gets a default; a field is never retyped; a
breaking change is a new type name ending in the next version (``…v2``).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeAlias, TypeVar

import msgspec

from .errors import InvalidError

_FROZEN: dict[str, Any] = {"frozen": True, "kw_only": True}

# ---------------------------------------------------------------------------- ids

_ID_NAMESPACE = uuid.UUID("6f1d2c0e-5b7a-4c1e-9a63-6b6f6f6b6275")


def new_id(prefix: str = "evt") -> str:
    """A random, time-ordered id (UUIDv7 layout), so ids sort roughly by creation."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return f"{prefix}_{value:032x}"  # uuid.UUID(int=value).hex, without building the UUID


_ID_NAMESPACE_BYTES = _ID_NAMESPACE.bytes
_UUID5_CLEAR = ~(0xF << 76 | 0b11 << 62)
_UUID5_SET = 0x5 << 76 | 0b10 << 62


def derived_id(cause: str, step: str, prefix: str = "evt") -> str:
    """A deterministic id for what ``cause`` leads to at ``step``: a redelivered message
    derives the same ids, so the event log refuses the duplicate (invariant 4).

    ``uuid.uuid5(_ID_NAMESPACE, f"{cause}/{step}").hex``, computed without building the
    UUID (several per message on every consumer's hot path)."""
    digest = hashlib.sha1(_ID_NAMESPACE_BYTES + f"{cause}/{step}".encode(), usedforsecurity=False)
    value = int.from_bytes(digest.digest()[:16], "big") & _UUID5_CLEAR | _UUID5_SET
    return f"{prefix}_{value:032x}"


# ------------------------------------------------------------------ deep payloads

# The receiver decodes every body under the interpreter's default recursion limit (1,000),
# which bounds how deeply an accepted payload can nest. Every other process decodes the
# same payload again, from deeper in its own stack (consume loop, handler, read models):
# it gets this much room, so whatever the receiver accepted is always decodable after.
DEEP_PAYLOAD_RECURSION_LIMIT = 4000


def allow_deep_payloads() -> None:
    """Give this process room to decode any payload the receiver accepted (not for the
    receiver itself: its default limit is what bounds what is accepted)."""
    if sys.getrecursionlimit() < DEEP_PAYLOAD_RECURSION_LIMIT:
        sys.setrecursionlimit(DEEP_PAYLOAD_RECURSION_LIMIT)


# ----------------------------------------------------------------------- subjects

_TOKEN_BAD = re.compile(r"[^a-z0-9_-]+")


def token(value: str | None) -> str:
    """Normalise outside input into one subject token: ``Push Hook`` → ``push_hook``."""
    norm = _TOKEN_BAD.sub("_", (value or "").strip().lower()).strip("_")
    return norm[:64] or "_"


# ------------------------------------------------------------------- event data


class EventData(msgspec.Struct, **_FROZEN):
    """Base of every event's ``data``; each subclass names its type and subject."""

    TYPE: ClassVar[str]

    def subject_tokens(self) -> tuple[str, ...]:
        raise NotImplementedError


class ImageInfo(msgspec.Struct, **_FROZEN):
    """A pushed container image reference, parsed and normalised (``docker.io/library``)."""

    registry: str
    namespace: str
    repository: str
    path: str
    canonical: str
    tag: str | None = None
    digest: str | None = None


class WebhookReceived(EventData, **_FROZEN):
    """An inbound webhook, verified and recorded; its exact body bytes are in the log."""

    TYPE: ClassVar[str] = "io.hookbus.webhook.received.v1"

    source: str
    kind: str
    event_type: str
    delivery_id: str | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = {}
    # The JSON body as sent, embedded without re-encoding.
    payload: msgspec.Raw = msgspec.Raw(b"null")
    body_sha256: str = ""
    remote_addr: str | None = None
    repository: str | None = None
    branch: str | None = None
    tag: str | None = None
    commit: str | None = None
    sender: str | None = None
    # Set when the webhook names a pushed image: the image-push URL (source
    # ``image-push``), and registries' pushes (kinds dockerhub and harbor, GitHub's
    # container package events); projects redeploy on it, whatever the source.
    image: ImageInfo | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("webhook", "received", token(self.source), token(self.event_type))


class RuleEvaluation(msgspec.Struct, **_FROZEN):
    """One rule's decision. A rule that did not match names the first test that failed:
    where it is in the rule (``branch``, ``when.all[1]``), the path it read, its operator
    and the value it saw (JSON, at most ~200 characters)."""

    rule: str
    matched: bool
    reason: str
    failed: str | None = None
    path: str | None = None
    operator: str | None = None
    saw: str | None = None


class RulesPassedOver(msgspec.Struct, **_FROZEN):
    """Rules that did not match for one same reason, recorded once for all of them: they
    failed the same test on the same value (``saw``): their source, event type,
    repository or branch glob (``failed`` names which), the same test of their conditions
    (``failed`` is where it is, as in RuleEvaluation), or they are disabled. Each rule's
    own globs and operands are in the rules of the record's ``config_version``."""

    rules: list[str]
    reason: str
    failed: str
    path: str | None = None
    operator: str | None = None
    saw: str | None = None


class ActionSkipped(msgspec.Struct, **_FROZEN):
    """An action of a matched rule that was not requested: a template in it failed for
    this event (``field`` is the one, ``reason`` why: an undefined name, a null, an error)."""

    rule: str
    action: int
    field: str
    reason: str


class WebhookReplayed(EventData, **_FROZEN):
    """A recorded webhook sent through routing again: the root of a new chain.

    Everything routed from it derives its ids from this event's id, so the replay is not
    deduplicated away as the original's redelivery would be; ``webhook`` is the original's
    data exactly as recorded (payload bytes included), routed as if it had just arrived.
    Its envelope carries the original's tenant and subject.
    """

    TYPE: ClassVar[str] = "io.hookbus.webhook.replayed.v1"

    # The id of the webhook.received event replayed.
    replay_of: str
    webhook: WebhookReceived
    # Who asked for the replay, and why: for people reading the log.
    requested_by: str | None = None
    reason: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        hook = self.webhook
        return ("webhook", "replayed", token(hook.source), token(hook.event_type))


class JoinedEvents(msgspec.Struct, **_FROZEN):
    """A multi-event rule's firing: the events that shared ``key`` within its window, in
    the order of the rule's parts (the last to arrive is the event routed)."""

    rule: str
    key: str
    events: list[str]


class WebhookRouted(EventData, **_FROZEN):
    """Why each rule matched a webhook or not, and what was requested.

    ``webhook_id`` is the event routed: a webhook.received, or a webhook.replayed, whose
    record also names the webhook it replays in ``replay_of``.
    """

    TYPE: ClassVar[str] = "io.hookbus.webhook.routed.v1"

    source: str
    event_type: str
    webhook_id: str
    matched: list[str] = []
    evaluations: list[RuleEvaluation] = []
    requested: list[str] = []
    replay_of: str | None = None
    # A short hash of the rules this decision was made with (None: recorded before rules
    # had versions).
    config_version: str | None = None
    # Actions of matched rules not requested, because a template failed for this event.
    skipped: list[ActionSkipped] = []
    # Multi-event rules this event completed (each fired with all the events it joined).
    joined: list[JoinedEvents] = []
    # Rules that failed the same test on the same value, two or more, named together;
    # ``evaluations`` holds every other rule's decision (a router of many rules records a
    # few groups, not one decision per rule).
    passed_over: list[RulesPassedOver] = []

    def subject_tokens(self) -> tuple[str, ...]:
        return ("webhook", "routed", token(self.source), token(self.event_type))


class ShellSpec(msgspec.Struct, tag_field="kind", tag="shell", **_FROZEN):
    """Run ``command`` directly (never through a shell) as its own process group."""

    command: list[str]
    env: dict[str, str] = {}
    timeout: float = 300.0
    payload: str = "stdin"
    cwd: str | None = None


class SshSpec(msgspec.Struct, tag_field="kind", tag="ssh", **_FROZEN):
    """Run ``command`` (an argv list, each word quoted for the remote shell) on the SSH host
    the executor's config names ``host``; the request carries the name, never a key."""

    host: str
    command: list[str]
    env: dict[str, str] = {}
    timeout: float = 300.0
    payload: str = "stdin"


class HealthProbe(msgspec.Struct, **_FROZEN):
    """How hookbus itself tells that a (re)deployed container is healthy: an HTTP GET of
    ``http`` answering 2xx/3xx, or a TCP connection to ``tcp`` (a port on 127.0.0.1, or
    ``host:port``) being accepted; tried every ``interval`` seconds until ``timeout``."""

    http: str | None = None
    tcp: str | None = None
    timeout: float = 60.0
    interval: float = 1.0


# What a docker action does (see DockerSpec).
DockerOperation: TypeAlias = Literal["pull", "recreate", "restart", "run", "stop"]


class DockerSpec(msgspec.Struct, tag_field="kind", tag="docker", **_FROZEN):
    """One operation on the executor's Docker engine: ``pull`` an image, ``recreate``
    the container named ``container`` with ``image`` (its own configuration kept,
    rolled back unless healthy), ``restart`` or ``stop`` it, or ``run`` a one-off
    container of ``image`` with ``command``, removed after."""

    operation: DockerOperation
    container: str | None = None
    image: str | None = None
    command: list[str] | None = None
    env: dict[str, str] = {}
    timeout: float = 300.0
    # recreate and run: "missing" pulls the image only when the engine lacks it.
    pull: Literal["missing", "always", "never"] = "missing"
    health: HealthProbe | None = None
    # stop, restart and recreate: how long the container gets between SIGTERM and SIGKILL.
    stop_timeout: int = 10


class ComposeSpec(msgspec.Struct, tag_field="kind", tag="compose", **_FROZEN):
    """Run Compose on the executor's engine: ``pull`` or ``up`` (``up -d``) the chosen
    ``services`` (all when empty) of project ``project`` from the compose ``file``, with
    ``env`` (an image tag, say) in its environment for the file's variables."""

    file: str
    project: str
    operation: Literal["pull", "up"] = "up"
    services: list[str] = []
    env: dict[str, str] = {}
    timeout: float = 600.0
    # up: --pull (missing, always, never).
    pull: Literal["missing", "always", "never"] = "missing"
    # up: --wait, until the services are running (and healthy, where the engine checks).
    wait: bool = False


class ProjectSpec(msgspec.Struct, tag_field="kind", tag="project", **_FROZEN):
    """Create project ``project`` from the pushed ``image`` (a reference with its tag or
    digest) by inspecting it on the executor's engine (exposed port, labels, health
    check), record it (project.created), and deploy it to its first stage: a new
    container ``container`` publishing the port on 127.0.0.1. When the project exists
    already (two pushes raced), the stage's container is recreated instead."""

    project: str
    image: str
    repository: str
    stage: str = "dev"
    container: str | None = None
    health_timeout: float = 30.0
    timeout: float = 300.0


# What a job runs, told apart by the ``kind`` tag in its JSON. Another kind is a new
# tagged Struct joining this union; an executor refuses a kind it cannot run
# (permanently), and an older one cannot decode it at all.
JobSpec: TypeAlias = ShellSpec | SshSpec | DockerSpec | ComposeSpec | ProjectSpec


# What the executor does with a run whose end is unknown (its executor died mid-way):
# ``record`` it as interrupted and stop there (the default), or ``retry``, running the
# job again as its next attempt (for actions that are safe to repeat).
OnInterrupt: TypeAlias = Literal["record", "retry"]


# How jobs that share a concurrency key run: ``parallel`` (no limit), ``queue`` (one at a
# time, in the order requested), ``latest`` (while one runs, only the newest waiting runs
# next; the others are skipped as superseded), ``cancel-running`` (a new job stops the
# running one, recorded interrupted with reason ``cancelled``, and runs).
ConcurrencyStrategy: TypeAlias = Literal["parallel", "queue", "latest", "cancel-running"]


class Concurrency(msgspec.Struct, **_FROZEN):
    """The rendered concurrency key of a job and the strategy of the jobs sharing it."""

    key: str
    strategy: ConcurrencyStrategy = "parallel"


class Backoff(msgspec.Struct, **_FROZEN):
    """How long a failed run waits before the next attempt: ``base`` seconds, doubled
    each attempt, at most ``max``."""

    base: float = 1.0
    max: float = 60.0


def spec_kind(spec: JobSpec) -> str:
    """The ``kind`` tag of a job spec: ``shell`` for a ShellSpec, ``ssh`` for an SshSpec."""
    return str(type(spec).__struct_config__.tag)


class JobRequested(EventData, **_FROZEN):
    """Run an action (v1): superseded by JobRequestedV2, which the router now emits; kept
    so that logs and streams written before it still decode."""

    TYPE: ClassVar[str] = "io.hookbus.job.requested.v1"

    job_id: str
    kind: str
    rule: str
    webhook_id: str
    shell: ShellSpec | None = None
    context: dict[str, str] = {}
    payload: msgspec.Raw = msgspec.Raw(b"null")

    def subject_tokens(self) -> tuple[str, ...]:
        return ("job", "requested", token(self.kind))

    def upgrade(self) -> JobRequestedV2:
        """The same request in the current shape; the one place v1 becomes v2.

        A v1 request ran its ``shell`` spec whatever its ``kind`` said; one without a spec
        had nothing to run, and cannot be upgraded (InvalidError).
        """
        if self.shell is None:
            raise InvalidError(f"job request {self.job_id} (v1, kind {self.kind!r}) has no spec")
        return JobRequestedV2(
            job_id=self.job_id,
            rule=self.rule,
            webhook_id=self.webhook_id,
            spec=self.shell,
            context=self.context,
            payload=self.payload,
        )


class SequenceStep(msgspec.Struct, **_FROZEN):
    """Where a job stands in its rule's sequence: action ``index`` of ``of``, requested
    with the rules of ``config_version``; ``events`` are a multi-event firing's events."""

    rule: str
    index: int
    of: int
    config_version: str | None = None
    events: list[str] = []


class JobRequestedV2(EventData, **_FROZEN):
    """Run an action; self-contained, so the executor needs nothing but this.

    ``spec`` says what to run, tagged by kind; ``kind`` (not stored: it is the spec's tag)
    names the bus subject and the read models' kind, as it did in v1.
    """

    TYPE: ClassVar[str] = "io.hookbus.job.requested.v2"

    job_id: str
    rule: str
    webhook_id: str
    spec: JobSpec
    context: dict[str, str] = {}
    payload: msgspec.Raw = msgspec.Raw(b"null")
    on_interrupt: OnInterrupt = "record"
    # Set when the rule runs its actions in sequence: the router requests the next
    # action when this one succeeds (None: not part of a sequence).
    sequence: SequenceStep | None = None
    # Jobs sharing a rendered key run by its strategy (None: no limit).
    concurrency: Concurrency | None = None
    # A failed run (non-zero exit, a failed docker operation) is run again up to
    # ``retries`` times, ``backoff`` apart.
    retries: int = 0
    backoff: Backoff | None = None

    @property
    def kind(self) -> str:
        return spec_kind(self.spec)

    def subject_tokens(self) -> tuple[str, ...]:
        return ("job", "requested", token(self.kind))


class JobStarted(EventData, **_FROZEN):
    TYPE: ClassVar[str] = "io.hookbus.job.started.v1"

    job_id: str
    kind: str
    rule: str
    attempt: int = 1

    def subject_tokens(self) -> tuple[str, ...]:
        return ("job", "started", token(self.kind))


class DeployInfo(msgspec.Struct, **_FROZEN):
    """What a docker action did to a container: which one, its image before and after
    (references as configured, with the image ids), and how its health was judged
    (``healthy``, ``running``, ``unhealthy``, ``timed_out``, ``stopped``, or None when
    not checked); ``rolled_back`` when the previous container was put back."""

    operation: str
    container: str | None = None
    container_id: str | None = None
    image_before: str | None = None
    image_before_id: str | None = None
    image_after: str | None = None
    image_after_id: str | None = None
    health: str | None = None
    rolled_back: bool = False


class JobFinished(EventData, **_FROZEN):
    """Shared fields of a job's terminal events."""

    job_id: str
    kind: str
    rule: str
    attempt: int = 1
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    duration_ms: float = 0.0
    output: str = ""
    output_bytes: int = 0
    truncated: bool = False
    error: str | None = None
    # Docker actions: the container, images and health involved.
    deploy: DeployInfo | None = None
    # The job's place in its rule's sequence (its request's), so that only the ends of
    # jobs in a sequence are published where the router looks for them.
    sequence: SequenceStep | None = None

    def _ended(self, how: str) -> tuple[str, ...]:
        """``job.<how>.<kind>``, with ``.seq.<rule>`` after it for a job in a sequence."""
        tokens = ("job", how, token(self.kind))
        if self.sequence is None:
            return tokens
        return (*tokens, "seq", token(self.sequence.rule))


class JobSucceeded(JobFinished, **_FROZEN):
    TYPE: ClassVar[str] = "io.hookbus.job.succeeded.v1"

    def subject_tokens(self) -> tuple[str, ...]:
        return self._ended("succeeded")


class JobFailed(JobFinished, **_FROZEN):
    TYPE: ClassVar[str] = "io.hookbus.job.failed.v1"

    # Another attempt follows after ``retry_at`` (the action's ``retries``): this is then
    # the attempt's event, not the job's end.
    retrying: bool = False
    retry_at: datetime | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return self._ended("failed")


# Why a run was interrupted (a plain string in the contract, so a reason can be added
# without a new type): its executor died and the run's end is unknown
# (``executor_lost``); an executor found the run's processes left behind by a dead
# executor on its host and ended them (``orphaned``); the executor was stopped and ended
# the action after its shutdown grace (``shutdown``); the connection to an SSH action's
# host ended while its command ran (``connection_lost``).
# A job of a ``cancel-running`` concurrency key was stopped by a newer one (``cancelled``).
INTERRUPT_REASONS: tuple[str, ...] = (
    "executor_lost", "orphaned", "shutdown", "connection_lost", "cancelled",
)  # fmt: skip


class JobInterrupted(JobFinished, **_FROZEN):
    """A run that did not finish by itself: ``reason`` is one of ``INTERRUPT_REASONS``.

    Unless ``retrying``, this is the job's terminal event (the same id as a succeeded or
    failed one would have), so the job is not run again. ``retrying`` (the rule's
    ``on_interrupt`` is ``retry``) means the next attempt follows. The action's fields
    (exit code, output, duration) are known only when this executor ended it.
    """

    TYPE: ClassVar[str] = "io.hookbus.job.interrupted.v1"

    reason: str = "executor_lost"
    retrying: bool = False
    # Where the interrupted run was (hostname, and the action's process group when known).
    host: str | None = None
    pgid: int | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return self._ended("interrupted")


class JobSkipped(JobFinished, **_FROZEN):
    """A job that never ran and never will: its end. ``reason`` ``superseded``: a newer job
    of its ``latest`` concurrency key (``superseded_by``) runs instead."""

    TYPE: ClassVar[str] = "io.hookbus.job.skipped.v1"

    reason: str = "superseded"
    superseded_by: str | None = None
    concurrency_key: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return self._ended("skipped")


class DeployRolledBack(EventData, **_FROZEN):
    """A recreate whose new container was not healthy in time: the previous container
    (its image and configuration) was put back under the same name. The job itself
    ends failed, with the same reason."""

    TYPE: ClassVar[str] = "io.hookbus.deploy.rolledback.v1"

    job_id: str
    rule: str
    container: str
    reason: str
    image_before: str | None = None
    image_after: str | None = None
    attempt: int = 1
    # Whether the container put back was running again (and healthy, when probed).
    restored: bool = True

    def subject_tokens(self) -> tuple[str, ...]:
        return ("deploy", "rolled_back", token(self.container))


class DeliveryRequested(EventData, **_FROZEN):
    """Send one outbound HTTP request on behalf of a rule."""

    TYPE: ClassVar[str] = "io.hookbus.delivery.requested.v1"

    delivery_id: str
    rule: str
    webhook_id: str
    url: str
    method: str = "POST"
    headers: dict[str, str] = {}
    body: msgspec.Raw = msgspec.Raw(b"null")
    tenant: str = "default"
    # A configured endpoint (by name) the dispatcher resolves when it sends: its URL,
    # secrets and headers; `url` is then empty. The webhook's event type, which the
    # endpoint's subscriptions are matched against.
    endpoint: str | None = None
    event_type: str | None = None
    # A configured notification channel (by name) instead: the dispatcher renders its
    # template from `context` (the webhook's facts) and the payload in `body`.
    notification: str | None = None
    context: dict[str, str] = {}
    # Replays of a dead delivery: the delivery replayed, and the message id receivers
    # dedupe on (Standard Webhooks' webhook-id; unset: the delivery id).
    replay_of: str | None = None
    message_id: str | None = None
    # Deliveries to one endpoint (or URL) of one tenant with the same key go one at a
    # time, in the order they were requested; a failing one holds back only its key.
    ordering_key: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("delivery", "requested", token(self.tenant))


class DeliveryOutcome(EventData, **_FROZEN):
    delivery_id: str
    url: str
    attempt: int = 1
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    tenant: str = "default"
    endpoint: str | None = None


class DeliveryAttempted(DeliveryOutcome, **_FROZEN):
    TYPE: ClassVar[str] = "io.hookbus.delivery.attempted.v1"

    # The start of the answer's body (4 KB at most, decoded leniently), for diagnosis.
    response_body: str | None = None
    # When the next attempt is due (absent when this one settled the delivery).
    next_attempt_at: datetime | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("delivery", "attempted", token(self.tenant))


class DeliverySucceeded(DeliveryOutcome, **_FROZEN):
    TYPE: ClassVar[str] = "io.hookbus.delivery.succeeded.v1"

    def subject_tokens(self) -> tuple[str, ...]:
        return ("delivery", "succeeded", token(self.tenant))


class DeliveryFailed(DeliveryOutcome, **_FROZEN):
    """The receiver refused it in a way a retry cannot fix (a 4xx other than 408/429)."""

    TYPE: ClassVar[str] = "io.hookbus.delivery.failed.v1"

    def subject_tokens(self) -> tuple[str, ...]:
        return ("delivery", "failed", token(self.tenant))


class DeliveryDead(DeliveryOutcome, **_FROZEN):
    """Every attempt failed; the delivery waits in the dead-letter queue."""

    TYPE: ClassVar[str] = "io.hookbus.delivery.dead.v1"

    def subject_tokens(self) -> tuple[str, ...]:
        return ("delivery", "dead", token(self.tenant))


class DeliveryReplayed(EventData, **_FROZEN):
    """A delivery that ended without success was requested again (``hookbus dlq replay``):
    ``delivery_id`` is the new delivery, ``replay_of`` the one replayed."""

    TYPE: ClassVar[str] = "io.hookbus.delivery.replayed.v1"

    replay_id: str
    delivery_id: str
    replay_of: str
    tenant: str = "default"
    endpoint: str | None = None
    requested_by: str | None = None
    reason: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("delivery", "replayed", token(self.tenant))


class EndpointStateChanged(EventData, **_FROZEN):
    """Shared by an endpoint's health events: which endpoint, why, and who (``None``: the
    dispatcher itself)."""

    ACTION: ClassVar[str]

    endpoint: str
    reason: str = ""
    by: str | None = None
    tenant: str = "default"

    def subject_tokens(self) -> tuple[str, ...]:
        return ("endpoint", self.ACTION, token(self.endpoint))


class EndpointDisabled(EndpointStateChanged, **_FROZEN):
    """No more deliveries are attempted to the endpoint (it answered 410 Gone, failed
    every attempt for dispatcher.disable_after, or a person disabled it)."""

    TYPE: ClassVar[str] = "io.hookbus.endpoint.disabled.v1"
    ACTION: ClassVar[str] = "disabled"

    # The delivery whose attempt disabled it, when one did.
    delivery_id: str | None = None


class EndpointEnabled(EndpointStateChanged, **_FROZEN):
    """Deliveries to the endpoint are attempted again; with ``recover_since``, what died
    while it was down since then was requested again."""

    TYPE: ClassVar[str] = "io.hookbus.endpoint.enabled.v1"
    ACTION: ClassVar[str] = "enabled"

    recover_since: datetime | None = None


class EndpointChanged(EventData, **_FROZEN):
    """Shared by the events of an endpoint managed at run time (``hookbus endpoints add``
    …): its name, its id (``ep_…``), its tenant and who did it. Its signing secrets are
    never part of one (they live in ``endpoint_secrets``; events name them by id)."""

    ACTION: ClassVar[str]

    endpoint: str
    endpoint_id: str
    tenant: str = "default"
    by: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("endpoint", self.ACTION, token(self.endpoint))


class EndpointCreated(EndpointChanged, **_FROZEN):
    """An endpoint was added at run time: where it is, which event types it takes (globs),
    and the id of its first signing secret."""

    TYPE: ClassVar[str] = "io.hookbus.endpoint.created.v1"
    ACTION: ClassVar[str] = "created"

    url: str = ""
    description: str = ""
    events: list[str] = msgspec.field(default_factory=lambda: ["*"])
    secret_id: str | None = None


class EndpointUpdated(EndpointChanged, **_FROZEN):
    """A run-time endpoint's URL, description and event types, as they are after the change."""

    TYPE: ClassVar[str] = "io.hookbus.endpoint.updated.v1"
    ACTION: ClassVar[str] = "updated"

    url: str = ""
    description: str = ""
    events: list[str] = msgspec.field(default_factory=lambda: ["*"])


class EndpointSecretRotated(EndpointChanged, **_FROZEN):
    """A run-time endpoint got a new signing secret (``secret_id``); the ones before it
    still sign every request until ``previous_valid_until``."""

    TYPE: ClassVar[str] = "io.hookbus.endpoint.secret.rotated.v1"
    ACTION: ClassVar[str] = "secret_rotated"

    secret_id: str = ""
    previous_valid_until: datetime | None = None


class EndpointPaused(EndpointChanged, **_FROZEN):
    """Deliveries to the run-time endpoint wait (they are not attempted, nor lost) until
    it is resumed."""

    TYPE: ClassVar[str] = "io.hookbus.endpoint.paused.v1"
    ACTION: ClassVar[str] = "paused"

    reason: str = ""


class EndpointResumed(EndpointChanged, **_FROZEN):
    """Deliveries to the run-time endpoint go out again, the waiting ones first."""

    TYPE: ClassVar[str] = "io.hookbus.endpoint.resumed.v1"
    ACTION: ClassVar[str] = "resumed"


class EndpointDeleted(EndpointChanged, **_FROZEN):
    """The run-time endpoint is gone: its secrets are deleted, and deliveries still
    addressed to it fail (final)."""

    TYPE: ClassVar[str] = "io.hookbus.endpoint.deleted.v1"
    ACTION: ClassVar[str] = "deleted"


class MessageSubmitted(EventData, **_FROZEN):
    """A message to deliver to every endpoint of ``tenant`` subscribed to ``event_type``
    (``POST /api/v1/messages``, ``hookbus send``, or a rule's webhook action with
    ``endpoints = "subscribed"``); the dispatcher turns it into one delivery.requested
    per endpoint. ``message_id`` (``msg_…``) is the ``webhook-id`` receivers see."""

    TYPE: ClassVar[str] = "io.hookbus.message.submitted.v1"

    message_id: str
    event_type: str
    payload: msgspec.Raw = msgspec.Raw(b"null")
    tenant: str = "default"
    # Same key (per tenant), same message: a repeat is not recorded again.
    idempotency_key: str | None = None
    # Copied to each delivery: those with one key go to an endpoint one at a time, in order.
    ordering_key: str | None = None
    submitted_by: str | None = None
    # Set when a rule submitted it: the rule and the webhook it routed.
    rule: str | None = None
    webhook_id: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("message", "submitted", token(self.tenant))


class MessageDispatched(EventData, **_FROZEN):
    """A submitted message was turned into deliveries: one per endpoint named here (none:
    no endpoint of the tenant takes its event type)."""

    TYPE: ClassVar[str] = "io.hookbus.message.dispatched.v1"

    message_id: str
    event_type: str
    tenant: str = "default"
    endpoints: list[str] = []
    delivery_ids: list[str] = []

    def subject_tokens(self) -> tuple[str, ...]:
        return ("message", "dispatched", token(self.tenant))


class RuleWaitExpired(EventData, **_FROZEN):
    """A multi-event rule waited ``window`` for the events sharing ``key`` and not all came:
    ``arrived`` are the events that did (by part), ``missing`` the parts that did not."""

    TYPE: ClassVar[str] = "io.hookbus.rule.wait.expired.v1"

    rule: str
    key: str
    arrived: dict[str, str] = {}
    missing: list[int] = []
    first_seen: datetime | None = None
    expires_at: datetime | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("rule", "wait", "expired", token(self.rule))


class RuleSequenceEnded(EventData, **_FROZEN):
    """A rule's actions in sequence ended: ``completed`` (every action succeeded) or
    ``stopped`` at action ``index`` (it failed or was interrupted; ``job_id`` says which
    job, ``reason`` why), so the actions after it were not requested."""

    TYPE: ClassVar[str] = "io.hookbus.rule.sequence.ended.v1"

    rule: str
    webhook_id: str
    outcome: Literal["completed", "stopped"]
    index: int
    of: int
    job_id: str | None = None
    reason: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("rule", "sequence", "ended", token(self.rule))


class RuleTriggered(EventData, **_FROZEN):
    """A person ran rule ``rule``'s actions by hand (the operator API's trigger): the router
    requests them as for a matched webhook, ``webhook`` (source ``manual``, the payload
    given) standing in for one, whatever the rule's conditions say. ``by`` names who."""

    TYPE: ClassVar[str] = "io.hookbus.rule.triggered.v1"

    rule: str
    by: str
    webhook: WebhookReceived
    reason: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("rule", "triggered", token(self.rule))


class MessageDeadLettered(EventData, **_FROZEN):
    """A bus message that can never be handled, terminated and kept here instead."""

    TYPE: ClassVar[str] = "io.hookbus.message.deadlettered.v1"

    service: str
    bus_subject: str
    stream_sequence: int
    deliveries: int
    error: str
    message: str

    def subject_tokens(self) -> tuple[str, ...]:
        return ("deadletter", token(self.service))


class PartnerValidation(msgspec.Struct, **_FROZEN):
    """What a partner's webhook body must satisfy before it is accepted."""

    # Dotted JSON paths (``order.id``, ``items.0.sku``) that must be present and not null.
    required: list[str] = []
    # A JSON Schema (any draft; 2020-12 unless ``$schema`` says otherwise).
    schema: dict[str, Any] | None = None


class PartnerEvent(EventData, **_FROZEN):
    """Shared by every partner event. Tokens and their hashes are never part of one."""

    ACTION: ClassVar[str]

    partner_id: str

    def subject_tokens(self) -> tuple[str, ...]:
        return ("partner", self.ACTION, token(self.partner_id))


class PartnerCreated(PartnerEvent, **_FROZEN):
    TYPE: ClassVar[str] = "io.hookbus.partner.created.v1"
    ACTION: ClassVar[str] = "created"

    name: str
    # Names the current token (its hash lives in ``partner_tokens``), not the token itself.
    token_id: str
    description: str = ""
    tenant: str = "default"
    status: str = "ACTIVE"
    validation: PartnerValidation = PartnerValidation()


class PartnerUpdated(PartnerEvent, **_FROZEN):
    """The partner's descriptive fields and validation, as they are after the change."""

    TYPE: ClassVar[str] = "io.hookbus.partner.updated.v1"
    ACTION: ClassVar[str] = "updated"

    name: str
    description: str = ""
    tenant: str = "default"
    validation: PartnerValidation = PartnerValidation()


class PartnerTokenRotated(PartnerEvent, **_FROZEN):
    TYPE: ClassVar[str] = "io.hookbus.partner.rotated.v1"
    ACTION: ClassVar[str] = "rotated"

    token_id: str
    previous_token_id: str | None = None


class PartnerStatusChanged(PartnerEvent, **_FROZEN):
    TYPE: ClassVar[str] = "io.hookbus.partner.status.changed.v1"
    ACTION: ClassVar[str] = "status_changed"

    status: str
    previous: str | None = None


class PartnerDeleted(PartnerEvent, **_FROZEN):
    """Soft delete: the partner stays in the read model with ``deleted_at`` set."""

    TYPE: ClassVar[str] = "io.hookbus.partner.deleted.v1"
    ACTION: ClassVar[str] = "deleted"


# What a replay does with the events it selects: ``redrive`` records a webhook.replayed
# for each selected webhook, routed again by the current rules; ``republish`` publishes
# the stored events again, as they were, for consumers outside hookbus.
ReplayMode: TypeAlias = Literal["redrive", "republish"]


class ReplaySelection(msgspec.Struct, **_FROZEN):
    """Which events of the log a replay takes (every field narrows it; unset: all).

    ``source`` and ``event`` select chains by the webhook that started them (its source
    name, and a glob of its event type); ``type`` is a glob of the CloudEvents type;
    ``failed_jobs`` / ``dead_deliveries`` keep chains that hold a failed or interrupted
    job / a dead delivery (either, when both are set). Times bound the events' ``time``.
    """

    since: datetime | None = None
    until: datetime | None = None
    source: str | None = None
    event: str | None = None
    type: str | None = None
    tenant: str | None = None
    correlation: str | None = None
    failed_jobs: bool = False
    dead_deliveries: bool = False


class ReplayEvent(EventData, **_FROZEN):
    """Shared by a replay's audit events; ``replay_id`` (``rpl_…``) names the replay job."""

    ACTION: ClassVar[str]

    replay_id: str
    mode: ReplayMode
    requested_by: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("replay", self.ACTION, token(self.replay_id))


class ReplayStarted(ReplayEvent, **_FROZEN):
    """A replay was asked for: what it selects and how many events that was."""

    TYPE: ClassVar[str] = "io.hookbus.replay.started.v1"
    ACTION: ClassVar[str] = "started"

    selection: ReplaySelection = ReplaySelection()
    reason: str | None = None
    selected: int = 0


class ReplayResumed(ReplayEvent, **_FROZEN):
    """An interrupted replay was taken up again after the ``done`` events it had done."""

    TYPE: ClassVar[str] = "io.hookbus.replay.resumed.v1"
    ACTION: ClassVar[str] = "resumed"

    selected: int = 0
    done: int = 0


class ReplayFinished(ReplayEvent, **_FROZEN):
    """A replay went through its whole selection: ``done`` events redriven or republished."""

    TYPE: ClassVar[str] = "io.hookbus.replay.finished.v1"
    ACTION: ClassVar[str] = "finished"

    selected: int = 0
    done: int = 0


class ApiTokenEvent(EventData, **_FROZEN):
    """Shared by the operator API's token events: which token (``tok_…``, never the token
    itself nor its hash) and who did it."""

    ACTION: ClassVar[str]

    token_id: str
    name: str
    by: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("apitoken", self.ACTION, token(self.token_id))


class ApiTokenCreated(ApiTokenEvent, **_FROZEN):
    """An operator API token was made (``hookbus tokens create``) with this scope; a send
    token bound to tenants names them (empty: it sends for every tenant)."""

    TYPE: ClassVar[str] = "io.hookbus.apitoken.created.v1"
    ACTION: ClassVar[str] = "created"

    scope: str = "read"
    tenants: list[str] = []


class ApiTokenRevoked(ApiTokenEvent, **_FROZEN):
    """An operator API token was revoked; it no longer signs anyone in."""

    TYPE: ClassVar[str] = "io.hookbus.apitoken.revoked.v1"
    ACTION: ClassVar[str] = "revoked"


class ProjectStage(msgspec.Struct, **_FROZEN):
    """A stage of a project made from an image: which tags go there, whether a push
    deploys by itself, how many containers (``container``, or ``container-1`` … ``-N``)."""

    name: str = "dev"
    tags: list[str] = msgspec.field(default_factory=lambda: ["*"])
    auto_deploy: bool = True
    max_instances: int = 1
    container: str | None = None


class ProjectCreated(EventData, **_FROZEN):
    """A project made from an image no project named, by inspecting it on the engine:
    ``port`` is the first TCP port it exposes (0: none, or the image could not be
    inspected: ``inspected`` false, ``reason`` why), published on 127.0.0.1:``host_port``;
    ``health`` is how its deploys are checked (None: only that the container runs)."""

    TYPE: ClassVar[str] = "io.hookbus.project.created.v1"

    project: str
    repository: str
    image: str
    stages: list[ProjectStage] = []
    port: int = 0
    host_port: int = 0
    health: HealthProbe | None = None
    labels: dict[str, str] = {}
    image_healthcheck: list[str] = []
    inspected: bool = True
    reason: str | None = None
    job_id: str | None = None

    def subject_tokens(self) -> tuple[str, ...]:
        return ("project", "created", token(self.project))


DATA_TYPES: dict[str, type[EventData]] = {
    cls.TYPE: cls
    for cls in (
        WebhookReceived,
        WebhookReplayed,
        WebhookRouted,
        JobRequested,
        JobRequestedV2,
        JobStarted,
        JobSucceeded,
        JobFailed,
        JobInterrupted,
        JobSkipped,
        DeployRolledBack,
        DeliveryRequested,
        DeliveryAttempted,
        DeliverySucceeded,
        DeliveryFailed,
        DeliveryDead,
        DeliveryReplayed,
        EndpointDisabled,
        EndpointEnabled,
        EndpointCreated,
        EndpointUpdated,
        EndpointSecretRotated,
        EndpointPaused,
        EndpointResumed,
        EndpointDeleted,
        MessageSubmitted,
        MessageDispatched,
        RuleWaitExpired,
        RuleSequenceEnded,
        RuleTriggered,
        MessageDeadLettered,
        PartnerCreated,
        PartnerUpdated,
        PartnerTokenRotated,
        PartnerStatusChanged,
        PartnerDeleted,
        ReplayStarted,
        ReplayResumed,
        ReplayFinished,
        ApiTokenCreated,
        ApiTokenRevoked,
        ProjectCreated,
    )
}

# ------------------------------------------------------ requests over the bus (no events)


def dry_run_subject(prefix: str) -> str:
    """Where routers answer what their rules make of a recorded webhook (core NATS
    request/reply, one replica of the queue group answers). Outside ``<prefix>.>``: the
    stream would take (and acknowledge) a request sent there. Upper case, which no prefix
    has, so no installation's stream takes another's."""
    return f"_HOOKBUS.{prefix}.router.dry_run"


def presence_subject(prefix: str) -> str:
    """Where dispatcher replicas say what they hold read ahead and that they wait for
    work (core NATS, every replica hears every word). Outside ``<prefix>.>`` as
    ``dry_run_subject`` is: never stored, and no installation hears another's."""
    return f"_HOOKBUS.{prefix}.dispatcher.presence"


class DryRunRequest(msgspec.Struct, **_FROZEN):
    """A recorded ``webhook.received`` or ``webhook.replayed`` envelope, to evaluate."""

    event: msgspec.Raw


class PlannedRequest(msgspec.Struct, **_FROZEN):
    """What a dry run would have requested: the request's type and a one-line summary."""

    rule: str
    type: str
    summary: str


class DryRunAnswer(msgspec.Struct, **_FROZEN):
    """A router's rules on one webhook: each rule's decision (the first failed test of a
    rule that did not match), the actions a template left out, and what would be asked."""

    config_version: str = ""
    matched: list[str] = []
    evaluations: list[RuleEvaluation] = []
    skipped: list[ActionSkipped] = []
    requests: list[PlannedRequest] = []
    # Set when the router could not evaluate the event (not a webhook, undecodable).
    error: str | None = None


# -------------------------------------------------------------------- envelope

D = TypeVar("D", bound=EventData)


class Event(msgspec.Struct, Generic[D], **_FROZEN):
    """A CloudEvents 1.0 event in structured JSON mode, with hookbus's extensions."""

    id: str
    source: str
    type: str
    time: datetime
    data: D
    correlationid: str
    causationid: str | None = None
    tenant: str = "default"
    subject: str | None = None
    specversion: str = "1.0"
    datacontenttype: str = "application/json"
    # CloudEvents distributed-tracing extension: the W3C trace context of the span that
    # made this event (see ``tracing``); a derived event carries its cause's on.
    traceparent: str | None = None
    tracestate: str | None = None

    def bus_subject(self, prefix: str) -> str:
        return ".".join((prefix, *self.data.subject_tokens()))


def make_event(
    data: D,
    *,
    source: str,
    id: str | None = None,
    cause: Event[Any] | None = None,
    subject: str | None = None,
    tenant: str | None = None,
) -> Event[D]:
    """Build an envelope; a derived event inherits correlation and tenant from its cause."""
    event_id = id or new_id()
    return Event(
        id=event_id,
        source=source,
        type=data.TYPE,
        time=datetime.now(UTC),
        data=data,
        correlationid=cause.correlationid if cause else event_id,
        causationid=cause.id if cause else None,
        tenant=tenant or (cause.tenant if cause else "default"),
        subject=subject,
        traceparent=cause.traceparent if cause else None,
        tracestate=cause.tracestate if cause else None,
    )


class RawEvent(msgspec.Struct, **_FROZEN):
    """The envelope with its data left as JSON bytes: for relaying and listing."""

    id: str
    source: str
    type: str
    time: datetime
    correlationid: str
    data: msgspec.Raw = msgspec.Raw(b"null")
    causationid: str | None = None
    tenant: str = "default"
    subject: str | None = None
    specversion: str = "1.0"
    datacontenttype: str = "application/json"
    traceparent: str | None = None
    tracestate: str | None = None


class UnknownEventType(msgspec.ValidationError):
    pass


_envelope_decoder = msgspec.json.Decoder(RawEvent)
_data_decoders: dict[str, Callable[[bytes], EventData]] = {
    name: msgspec.json.Decoder(cls).decode for name, cls in DATA_TYPES.items()
}
_encoder = msgspec.json.Encoder()


def encode(event: Event[Any]) -> bytes:
    return _encoder.encode(event)


def encode_data(data: EventData) -> bytes:
    return _encoder.encode(data)


def encode_around(event: Event[Any], data: bytes) -> bytes:
    """The envelope of ``event`` with its data given already encoded (copied, not re-encoded)."""
    return _encoder.encode(
        RawEvent(
            id=event.id,
            source=event.source,
            type=event.type,
            time=event.time,
            correlationid=event.correlationid,
            data=msgspec.Raw(data),
            causationid=event.causationid,
            tenant=event.tenant,
            subject=event.subject,
            specversion=event.specversion,
            datacontenttype=event.datacontenttype,
            traceparent=event.traceparent,
            tracestate=event.tracestate,
        )
    )


def decode_data(type_: str, raw: bytes | memoryview) -> EventData:
    try:
        decoder = _data_decoders[type_]
    except KeyError:
        raise UnknownEventType(f"unknown event type {type_!r}") from None
    return decoder(bytes(raw))


def decode(raw: bytes) -> Event[Any]:
    """Decode an envelope and its typed data; raises msgspec errors on bad input."""
    return typed(_envelope_decoder.decode(raw))


def typed(env: RawEvent) -> Event[Any]:
    """``env`` with its data decoded by its type; raises msgspec errors on bad data."""
    return Event(
        id=env.id,
        source=env.source,
        type=env.type,
        time=env.time,
        data=decode_data(env.type, env.data),
        correlationid=env.correlationid,
        causationid=env.causationid,
        tenant=env.tenant,
        subject=env.subject,
        specversion=env.specversion,
        datacontenttype=env.datacontenttype,
        traceparent=env.traceparent,
        tracestate=env.tracestate,
    )
