"""The event contract: envelope round trips, CloudEvents shape, ids, tokens and subjects."""

from __future__ import annotations

import json
import re
import types
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hookbus_common import events as ev
from hookbus_common.errors import InvalidError
from hookbus_common.events import (
    DATA_TYPES,
    DeliveryAttempted,
    DeliveryDead,
    DeliveryFailed,
    DeliveryRequested,
    DeliverySucceeded,
    EventData,
    JobFailed,
    JobInterrupted,
    JobRequested,
    JobRequestedV2,
    JobStarted,
    JobSucceeded,
    MessageDeadLettered,
    RuleEvaluation,
    ShellSpec,
    WebhookReceived,
    WebhookReplayed,
    WebhookRouted,
    decode,
    decode_data,
    derived_id,
    encode,
    make_event,
    new_id,
    token,
)

# Odd spacing, key order, an escape and a trailing zero: re-encoding would change any of them.
PAYLOAD = b'{"zeta": 1,  "alpha" : [1, 2, {"k": "caf\\u00e9"}],\n "n": 1.50}'

SAMPLES: dict[str, EventData] = {
    WebhookReceived.TYPE: WebhookReceived(
        source="gitlab-main",
        kind="gitlab",
        event_type="Push Hook",
        delivery_id="d-1",
        headers={"x-gitlab-event": "Push Hook"},
        payload=msgspec.Raw(PAYLOAD),
        body_sha256="ab" * 32,
        remote_addr="10.0.0.1",
        repository="org/app",
        branch="main",
        commit="c0ffee",
        sender="alice",
    ),
    WebhookReplayed.TYPE: WebhookReplayed(
        replay_of="evt_0",
        webhook=WebhookReceived(
            source="gitlab-main",
            kind="gitlab",
            event_type="Push Hook",
            payload=msgspec.Raw(PAYLOAD),
            repository="org/app",
            branch="main",
        ),
        requested_by="alice",
        reason="the deploy host was down",
    ),
    WebhookRouted.TYPE: WebhookRouted(
        source="gh",
        event_type="push",
        webhook_id="evt_1",
        matched=["deploy"],
        evaluations=[
            RuleEvaluation(rule="deploy", matched=True, reason="matched"),
            RuleEvaluation(rule="other", matched=False, reason="branch: nope"),
        ],
        requested=["evt_2"],
        joined=[ev.JoinedEvents(rule="deploy", key="abc", events=["evt_0", "evt_1"])],
    ),
    JobRequested.TYPE: JobRequested(
        job_id="job_1",
        kind="shell",
        rule="deploy",
        webhook_id="evt_1",
        shell=ShellSpec(command=["./deploy.sh", "a b"], env={"X": "1"}, timeout=5.0, cwd="/srv"),
        context={"HOOKBUS_BRANCH": "main"},
        payload=msgspec.Raw(PAYLOAD),
    ),
    JobRequestedV2.TYPE: JobRequestedV2(
        job_id="job_1",
        rule="deploy",
        webhook_id="evt_1",
        spec=ShellSpec(command=["./deploy.sh", "a b"], env={"X": "1"}, timeout=5.0, cwd="/srv"),
        context={"HOOKBUS_BRANCH": "main"},
        payload=msgspec.Raw(PAYLOAD),
        sequence=ev.SequenceStep(rule="deploy", index=1, of=3, config_version="abc", events=["e"]),
    ),
    JobStarted.TYPE: JobStarted(job_id="job_1", kind="shell", rule="deploy", attempt=2),
    JobSucceeded.TYPE: JobSucceeded(
        job_id="job_1", kind="shell", rule="deploy", exit_code=0, duration_ms=12.5, output="ok\n"
    ),
    JobFailed.TYPE: JobFailed(
        job_id="job_1",
        kind="shell",
        rule="deploy",
        exit_code=None,
        signal=9,
        timed_out=True,
        output="x" * 10,
        output_bytes=100,
        truncated=True,
        error="timed out",
    ),
    JobInterrupted.TYPE: JobInterrupted(
        job_id="job_1",
        kind="shell",
        rule="deploy",
        attempt=2,
        reason="orphaned",
        retrying=True,
        host="runner-1",
        pgid=4242,
    ),
    ev.ProjectCreated.TYPE: ev.ProjectCreated(
        project="app",
        repository="localhost/acme/app",
        image="localhost/acme/app:v1",
        stages=[ev.ProjectStage(name="dev", container="app-dev")],
        port=8080,
        host_port=41234,
        health=ev.HealthProbe(http="http://127.0.0.1:41234/health", timeout=30),
        labels={"io.hookbus.health.path": "/health"},
        image_healthcheck=["CMD-SHELL", "wget -q -O- localhost:8080"],
        job_id="job_1",
    ),
    ev.JobSkipped.TYPE: ev.JobSkipped(
        job_id="job_2",
        kind="docker",
        rule="deploy",
        attempt=0,
        superseded_by="job_6",
        concurrency_key="deploy-acme/web-production",
        error="superseded by job_6",
    ),
    ev.DeployRolledBack.TYPE: ev.DeployRolledBack(
        job_id="job_1",
        rule="deploy",
        container="web",
        reason="not healthy within 30 s: GET http://127.0.0.1:8080/health answered 503",
        image_before="registry.example.com/web:1.0",
        image_after="registry.example.com/web:1.1",
    ),
    DeliveryRequested.TYPE: DeliveryRequested(
        delivery_id="dlv_1",
        rule="notify",
        webhook_id="evt_1",
        url="https://example.com/hook",
        method="PUT",
        headers={"content-type": "application/json"},
        body=msgspec.Raw(PAYLOAD),
        tenant="acme",
        ordering_key="order-42",
    ),
    DeliveryAttempted.TYPE: DeliveryAttempted(
        delivery_id="dlv_1", url="https://example.com/hook", attempt=3, status_code=503
    ),
    DeliverySucceeded.TYPE: DeliverySucceeded(
        delivery_id="dlv_1", url="https://example.com/hook", status_code=204, tenant="acme"
    ),
    DeliveryFailed.TYPE: DeliveryFailed(
        delivery_id="dlv_1", url="https://example.com/hook", status_code=410
    ),
    DeliveryDead.TYPE: DeliveryDead(
        delivery_id="dlv_1", url="https://example.com/hook", error="ConnectError: refused"
    ),
    ev.DeliveryReplayed.TYPE: ev.DeliveryReplayed(
        replay_id="dlr_1", delivery_id="dlv_2", replay_of="dlv_1", requested_by="ana"
    ),
    ev.EndpointDisabled.TYPE: ev.EndpointDisabled(
        endpoint="billing", reason="answered 410 Gone", delivery_id="dlv_1"
    ),
    ev.EndpointEnabled.TYPE: ev.EndpointEnabled(
        endpoint="billing", by="ana", recover_since=datetime(2026, 1, 1, tzinfo=UTC)
    ),
    ev.EndpointCreated.TYPE: ev.EndpointCreated(
        endpoint="billing",
        endpoint_id="ep_1",
        tenant="acme",
        url="https://x.example/h",
        events=["invoice.*"],
        secret_id="sec_1",
        by="ana",
    ),
    ev.EndpointUpdated.TYPE: ev.EndpointUpdated(
        endpoint="billing", endpoint_id="ep_1", url="https://y.example/h", description="d"
    ),
    ev.EndpointSecretRotated.TYPE: ev.EndpointSecretRotated(
        endpoint="billing",
        endpoint_id="ep_1",
        secret_id="sec_2",
        previous_valid_until=datetime(2026, 1, 2, tzinfo=UTC),
    ),
    ev.EndpointPaused.TYPE: ev.EndpointPaused(endpoint="billing", endpoint_id="ep_1", reason="r"),
    ev.EndpointResumed.TYPE: ev.EndpointResumed(endpoint="billing", endpoint_id="ep_1"),
    ev.EndpointDeleted.TYPE: ev.EndpointDeleted(endpoint="billing", endpoint_id="ep_1"),
    ev.MessageSubmitted.TYPE: ev.MessageSubmitted(
        message_id="msg_1",
        event_type="invoice.paid",
        payload=msgspec.Raw(b'{"id":1}'),
        tenant="acme",
        idempotency_key="k1",
        ordering_key="cust_1",
        submitted_by="api:app",
    ),
    ev.MessageDispatched.TYPE: ev.MessageDispatched(
        message_id="msg_1",
        event_type="invoice.paid",
        tenant="acme",
        endpoints=["billing"],
        delivery_ids=["dlv_1"],
    ),
    ev.RuleWaitExpired.TYPE: ev.RuleWaitExpired(
        rule="deploy-when-green",
        key="abc123",
        arrived={"0": "evt_1"},
        missing=[1],
        first_seen=datetime(2026, 1, 1, tzinfo=UTC),
        expires_at=datetime(2026, 1, 1, 1, tzinfo=UTC),
    ),
    ev.RuleTriggered.TYPE: ev.RuleTriggered(
        rule="deploy",
        by="api:ana",
        webhook=WebhookReceived(source="manual", kind="manual", event_type="release"),
        reason="hotfix",
    ),
    ev.RuleSequenceEnded.TYPE: ev.RuleSequenceEnded(
        rule="deploy",
        webhook_id="evt_1",
        outcome="stopped",
        index=1,
        of=3,
        job_id="job_2",
        reason="exit code 1",
    ),
    MessageDeadLettered.TYPE: MessageDeadLettered(
        service="router",
        bus_subject="hookbus.webhook.received.gh.push",
        stream_sequence=42,
        deliveries=10,
        error="PermanentError: no",
        message="{}",
    ),
    ev.PartnerCreated.TYPE: ev.PartnerCreated(
        partner_id="ptn_0190aa",
        name="Acme",
        token_id="tok_0190aa",
        description="orders",
        tenant="acme",
        validation=ev.PartnerValidation(required=["order.id"], schema={"type": "object"}),
    ),
    ev.PartnerUpdated.TYPE: ev.PartnerUpdated(partner_id="ptn_0190aa", name="Acme Inc"),
    ev.PartnerTokenRotated.TYPE: ev.PartnerTokenRotated(
        partner_id="ptn_0190aa", token_id="tok_2", previous_token_id="tok_0190aa"
    ),
    ev.PartnerStatusChanged.TYPE: ev.PartnerStatusChanged(
        partner_id="ptn_0190aa", status="SUSPENDED", previous="ACTIVE"
    ),
    ev.PartnerDeleted.TYPE: ev.PartnerDeleted(partner_id="ptn_0190aa"),
    ev.ReplayStarted.TYPE: ev.ReplayStarted(
        replay_id="rpl_0190aa",
        mode="redrive",
        requested_by="alice",
        selection=ev.ReplaySelection(
            since=datetime(2026, 11, 22, 7, 0, tzinfo=UTC), source="github", failed_jobs=True
        ),
        reason="deploy host was down",
        selected=12,
    ),
    ev.ReplayResumed.TYPE: ev.ReplayResumed(
        replay_id="rpl_0190aa", mode="republish", requested_by="bob", selected=12, done=5
    ),
    ev.ReplayFinished.TYPE: ev.ReplayFinished(
        replay_id="rpl_0190aa", mode="redrive", requested_by="alice", selected=12, done=12
    ),
    ev.ApiTokenCreated.TYPE: ev.ApiTokenCreated(
        token_id="tok_0190aa", name="alice", scope="operate", by="root"
    ),
    ev.ApiTokenRevoked.TYPE: ev.ApiTokenRevoked(token_id="tok_0190aa", name="alice", by="root"),
}

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
ID_RE = re.compile(r"^(?P<prefix>[a-z]+)_(?P<hex>[0-9a-f]{32})$")


