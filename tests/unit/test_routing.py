"""Rule matching and routing: why a rule matched or not, and the requests a webhook causes."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from prometheus_client import REGISTRY

from hookbus_common import events as ev
from hookbus_common.consumer import Incoming
from hookbus_common.errors import PermanentError
from hookbus_common.events import (
    DeliveryRequested,
    JobRequestedV2,
    WebhookReceived,
    WebhookReplayed,
    WebhookRouted,
    make_event,
)
from hookbus_router.config import Rule, ShellAction, WebhookAction
from hookbus_router.routing import make_handler, route, route_replay
from hookbus_router.rules import evaluate

PAYLOAD = b'{"ref": "refs/heads/main",  "commits": [ {"id": "c0ffee"} ], "n": 1.0}'
SHELL = ShellAction(command=["./deploy.sh"])
HOOK = WebhookReceived(
    source="github",
    kind="github",
    event_type="push",
    delivery_id="gh-delivery-1",
    payload=msgspec.Raw(PAYLOAD),
    repository="acme/app",
    branch="main",
    commit="c0ffee",
    sender="alice",
)


def rule(name: str = "r", actions: list | None = None, **globs) -> Rule:
    return Rule(name=name, actions=actions or [SHELL], **globs)


def hook_event(data: WebhookReceived = HOOK, **kw) -> ev.Event[WebhookReceived]:
    kw.setdefault("id", "evt_hook")
    kw.setdefault("tenant", "acme")
    kw.setdefault("subject", "acme/app")
    return make_event(data, source="/hookbus/receiver", **kw)


def with_(**changes) -> WebhookReceived:
    return msgspec.structs.replace(HOOK, **changes)


# -------------------------------------------------------------------------- evaluate


def test_a_rule_of_only_wildcards_matches_anything():
    result = evaluate(rule(), with_(repository=None, branch=None))

    assert result.matched
    assert result.rule == "r"
    assert result.reason == "matched"


@pytest.mark.parametrize(
    "globs",
    [
        {"source": "github"},
        {"source": "git*"},
        {"event": "push"},
        {"event": "pu?h"},
        {"repository": "acme/*"},
        {"repository": "*/app"},
        {"branch": "main"},
        {"branch": "[mr]ain"},
        {"source": "github", "event": "push", "repository": "acme/app", "branch": "main"},
    ],
)
def test_globs_that_fit_match(globs):
    assert evaluate(rule(**globs), HOOK).matched


@pytest.mark.parametrize(
    ("globs", "field", "value"),
    [
        ({"source": "gitlab"}, "source", "github"),
        ({"source": "gl-*"}, "source", "github"),
        ({"event": "pull_request"}, "event", "push"),
        ({"repository": "other/*"}, "repository", "acme/app"),
        ({"branch": "release/*"}, "branch", "main"),
        # Globs are case-sensitive: branch names are.
        ({"branch": "Main"}, "branch", "main"),
    ],
)
def test_a_glob_that_does_not_fit_says_which_field_and_why(globs, field, value):
    result = evaluate(rule(**globs), HOOK)

    assert not result.matched
    assert result.reason.startswith(f"{field}:")
    assert repr(value) in result.reason
    pattern = next(iter(globs.values()))
    assert repr(pattern) in result.reason


@pytest.mark.parametrize("field", ["repository", "branch"])
def test_a_glob_on_a_fact_the_event_lacks_does_not_match(field):
    hook = with_(**{field: None}, tag="v1.0")

    result = evaluate(rule(**{field: "*main*"}), hook)

    assert not result.matched
    assert field in result.reason
    assert "none" in result.reason


def test_a_disabled_rule_never_matches_and_says_so():
    result = evaluate(rule(enabled=False), HOOK)

    assert not result.matched
    assert "disabled" in result.reason


def test_the_first_failing_field_is_the_reason():
    result = evaluate(rule(source="gitlab", branch="dev"), HOOK)

    assert result.reason.startswith("source:")


# ------------------------------------------------------------------------------ route


def test_no_rules_gives_only_the_routing_record():
    hook = hook_event()

    (routed,) = route([], hook)

    assert isinstance(routed.data, WebhookRouted)
    assert routed.data.matched == []
    assert routed.data.evaluations == []
    assert routed.data.requested == []


def test_the_routing_record_explains_every_rule_in_order():
    rules = [
        rule("deploy", branch="main"),
        rule("release", branch="release/*"),
        rule("off", enabled=False),
        rule("notify", actions=[WebhookAction(url="https://example.com/x")]),
    ]
    hook = hook_event()

    routed, *requests = route(rules, hook)

    data = routed.data
    assert isinstance(data, WebhookRouted)
    assert [e.rule for e in data.evaluations] == ["deploy", "release", "off", "notify"]
    assert [e.matched for e in data.evaluations] == [True, False, False, True]
    assert "branch" in data.evaluations[1].reason
    assert "disabled" in data.evaluations[2].reason
    assert data.matched == ["deploy", "notify"]
    assert data.requested == [r.id for r in requests]
    assert len(requests) == 2
    assert (data.source, data.event_type, data.webhook_id) == ("github", "push", hook.id)


def test_the_routing_record_is_caused_by_the_webhook():
    hook = hook_event()

    routed, *_ = route([rule()], hook)

    assert routed.type == WebhookRouted.TYPE
    assert routed.causationid == hook.id
    assert routed.correlationid == hook.correlationid
    assert routed.tenant == "acme"
    assert routed.subject == hook.subject
    assert routed.bus_subject("hookbus") == "hookbus.webhook.routed.github.push"


def test_a_rule_with_several_actions_makes_a_request_for_each_in_order():
    actions = [
        ShellAction(command=["./build.sh"]),
        WebhookAction(url="https://example.com/a"),
        ShellAction(command=["./notify.sh"]),
    ]

    _, *requests = route([rule("multi", actions=actions)], hook_event())

    assert [type(r.data) for r in requests] == [JobRequestedV2, DeliveryRequested, JobRequestedV2]
    assert requests[0].data.spec.command == ["./build.sh"]
    assert requests[2].data.spec.command == ["./notify.sh"]
    assert len({r.id for r in requests}) == 3
    assert requests[0].data.job_id != requests[2].data.job_id


def test_unmatched_rules_make_no_requests():
    _, *requests = route([rule(branch="dev"), rule("b", enabled=False)], hook_event())

    assert requests == []


def test_shell_action_becomes_a_job_request():
    action = ShellAction(
        command=["./deploy.sh", "--env", "prod"],
        env={"STAGE": "prod"},
        timeout=42.0,
        payload="file",
        cwd="/srv/app",
    )
    hook = hook_event()

    _, job = route([rule("deploy", actions=[action])], hook)

    data = job.data
    assert isinstance(data, JobRequestedV2)
    assert job.type == JobRequestedV2.TYPE
    assert data.kind == "shell"
    assert data.rule == "deploy"
    assert data.webhook_id == hook.id
    assert data.job_id.startswith("job_")
    assert isinstance(data.spec, ev.ShellSpec)
    assert data.spec.command == ["./deploy.sh", "--env", "prod"]
    assert data.spec.env == {"STAGE": "prod"}
    assert data.spec.timeout == 42.0
    assert data.spec.payload == "file"
    assert data.spec.cwd == "/srv/app"
    assert data.on_interrupt == "record"
    assert job.bus_subject("hookbus") == "hookbus.job.requested.shell"
    assert job.causationid == hook.id
    assert job.correlationid == hook.correlationid
    assert job.tenant == "acme"


def test_a_rule_that_retries_interrupted_runs_says_so_in_its_job_requests():
    retry = ShellAction(command=["./sync.sh"], on_interrupt="retry")
    _, first, second = route([rule("sync", actions=[retry, SHELL])], hook_event())
    assert isinstance(first.data, JobRequestedV2)
    assert isinstance(second.data, JobRequestedV2)
    assert (first.data.on_interrupt, second.data.on_interrupt) == ("retry", "record")


def test_job_context_carries_the_webhooks_facts():
    hook = hook_event()

    _, job = route([rule()], hook)

    assert job.data.context == {
        "HOOKBUS_EVENT_ID": hook.id,
        "HOOKBUS_CORRELATION_ID": hook.correlationid,
        "HOOKBUS_SOURCE": "github",
        "HOOKBUS_SOURCE_KIND": "github",
        "HOOKBUS_EVENT_TYPE": "push",
        "HOOKBUS_DELIVERY_ID": "gh-delivery-1",
        "HOOKBUS_REPOSITORY": "acme/app",
        "HOOKBUS_BRANCH": "main",
        "HOOKBUS_COMMIT": "c0ffee",
        "HOOKBUS_SENDER": "alice",
    }


def test_job_context_leaves_out_facts_the_webhook_lacks():
    hook = hook_event(with_(branch=None, tag="v2.0", delivery_id=None, sender=None))

    _, job = route([rule()], hook)

    ctx = job.data.context
    assert ctx["HOOKBUS_TAG"] == "v2.0"
    assert "HOOKBUS_BRANCH" not in ctx
    assert "HOOKBUS_DELIVERY_ID" not in ctx
    assert "HOOKBUS_SENDER" not in ctx
    assert all(isinstance(v, str) for v in ctx.values())


def test_context_correlation_id_is_the_chains_not_the_hooks_own_id():
    root = make_event(HOOK, source="/hookbus/receiver", id="evt_root")
    replayed = hook_event(cause=root)

    _, job = route([rule()], replayed)

    assert job.data.context["HOOKBUS_CORRELATION_ID"] == "evt_root"
    assert job.data.context["HOOKBUS_EVENT_ID"] == "evt_hook"
    assert job.correlationid == "evt_root"


def test_payload_passes_through_byte_for_byte():
    rules = [rule("job"), rule("hook", actions=[WebhookAction(url="https://example.com/x")])]

    _, job, delivery = route(rules, hook_event())

    assert bytes(job.data.payload) == PAYLOAD
    assert bytes(delivery.data.body) == PAYLOAD
    # ... and still so once the requests are encoded for the bus and decoded again.
    for request, field in ((job, "payload"), (delivery, "body")):
        encoded = ev.encode(request)
        assert PAYLOAD in encoded
        assert bytes(getattr(ev.decode(encoded).data, field)) == PAYLOAD


def test_webhook_action_becomes_a_delivery_request():
    action = WebhookAction(url="https://example.com/hook", method="PUT", headers={"x-team": "ops"})
    hook = hook_event()

    _, delivery = route([rule("notify", actions=[action])], hook)

    data = delivery.data
    assert isinstance(data, DeliveryRequested)
    assert delivery.type == DeliveryRequested.TYPE
    assert data.rule == "notify"
    assert data.webhook_id == hook.id
    assert data.url == "https://example.com/hook"
    assert data.method == "PUT"
    assert data.headers["x-team"] == "ops"
    assert data.headers["content-type"] == "application/json"
    assert data.delivery_id.startswith("dlv_")
    assert data.tenant == "acme"
    assert delivery.bus_subject("hookbus") == "hookbus.delivery.requested.acme"
    assert delivery.causationid == hook.id


def test_an_endpoint_action_names_the_endpoint_for_the_dispatcher_to_resolve():
    action = WebhookAction(endpoint="billing", headers={"x-team": "ops"})
    hook = hook_event()

    _, delivery = route([rule("notify", actions=[action])], hook)

    data = delivery.data
    assert isinstance(data, DeliveryRequested)
    assert (data.endpoint, data.url) == ("billing", "")
    assert data.event_type == hook.data.event_type
    assert data.headers["x-team"] == "ops"
    assert data.delivery_id.startswith("dlv_")


def test_a_rules_content_type_replaces_the_default_whatever_its_case():
    action = WebhookAction(
        url="https://example.com/hook", headers={"Content-Type": "application/cloudevents+json"}
    )

    _, delivery = route([rule(actions=[action])], hook_event())

    content_types = [v for k, v in delivery.data.headers.items() if k.lower() == "content-type"]
    assert content_types == ["application/cloudevents+json"]


# ------------------------------------------------------------------------ determinism


RULES = [
    rule("deploy", actions=[SHELL, WebhookAction(url="https://example.com/a")]),
    rule("notify", actions=[WebhookAction(url="https://example.com/b")]),
    rule("never", branch="dev"),
]


def test_routing_the_same_webhook_twice_gives_the_same_events():
    # Invariant 4: a redelivered webhook derives the same ids, so nothing is recorded twice.
    first = route(RULES, hook_event())
    second = route(RULES, hook_event())

    assert [e.id for e in first] == [e.id for e in second]
    assert [e.data for e in first] == [e.data for e in second]
    assert len({e.id for e in first}) == len(first) == 4


def test_ids_do_not_depend_on_the_order_of_other_rules():
    forward = route(RULES, hook_event())
    backward = route(list(reversed(RULES)), hook_event())

    assert {e.id for e in forward[1:]} == {e.id for e in backward[1:]}


def test_different_webhooks_get_different_ids():
    a = route(RULES, hook_event(id="evt_a"))
    b = route(RULES, hook_event(id="evt_b"))

    assert not {e.id for e in a} & {e.id for e in b}
    jobs_a = {e.data.job_id for e in a if isinstance(e.data, JobRequestedV2)}
    jobs_b = {e.data.job_id for e in b if isinstance(e.data, JobRequestedV2)}
    assert jobs_a
    assert not jobs_a & jobs_b


def test_request_ids_are_not_the_hooks_or_each_others():
    hook = hook_event()

    events = route(RULES, hook)

    ids = [e.id for e in events]
    assert hook.id not in ids
    job_ids = [e.data.job_id for e in events if isinstance(e.data, JobRequestedV2)]
    dlv_ids = [e.data.delivery_id for e in events if isinstance(e.data, DeliveryRequested)]
    assert len(set(ids + job_ids + dlv_ids)) == len(ids) + len(job_ids) + len(dlv_ids)


# ----------------------------------------------------------------------------- replay


def replay_event(original: ev.Event[WebhookReceived], **kw) -> ev.Event[WebhookReplayed]:
    kw.setdefault("id", "evt_replay")
    data = WebhookReplayed(
        replay_of=original.id, webhook=original.data, requested_by="alice", reason="host down"
    )
    return make_event(
        data, source="/hookbus/cli", tenant=original.tenant, subject=original.subject, **kw
    )


def _request_facts(e: ev.Event) -> tuple:
    """What a request asks for, leaving out the ids it derives from its cause."""
    d = e.data
    if isinstance(d, JobRequestedV2):
        return (type(d), d.rule, d.spec, bytes(d.payload))
    return (type(d), d.rule, d.url, d.method, d.headers, bytes(d.body), d.tenant)


def test_a_replay_is_routed_like_the_webhook_it_replays():
    original = hook_event()

    first, *first_requests = route(RULES, original)
    again, *replay_requests = route_replay(RULES, replay_event(original))

    assert isinstance(again.data, WebhookRouted)
    assert again.data.evaluations == first.data.evaluations
    assert again.data.matched == first.data.matched == ["deploy", "notify"]
    assert [_request_facts(r) for r in replay_requests] == [
        _request_facts(r) for r in first_requests
    ]
    assert again.data.requested == [r.id for r in replay_requests]


def test_a_replay_makes_new_ids_for_everything():
    original = hook_event()

    first = route(RULES, original)
    again = route_replay(RULES, replay_event(original))

    assert not {e.id for e in first} & {e.id for e in again}
    for field in ("job_id", "delivery_id"):
        before = {getattr(e.data, field) for e in first if hasattr(e.data, field)}
        after = {getattr(e.data, field) for e in again if hasattr(e.data, field)}
        assert before
        assert not before & after


def test_a_replays_routing_record_says_it_is_a_replay_and_of_what():
    original = hook_event()
    replay = replay_event(original)

    (first, *_), (again, *_) = route(RULES, original), route_replay(RULES, replay)

    assert first.data.replay_of is None
    assert again.data.replay_of == original.id
    assert again.data.webhook_id == replay.id
    assert again.causationid == replay.id
    assert again.subject == original.subject
    assert again.bus_subject("hookbus") == "hookbus.webhook.routed.github.push"


def test_a_replays_requests_belong_to_the_replays_chain():
    original = hook_event()
    replay = replay_event(original)

    _, job, delivery, _ = route_replay(RULES, replay)

    for request in (job, delivery):
        assert request.causationid == replay.id
        assert request.correlationid == replay.correlationid == replay.id
        assert request.tenant == "acme"
        assert request.data.webhook_id == replay.id
    assert job.data.context["HOOKBUS_EVENT_ID"] == replay.id
    assert job.data.context["HOOKBUS_REPLAY_OF"] == original.id
    assert "HOOKBUS_REPLAY_OF" not in route(RULES, original)[1].data.context


def test_routing_the_same_replay_twice_gives_the_same_events():
    # A redelivered replay derives the same ids, so it is recorded once, like a webhook.
    original = hook_event()

    first = route_replay(RULES, replay_event(original))
    second = route_replay(RULES, replay_event(original))

    assert [e.id for e in first] == [e.id for e in second]
    assert [e.data for e in first] == [e.data for e in second]


def test_two_replays_of_one_webhook_are_two_chains():
    original = hook_event()

    a = route_replay(RULES, replay_event(original, id="evt_replay_a"))
    b = route_replay(RULES, replay_event(original, id="evt_replay_b"))

    assert not {e.id for e in a} & {e.id for e in b}


# ----------------------------------------------------------------------------- handler


def _handled(event: ev.Event, rules: list[Rule] = RULES, **options: bool) -> list[ev.Event]:
    async def collect() -> list[ev.Event]:
        incoming = Incoming(event=event, subject="s", deliveries=1, _msg=None)  # type: ignore[arg-type]
        return [e async for out in make_handler(rules, **options)(incoming) for e in out]

    return asyncio.run(collect())


def test_the_handler_routes_webhooks_and_replays_each_as_route_does():
    original = hook_event()
    replay = replay_event(original)

    cases = [(original, route(RULES, original)), (replay, route_replay(RULES, replay))]
    for event, routed in cases:
        assert [(e.id, e.data) for e in _handled(event)] == [(e.id, e.data) for e in routed]


def test_the_handler_refuses_any_other_event_for_good():
    job = make_event(ev.JobStarted(job_id="j", kind="shell", rule="r"), source="/test")

    with pytest.raises(PermanentError, match="router cannot handle"):
        _handled(job)


def _unmatched_count() -> float:
    return REGISTRY.get_sample_value("hookbus_router_unmatched_total") or 0.0


def test_a_webhook_no_rule_matches_costs_no_write_and_is_counted():
    misses = [rule("never", branch="dev"), rule("other", event="tag_push")]
    before = _unmatched_count()

    assert _handled(hook_event(), misses) == []
    assert _unmatched_count() == before + 1


def test_a_webhook_no_rule_matches_is_recorded_when_asked():
    misses = [rule("never", branch="dev")]

    [routed] = _handled(hook_event(), misses, record_unmatched=True)

    assert routed.data.matched == []
    assert [e.reason for e in routed.data.evaluations] == [
        e.reason for e in route(misses, hook_event())[0].data.evaluations
    ]


def test_a_replay_no_rule_matches_is_always_recorded():
    # A person asked for the replay: its record says what became of it.
    misses = [rule("never", branch="dev")]

    [routed] = _handled(replay_event(hook_event()), misses)

    assert routed.data.matched == []
    assert routed.data.replay_of == "evt_hook"
