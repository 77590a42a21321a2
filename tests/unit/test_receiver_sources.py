"""Facts, delivery ids and kept headers per source kind (no I/O)."""

from __future__ import annotations

import pytest

from hookbus_receiver.config import (
    EventTypeFrom,
    Fields,
    FromRequest,
    GithubSource,
    GitlabSource,
    HookdeckSource,
    Secret,
    StandardWebhooksSource,
    TokenSource,
)
from hookbus_receiver.inbound import dedupe_key, json_object
from hookbus_receiver.sources import BadBody, Source, lookup

S = [Secret(value="s")]
SW = [Secret(value="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]


def test_lookup_follows_dotted_paths_through_objects_and_lists():
    doc = {"event": {"id": "e1", "items": [{"id": 5}]}}

    assert lookup(doc, "event.id") == "e1"
    assert lookup(doc, "event.items.0.id") == 5
    assert lookup(doc, "event.items.7.id") is None
    assert lookup(doc, "event.id.deeper") is None
    assert lookup(doc, "nothing") is None


@pytest.mark.parametrize(
    ("config", "headers", "expected"),
    [
        (GithubSource(secrets=S), {"x-github-delivery": "g1"}, "g1"),
        (GitlabSource(token=S), {"x-gitlab-event-uuid": "u1", "idempotency-key": "k"}, "u1"),
        (GitlabSource(token=S), {"idempotency-key": "k1"}, "k1"),
        (StandardWebhooksSource(secrets=SW), {"webhook-id": "msg_1"}, "msg_1"),
        (HookdeckSource(secrets=S), {"x-hookdeck-eventid": "evt_1"}, "evt_1"),
        (TokenSource(secrets=S), {"idempotency-key": "i1"}, "i1"),
        (TokenSource(secrets=S), {}, None),
        (TokenSource(secrets=S, idempotency=FromRequest(header="X-Request-Id")), {"x-request-id": "r1", "idempotency-key": "no"}, "r1"),
        (TokenSource(secrets=S, idempotency=FromRequest(json_field="meta.id")), {"idempotency-key": "no"}, "42"),
    ],
)  # fmt: skip
def test_delivery_id_comes_from_the_kind_or_the_config(config, headers, expected):
    facts = Source("s", config).facts(headers, {"meta": {"id": 42}})

    assert facts.delivery_id == expected


def test_event_type_for_generic_kinds_is_configured_or_a_fixed_default():
    body = {"type": "invoice.paid", "kind": {"name": "deploy"}}
    plain = Source("a", TokenSource(secrets=S))
    by_field = Source("b", TokenSource(secrets=S, event_type=EventTypeFrom(json_field="kind.name")))
    by_header = Source("c", TokenSource(secrets=S, event_type=EventTypeFrom(header="X-Event")))
    standard = Source("d", StandardWebhooksSource(secrets=SW))

    assert plain.facts({}, body).event_type == "webhook"
    assert by_field.facts({}, body).event_type == "deploy"
    assert by_header.facts({"x-event": "ping"}, body).event_type == "ping"
    assert by_header.facts({}, body).event_type == "webhook"
    assert standard.facts({}, body).event_type == "invoice.paid"  # the spec's `type`


def test_generic_kinds_know_no_repository_unless_configured():
    body = {"repo": "acme/app", "ref": "refs/heads/main", "sha": "abc", "user": {"login": "u"}}
    plain = Source("a", TokenSource(secrets=S)).facts({}, body)
    fields = Fields(repository="repo", branch="ref", commit="sha", sender="user.login")
    configured = Source("b", TokenSource(secrets=S, fields=fields)).facts({}, body)

    assert (plain.repository, plain.branch, plain.commit) == (None, None, None)
    assert (configured.repository, configured.branch, configured.commit, configured.sender) == (
        "acme/app", "main", "abc", "u",
    )  # fmt: skip


def test_gitlab_tag_push_facts():
    body = {"ref": "refs/tags/v1.0", "checkout_sha": "c1", "user_username": "jo",
            "project": {"path_with_namespace": "grp/sub/app"}}  # fmt: skip

    facts = Source("gl", GitlabSource(token=S)).facts({"x-gitlab-event": "Tag Push Hook"}, body)

    assert (facts.event_type, facts.repository, facts.tag, facts.branch) == (
        "tag_push_hook", "grp/sub/app", "v1.0", None,
    )  # fmt: skip


def test_facts_of_the_wrong_type_are_ignored_not_fatal():
    body = {"repository": {"full_name": ["not", "a", "string"]}, "ref": 5, "sender": "x"}

    facts = Source("gh", GithubSource(secrets=S)).facts({"x-github-event": "push"}, body)

    assert (facts.repository, facts.branch, facts.sender) == (None, None, None)


def test_credential_headers_are_never_kept():
    headers = {
        "authorization": "Bearer t", "x-api-key": "k", "x-gitlab-token": "g", "cookie": "c",
        "x-gitlab-event": "Push Hook", "content-type": "application/json", "x-other": "o",
    }  # fmt: skip

    gitlab = Source("gl", GitlabSource(token=S)).kept_headers(headers)
    apikey = Source("k", TokenSource(secrets=S, mode="header", header="X-Api-Key"))

    assert gitlab == {"x-gitlab-event": "Push Hook", "content-type": "application/json"}
    assert apikey.kept_headers(headers) == {"content-type": "application/json"}


def test_long_delivery_ids_are_hashed_in_the_dedupe_key():
    assert dedupe_key("s", "abc") == "s:abc"
    assert dedupe_key("s", None) is None
    long_key = dedupe_key("s", "x" * 5000)
    assert long_key is not None
    assert long_key.startswith("s:sha256:")
    assert len(long_key) < 100
    assert long_key != dedupe_key("s", "x" * 5001)


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"{", "not valid JSON"), (b"[]", "JSON object"), (b"\xff", "not valid JSON")],
)
def test_bodies_that_are_not_json_objects(body, reason):
    with pytest.raises(BadBody, match=reason):
        json_object(body)