def _event(data: EventData, **kw) -> ev.Event:
    return make_event(data, source="/hookbus/test", **kw)


def test_every_data_type_has_a_sample():
    # A new event type must be added to SAMPLES, so the round trip below covers it too.
    assert set(SAMPLES) == set(DATA_TYPES)
    for name, data in SAMPLES.items():
        assert type(data) is DATA_TYPES[name]
        assert name == type(data).TYPE


def test_type_names_are_versioned_and_unique():
    for name in DATA_TYPES:
        assert re.fullmatch(r"io\.hookbus\.[a-z]+(\.[a-z]+)+\.v\d+", name), name
    assert len({cls for cls in DATA_TYPES.values()}) == len(DATA_TYPES)


# --------------------------------------------------------------------- round trips


@pytest.mark.parametrize("type_name", sorted(DATA_TYPES))
def test_encode_decode_round_trip(type_name):
    event = _event(SAMPLES[type_name], subject="org/app", tenant="acme")

    back = decode(encode(event))

    assert back == event
    assert type(back.data) is DATA_TYPES[type_name]
    assert back.type == type_name


@pytest.mark.parametrize("type_name", sorted(DATA_TYPES))
def test_data_round_trips_alone(type_name):
    data = SAMPLES[type_name]

    assert decode_data(type_name, ev.encode_data(data)) == data


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (SAMPLES[WebhookReceived.TYPE], "payload"),
        (SAMPLES[JobRequested.TYPE], "payload"),
        (SAMPLES[JobRequestedV2.TYPE], "payload"),
        (SAMPLES[DeliveryRequested.TYPE], "body"),
    ],
)
def test_raw_payload_is_embedded_byte_for_byte(data, field):
    encoded = encode(_event(data))

    assert PAYLOAD in encoded
    back = decode(encoded)
    assert bytes(getattr(back.data, field)) == PAYLOAD
    # ... and it is still JSON that any reader sees as the same value.
    assert json.loads(encoded)["data"][field] == json.loads(PAYLOAD)


def test_decoded_time_is_timezone_aware_and_unchanged():
    event = _event(SAMPLES[JobStarted.TYPE])

    back = decode(encode(event))

    assert back.time == event.time
    assert back.time.utcoffset() == timedelta(0)


def test_decoder_ignores_fields_added_by_a_newer_producer():
    # Schema evolution is additive, so an older consumer must accept extra fields.
    doc = json.loads(encode(_event(SAMPLES[JobStarted.TYPE])))
    doc["newextension"] = "x"
    doc["data"]["new_field"] = [1, 2]

    back = decode(json.dumps(doc).encode())

    assert back.data == SAMPLES[JobStarted.TYPE]


# ------------------------------------------------------------------- decode errors


def test_decode_of_unknown_type_raises_a_validation_error():
    doc = json.loads(encode(_event(SAMPLES[JobStarted.TYPE])))
    doc["type"] = "com.example.unknown.v1"

    with pytest.raises(msgspec.ValidationError, match=r"com\.example\.unknown\.v1"):
        decode(json.dumps(doc).encode())


def test_decode_data_of_unknown_type_raises_a_validation_error():
    with pytest.raises(msgspec.ValidationError):
        decode_data("io.hookbus.nothing.v1", b"{}")


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"id": "x",}', b"\xff\xfe"])
def test_decode_of_malformed_json_raises_a_decode_error(raw):
    with pytest.raises(msgspec.DecodeError):
        decode(raw)


def test_decode_of_an_envelope_missing_a_required_attribute_raises():
    doc = json.loads(encode(_event(SAMPLES[JobStarted.TYPE])))
    del doc["id"]

    with pytest.raises(msgspec.ValidationError, match="id"):
        decode(json.dumps(doc).encode())


def test_decode_of_data_that_does_not_fit_its_type_raises():
    doc = json.loads(encode(_event(SAMPLES[JobStarted.TYPE])))
    del doc["data"]["job_id"]

    with pytest.raises(msgspec.ValidationError, match="job_id"):
        decode(json.dumps(doc).encode())


def test_decode_of_a_non_object_raises():
    with pytest.raises(msgspec.ValidationError):
        decode(b"[1, 2, 3]")


# ------------------------------------------------------------------- CloudEvents


@pytest.mark.parametrize("type_name", sorted(DATA_TYPES))
def test_envelope_is_cloudevents_1_0_structured_json(type_name):
    event = _event(SAMPLES[type_name], subject="org/app")

    doc = json.loads(encode(event))

    assert doc["specversion"] == "1.0"
    for required in ("id", "source", "type"):
        assert isinstance(doc[required], str)
        assert doc[required]
    assert doc["id"] == event.id
    assert doc["type"] == type_name
    assert doc["source"] == "/hookbus/test"
    assert RFC3339.match(doc["time"]), doc["time"]
    assert doc["datacontenttype"] == "application/json"
    assert doc["subject"] == "org/app"
    assert isinstance(doc["data"], dict)
    # Context attributes (core and extensions) are top-level, named in lower-case ASCII
    # letters and digits; every one that is set is a string.
    for name, value in doc.items():
        assert re.fullmatch(r"[a-z0-9]{1,20}", name), name
        if name != "data" and value is not None:
            assert isinstance(value, str), name
    assert doc["correlationid"] == event.id
    assert doc["tenant"] == "default"


def test_time_attribute_parses_back_to_the_event_time():
    event = _event(SAMPLES[JobStarted.TYPE])

    text = json.loads(encode(event))["time"]

    assert datetime.fromisoformat(text.replace("Z", "+00:00")) == event.time


def test_derived_event_carries_the_causation_extension():
    cause = _event(SAMPLES[WebhookReceived.TYPE], tenant="acme")
    effect = _event(SAMPLES[WebhookRouted.TYPE], cause=cause)

    doc = json.loads(encode(effect))

    assert doc["causationid"] == cause.id
    assert doc["correlationid"] == cause.id
    assert doc["tenant"] == "acme"


# -------------------------------------------------------------------------- ids


def test_new_id_has_the_prefix_and_a_uuid7():
    before = datetime.now(UTC)
    eid = new_id()
    after = datetime.now(UTC)

    m = ID_RE.match(eid)
    assert m
    assert m["prefix"] == "evt"
    u = uuid.UUID(hex=m["hex"])
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    # The first 48 bits are the creation time in milliseconds.
    ms = int(m["hex"][:12], 16)
    assert int(before.timestamp() * 1000) - 1 <= ms <= int(after.timestamp() * 1000) + 1


def test_new_id_takes_a_prefix():
    assert new_id("job").startswith("job_")
    assert new_id("dlv").startswith("dlv_")


def test_new_ids_are_unique():
    ids = [new_id() for _ in range(5000)]

    assert len(set(ids)) == len(ids)


def test_new_ids_sort_by_creation_time(monkeypatch):
    clock = iter(range(1_700_000_000_000, 1_700_000_000_000 + 50))
    fake_time = types.SimpleNamespace(time_ns=lambda: next(clock) * 1_000_000)
    monkeypatch.setattr(ev, "time", fake_time)

    ids = [new_id() for _ in range(50)]

    assert ids == sorted(ids)


def test_derived_id_is_deterministic():
    assert derived_id("evt_a", "routed") == derived_id("evt_a", "routed")
    assert ID_RE.match(derived_id("evt_a", "routed"))


def test_derived_ids_are_the_uuid5_ids_every_release_derived():
    # Events recorded by earlier releases carry these ids; a redelivery must derive the
    # same ones, or it would act again.
    import uuid

    from hookbus_common.events import _ID_NAMESPACE

    for cause, step in [("evt_a", "routed"), ("evt_0123456789abcdef", "attempt/12"),
                        ("", ""), ("évt/ü", "€/step"), ("x" * 300, "request/deploy/0")]:  # fmt: skip
        assert derived_id(cause, step) == f"evt_{uuid.uuid5(_ID_NAMESPACE, f'{cause}/{step}').hex}"
    assert derived_id("evt_a", "routed") == "evt_" + uuid.uuid5(_ID_NAMESPACE, "evt_a/routed").hex


def test_derived_id_differs_by_step_and_by_cause():
    ids = {
        derived_id("evt_a", "routed"),
        derived_id("evt_a", "request/deploy/0"),
        derived_id("evt_a", "request/deploy/1"),
        derived_id("evt_a", "request/notify/0"),
        derived_id("evt_b", "routed"),
        derived_id("evt_b", "request/deploy/0"),
    }

    assert len(ids) == 6


def test_derived_id_takes_a_prefix():
    a = derived_id("evt_a", "job/deploy/0", prefix="job")

    assert a.startswith("job_")
    assert a != derived_id("evt_a", "job/deploy/1", prefix="job")


# ----------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Push Hook", "push_hook"),
        ("push", "push"),
        ("pull_request", "pull_request"),
        ("Tag Push Hook", "tag_push_hook"),
        ("  padded  ", "padded"),
        ("a.b.c", "a_b_c"),
        ("org/app", "org_app"),
        ("*", "_"),
        (">", "_"),
        ("", "_"),
        (None, "_"),
        ("...", "_"),
        ("MiXeD-Case_9", "mixed-case_9"),
    ],
)
def test_token_normalises_outside_input(raw, expected):
    assert token(raw) == expected


@pytest.mark.parametrize("raw", ["a.*.>", "evil.>", "x y\tz\n", "héllo wörld", "日本語", "a\x00b"])
def test_token_never_lets_subject_syntax_or_non_ascii_through(raw):
    t = token(raw)

    assert re.fullmatch(r"[a-z0-9_-]+", t), t


@hsettings(database=None, max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text()))
def test_token_is_always_one_valid_bounded_token(raw):
    t = token(raw)

    assert re.fullmatch(r"[a-z0-9_-]{1,64}", t)


# --------------------------------------------------------------------- subjects

OUTSIDE = {"source": "GitLab Main", "event_type": "Push Hook"}


SUBJECT_CASES = [
    (
        WebhookReceived(source="gh", kind="github", event_type="push"),
        "hookbus.webhook.received.gh.push",
    ),
    (
        WebhookReceived(kind="gitlab", **OUTSIDE),
        "hookbus.webhook.received.gitlab_main.push_hook",
    ),
    (
        WebhookRouted(webhook_id="evt_1", **OUTSIDE),
        "hookbus.webhook.routed.gitlab_main.push_hook",
    ),
    (
        WebhookReplayed(replay_of="evt_0", webhook=WebhookReceived(kind="gitlab", **OUTSIDE)),
        "hookbus.webhook.replayed.gitlab_main.push_hook",
    ),
    (
        JobRequested(job_id="j", kind="shell", rule="r", webhook_id="w"),
        "hookbus.job.requested.shell",
    ),
    (
        JobRequestedV2(job_id="j", rule="r", webhook_id="w", spec=ShellSpec(command=["x"])),
        "hookbus.job.requested.shell",
    ),
    (JobStarted(job_id="j", kind="shell", rule="r"), "hookbus.job.started.shell"),
    (JobSucceeded(job_id="j", kind="shell", rule="r"), "hookbus.job.succeeded.shell"),
    (
        JobSucceeded(
            job_id="j",
            kind="shell",
            rule="r",
            sequence=ev.SequenceStep(rule="Ship It", index=0, of=2),
        ),
        "hookbus.job.succeeded.shell.seq.ship_it",
    ),
    (
        ev.JobSkipped(
            job_id="j", kind="ssh", rule="r", sequence=ev.SequenceStep(rule="deploy", index=1, of=2)
        ),
        "hookbus.job.skipped.ssh.seq.deploy",
    ),
    (JobFailed(job_id="j", kind="Docker Run", rule="r"), "hookbus.job.failed.docker_run"),
    (JobInterrupted(job_id="j", kind="shell", rule="r"), "hookbus.job.interrupted.shell"),
    (ev.JobSkipped(job_id="j", kind="docker", rule="r"), "hookbus.job.skipped.docker"),
    (ev.ProjectCreated(project="Web", repository="r", image="r:1"), "hookbus.project.created.web"),
    (
        DeliveryRequested(delivery_id="d", rule="r", webhook_id="w", url="u", tenant="acme"),
        "hookbus.delivery.requested.acme",
    ),
    (DeliveryAttempted(delivery_id="d", url="u"), "hookbus.delivery.attempted.default"),
    (
        DeliverySucceeded(delivery_id="d", url="u", tenant="Acme Corp"),
        "hookbus.delivery.succeeded.acme_corp",
    ),
    (DeliveryFailed(delivery_id="d", url="u", tenant="t1"), "hookbus.delivery.failed.t1"),
    (DeliveryDead(delivery_id="d", url="u", tenant="t1"), "hookbus.delivery.dead.t1"),
    (
        MessageDeadLettered(
            service="router",
            bus_subject="s",
            stream_sequence=1,
            deliveries=1,
            error="e",
            message="m",
        ),
        "hookbus.deadletter.router",
    ),
    (
        ev.DeliveryReplayed(replay_id="dlr_1", delivery_id="dlv_2", replay_of="dlv_1"),
        "hookbus.delivery.replayed.default",
    ),
    (ev.EndpointDisabled(endpoint="Billing.EU"), "hookbus.endpoint.disabled.billing_eu"),
    (ev.EndpointEnabled(endpoint="billing"), "hookbus.endpoint.enabled.billing"),
    (
        ev.EndpointCreated(endpoint="Billing.EU", endpoint_id="ep_1", url="https://x"),
        "hookbus.endpoint.created.billing_eu",
    ),
    (
        ev.EndpointSecretRotated(endpoint="billing", endpoint_id="ep_1", secret_id="s"),
        "hookbus.endpoint.secret_rotated.billing",
    ),
    (ev.EndpointUpdated(endpoint="b", endpoint_id="ep_1"), "hookbus.endpoint.updated.b"),
    (ev.EndpointPaused(endpoint="b", endpoint_id="ep_1"), "hookbus.endpoint.paused.b"),
    (ev.EndpointResumed(endpoint="b", endpoint_id="ep_1"), "hookbus.endpoint.resumed.b"),
    (ev.EndpointDeleted(endpoint="b", endpoint_id="ep_1"), "hookbus.endpoint.deleted.b"),
    (
        ev.MessageSubmitted(message_id="msg_1", event_type="invoice.paid", tenant="Acme Co"),
        "hookbus.message.submitted.acme_co",
    ),
    (
        ev.MessageDispatched(message_id="msg_1", event_type="x", tenant="acme"),
        "hookbus.message.dispatched.acme",
    ),
    (
        ev.DeployRolledBack(job_id="job_1", rule="r", container="Web App", reason="unhealthy"),
        "hookbus.deploy.rolled_back.web_app",
    ),
    (
        ev.PartnerCreated(partner_id="ptn_01ab", name="Acme", token_id="tok_1"),
        "hookbus.partner.created.ptn_01ab",
    ),
    (ev.PartnerUpdated(partner_id="ptn_01ab", name="A"), "hookbus.partner.updated.ptn_01ab"),
    (
        ev.PartnerTokenRotated(partner_id="ptn_01ab", token_id="tok_2"),
        "hookbus.partner.rotated.ptn_01ab",
    ),
    (
        ev.PartnerStatusChanged(partner_id="ptn_01ab", status="SUSPENDED"),
        "hookbus.partner.status_changed.ptn_01ab",
    ),
    (ev.PartnerDeleted(partner_id="ptn_01ab"), "hookbus.partner.deleted.ptn_01ab"),
    (ev.RuleWaitExpired(rule="Deploy Green", key="k"), "hookbus.rule.wait.expired.deploy_green"),
    (
        ev.RuleSequenceEnded(rule="deploy", webhook_id="e", outcome="completed", index=2, of=3),
        "hookbus.rule.sequence.ended.deploy",
    ),
    (
        ev.RuleTriggered(
            rule="Deploy Green",
            by="api:ana",
            webhook=WebhookReceived(source="manual", kind="manual", event_type="release"),
        ),
        "hookbus.rule.triggered.deploy_green",
    ),
    (
        ev.ReplayStarted(replay_id="rpl_01ab", mode="redrive"),
        "hookbus.replay.started.rpl_01ab",
    ),
    (
        ev.ReplayResumed(replay_id="rpl_01ab", mode="republish"),
        "hookbus.replay.resumed.rpl_01ab",
    ),
    (
        ev.ReplayFinished(replay_id="rpl_01ab", mode="redrive"),
        "hookbus.replay.finished.rpl_01ab",
    ),
    (
        ev.ApiTokenCreated(token_id="tok_01ab", name="alice", scope="read"),
        "hookbus.apitoken.created.tok_01ab",
    ),
    (
        ev.ApiTokenRevoked(token_id="tok_01ab", name="alice"),
        "hookbus.apitoken.revoked.tok_01ab",
    ),
]


@pytest.mark.parametrize(("data", "subject"), SUBJECT_CASES)
def test_bus_subject_is_prefix_and_type_tokens(data, subject):
    assert _event(data).bus_subject("hookbus") == subject


def test_subject_cases_cover_every_type():
    assert {type(data) for data, _ in SUBJECT_CASES} == set(DATA_TYPES.values())


@pytest.mark.parametrize("type_name", sorted(DATA_TYPES))
def test_bus_subject_uses_the_given_prefix_and_has_no_empty_or_wild_tokens(type_name):
    subject = _event(SAMPLES[type_name]).bus_subject("staging")

    first, *rest = subject.split(".")
    assert first == "staging"
    assert len(rest) >= 2
    for part in rest:
        assert re.fullmatch(r"[a-z0-9_-]+", part), subject


def test_bus_subject_with_an_empty_outside_value_keeps_every_token():
    data = WebhookReceived(source="gh", kind="github", event_type="")

    subject = _event(data).bus_subject("hookbus")

    assert subject.split(".")[-1] != ""
    assert ".." not in subject


# ----------------------------------------------------------------------- make_event


def test_make_event_without_cause_starts_a_chain():
    data = SAMPLES[WebhookReceived.TYPE]
    before = datetime.now(UTC)

    event = _event(data)

    assert ID_RE.match(event.id)
    assert event.type == WebhookReceived.TYPE
    assert event.correlationid == event.id
    assert event.causationid is None
    assert event.tenant == "default"
    assert event.specversion == "1.0"
    assert event.time.tzinfo is not None
    assert before <= event.time <= datetime.now(UTC)


def test_make_event_uses_the_given_id_subject_and_tenant():
    event = _event(SAMPLES[JobStarted.TYPE], id="evt_fixed", subject="job_1", tenant="acme")

    assert event.id == "evt_fixed"
    assert event.correlationid == "evt_fixed"
    assert event.subject == "job_1"
    assert event.tenant == "acme"


def test_make_event_inherits_correlation_and_tenant_from_its_cause():
    root = _event(SAMPLES[WebhookReceived.TYPE], id="evt_root", tenant="acme")
    middle = _event(SAMPLES[JobRequested.TYPE], id="evt_middle", cause=root)
    leaf = _event(SAMPLES[JobStarted.TYPE], id="evt_leaf", cause=middle)

    assert middle.correlationid == "evt_root"
    assert middle.causationid == "evt_root"
    assert middle.tenant == "acme"
    # The correlation id is the chain's first event, not the direct cause.
    assert leaf.correlationid == "evt_root"
    assert leaf.causationid == "evt_middle"
    assert leaf.tenant == "acme"


def test_an_explicit_tenant_wins_over_the_causes():
    root = _event(SAMPLES[WebhookReceived.TYPE], tenant="acme")

    child = _event(SAMPLES[JobStarted.TYPE], cause=root, tenant="other")

    assert child.tenant == "other"
    assert child.correlationid == root.id


def test_events_are_immutable():
    event = _event(SAMPLES[JobStarted.TYPE])

    with pytest.raises(AttributeError):
        event.id = "evt_other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        event.data.job_id = "other"  # type: ignore[misc]


# ------------------------------------------------------------- job specs and v1

# A job request as routers before job.requested.v2 wrote it: the spec in ``shell``,
# untagged, and the kind beside it.
V1_JOB = (
    b'{"id":"evt_v1","source":"/hookbus/router","type":"io.hookbus.job.requested.v1",'
    b'"time":"2026-11-22T07:51:06.245312Z","correlationid":"evt_hook","causationid":"evt_hook",'
    b'"tenant":"acme","subject":null,"specversion":"1.0","datacontenttype":"application/json",'
    b'"data":{"job_id":"job_1","kind":"shell","rule":"deploy","webhook_id":"evt_hook",'
    b'"shell":{"command":["./deploy.sh"],"env":{"X":"1"},"timeout":5.0,"payload":"file",'
    b'"cwd":null},"context":{"HOOKBUS_BRANCH":"main"},"payload":' + PAYLOAD + b"}}"
)


def test_a_job_spec_is_tagged_by_its_kind():
    event = _event(SAMPLES[JobRequestedV2.TYPE])

    doc = json.loads(encode(event))

    assert doc["data"]["spec"]["kind"] == "shell"
    assert doc["data"]["spec"]["command"] == ["./deploy.sh", "a b"]
    # The kind is the spec's tag, not a second field that could disagree with it.
    assert "kind" not in doc["data"]
    assert event.data.kind == "shell"


def test_a_job_spec_of_a_kind_nobody_knows_is_refused():
    doc = json.loads(encode(_event(SAMPLES[JobRequestedV2.TYPE])))
    doc["data"]["spec"]["kind"] = "teleport"

    with pytest.raises(msgspec.ValidationError, match=r"spec\.kind"):
        decode(json.dumps(doc).encode())


def test_a_v1_job_request_from_an_old_log_still_decodes_and_upgrades():
    old = decode(V1_JOB)

    assert type(old.data) is JobRequested
    assert old.type == JobRequested.TYPE
    new = old.data.upgrade()
    assert type(new) is JobRequestedV2
    assert new.spec == ShellSpec(
        command=["./deploy.sh"], env={"X": "1"}, timeout=5.0, payload="file"
    )
    assert (new.job_id, new.kind, new.rule, new.webhook_id) == (
        "job_1",
        "shell",
        "deploy",
        "evt_hook",
    )
    assert new.context == {"HOOKBUS_BRANCH": "main"}
    assert bytes(new.payload) == PAYLOAD
    assert new.subject_tokens() == old.data.subject_tokens()


def test_a_v1_job_request_without_a_spec_cannot_be_upgraded():
    with pytest.raises(InvalidError, match="job_9"):
        JobRequested(job_id="job_9", kind="ssh", rule="r", webhook_id="w").upgrade()


def test_a_replay_carries_the_original_webhook_byte_for_byte():
    original = SAMPLES[WebhookReceived.TYPE]
    replay = WebhookReplayed(replay_of="evt_0", webhook=original)

    encoded = encode(_event(replay))

    assert PAYLOAD in encoded
    back = decode(encoded).data
    assert back == replay
    assert bytes(back.webhook.payload) == PAYLOAD
    assert (back.requested_by, back.reason) == (None, None)


# ------------------------------------------------------------------ interrupted jobs


def test_a_job_request_records_its_interruptions_unless_its_rule_says_retry():
    req = JobRequestedV2(job_id="j", rule="r", webhook_id="w", spec=ShellSpec(command=["x"]))
    assert req.on_interrupt == "record"
    # A request from a router that predates the field decodes with the safe default.
    doc = json.loads(msgspec.json.encode(req))
    del doc["on_interrupt"]
    assert decode_data(JobRequestedV2.TYPE, json.dumps(doc).encode()) == req
    retry = msgspec.structs.replace(req, on_interrupt="retry")
    assert decode_data(JobRequestedV2.TYPE, msgspec.json.encode(retry)) == retry
    doc["on_interrupt"] = "sometimes"
    with pytest.raises(msgspec.ValidationError, match="on_interrupt"):
        decode_data(JobRequestedV2.TYPE, json.dumps(doc).encode())


def test_an_upgraded_v1_request_records_its_interruptions():
    v1 = JobRequested(job_id="j", kind="shell", rule="r", webhook_id="w",
                      shell=ShellSpec(command=["x"]))  # fmt: skip
    assert v1.upgrade().on_interrupt == "record"


def test_an_interruption_is_a_finished_job_with_its_reason():
    data = JobInterrupted(job_id="j", kind="shell", rule="r", attempt=3, reason="shutdown")
    # Readers of job outcomes see the shared fields; the read model counts it as an end.
    assert isinstance(data, ev.JobFinished)
    assert (data.retrying, data.host, data.pgid, data.exit_code) == (False, None, None, None)
    assert data.reason in ev.INTERRUPT_REASONS
