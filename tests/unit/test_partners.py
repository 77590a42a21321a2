"""Pure parts of partners and image push: validation, tokens, guides, parsing, the CLI parser."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hookbus_cli import partners as partners_cli
from hookbus_cli.config import ReceiverAddress
from hookbus_cli.events import summary
from hookbus_cli.main import parser
from hookbus_common import events as ev
from hookbus_common.errors import HookbusError
from hookbus_common.events import PartnerValidation
from hookbus_receiver import imagepush, inbound
from hookbus_receiver import partnerstore as store
from hookbus_receiver.config import ReceiverSettings
from hookbus_receiver.inbound import problem_for
from hookbus_receiver.validation import MAX_PROBLEMS, BodyValidator, InvalidConfig

from .test_cli_events import logged


def paths(validator: BodyValidator, doc: object) -> list[str]:
    return [v.path for v in validator.violations(doc)]


# ------------------------------------------------------------------- validation


def test_required_paths_follow_objects_and_list_indexes():
    v = BodyValidator(PartnerValidation(required=["order.id", "items.0.sku", "meta"]))

    assert paths(v, {"order": {"id": 0}, "items": [{"sku": "x"}], "meta": {}}) == []
    assert paths(v, {"order": {}, "items": [], "meta": None}) == [
        "$.order.id",
        "$.items.0.sku",
        "$.meta",  # null counts as missing
    ]
    assert paths(v, {"order": "not an object", "items": {"0": {"sku": 1}}, "meta": 1}) == [
        "$.order.id"
    ]


def test_schema_violations_name_the_path_and_the_problem():
    schema = {
        "type": "object",
        "required": ["event"],
        "properties": {"amount": {"type": "integer", "minimum": 1}},
    }
    v = BodyValidator(PartnerValidation(schema=schema))

    found = v.violations({"amount": 0})

    assert [(x.path, x.message) for x in found] == [
        ("$", '"event" is a required property'),
        ("$.amount", "0 is less than the minimum of 1"),
    ]
    assert v.violations({"event": "e", "amount": 3}) == []


def test_schema_draft_comes_from_dollar_schema():
    v = BodyValidator(
        PartnerValidation(
            schema={"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}
        )
    )
    assert paths(v, []) == ["$"]


def test_an_unusable_schema_is_a_config_error():
    with pytest.raises(InvalidConfig, match="not valid"):
        BodyValidator(PartnerValidation(schema={"type": 12}))


def test_violations_are_capped():
    v = BodyValidator(PartnerValidation(required=[f"f{i}" for i in range(50)]))
    assert len(v.violations({})) == MAX_PROBLEMS


@pytest.mark.parametrize(
    ("required", "schema", "message"),
    [
        (["order..id"], None, "dotted path"),
        ([""], None, "dotted path"),
        ([], ["not", "an", "object"], "JSON object"),
        ([], {"type": "nonsense"}, "not valid"),
    ],
)
def test_parse_validation_refuses_what_cannot_work(required, schema, message):
    with pytest.raises(store.PartnerError, match=message):
        store.parse_validation(required, schema)


def test_parse_validation_keeps_what_it_was_given():
    v = store.parse_validation(["a.b"], {"type": "object"})
    assert v == PartnerValidation(required=["a.b"], schema={"type": "object"})


# ----------------------------------------------------------------------- tokens


def test_tokens_are_random_urlsafe_and_hashed_with_sha256():
    tokens = {store.new_token() for _ in range(100)}
    assert len(tokens) == 100
    for t in tokens:
        assert len(t) >= 43  # 32 bytes of entropy
        assert t.replace("-", "").replace("_", "").isalnum()
        assert store.token_hash(t) == hashlib.sha256(t.encode()).digest()


def test_any_string_from_a_path_hashes():
    # A path may decode to lone surrogates or anything else: no early failure on format.
    for odd in ("", "é", "\ud800", "x" * 10_000):
        assert len(store.token_hash(odd)) == 32


# ----------------------------------------------------------------- for people


def partner(validation: PartnerValidation | None = None) -> store.Partner:
    now = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    return store.Partner(
        partner_id="ptn_01", name="Acme", description="", tenant="acme", status="ACTIVE",
        validation=validation or PartnerValidation(), token_id="tok_1",
        created_at=now, modified_at=now,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("receiver", "expected"),
    [
        (ReceiverSettings(public_url="https://hooks.example.com/"), "https://hooks.example.com"),
        (ReceiverSettings(host="0.0.0.0", port=9000), "http://127.0.0.1:9000"),
        (ReceiverSettings(host="10.0.0.5", port=8080), "http://10.0.0.5:8080"),
    ],
)
def test_base_url_prefers_the_public_url(receiver, expected):
    assert receiver.base_url() == expected


def test_integration_guide_has_the_url_a_curl_example_and_the_checks():
    settings = ReceiverAddress(receiver=ReceiverSettings(public_url="https://hooks.example.com"))
    p = partner(PartnerValidation(required=["order.id"], schema={"type": "object"}))

    guide = partners_cli.integration_guide(settings, p, "TOKEN123")

    assert "https://hooks.example.com/webhook/v1/TOKEN123" in guide
    assert "curl -i -X POST 'https://hooks.example.com/webhook/v1/TOKEN123'" in guide
    assert "Idempotency-Key" in guide
    assert "required fields: order.id" in guide
    assert 'JSON Schema: {"type":"object"}' in guide


def _idempotency_header(guide: str) -> str:
    """The curl example's Idempotency-Key argument, exactly as the guide shows it."""
    [line] = [ln for ln in guide.splitlines() if "-H" in ln and "Idempotency-Key" in ln]
    return line.strip().removeprefix("-H ").removesuffix("\\").strip()


def _expand(arg: str, path: str | None = None) -> str:
    """The header as a shell expands it where a partner pastes the example."""
    env = {**os.environ, "PATH": path} if path is not None else None
    out = subprocess.run(
        ["/bin/sh", "-c", f"printf '%s' {arg}"], env=env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return out.stdout


UUID = re.compile(r"^Idempotency-Key: [0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$")


def test_the_guides_idempotency_key_is_new_each_time_the_example_runs():
    """A copied example must not send one key for every event: all but the first would
    be taken for retries and dropped."""
    guide = partners_cli.integration_guide(ReceiverAddress(), partner(), "TOKEN123")
    arg = _idempotency_header(guide)

    first, second = _expand(arg), _expand(arg)

    assert UUID.match(first), first
    assert UUID.match(second), second
    assert first != second
    assert "<" not in arg


@pytest.mark.skipif(
    not Path("/proc/sys/kernel/random/uuid").exists(), reason="the Linux fallback needs /proc"
)
def test_the_guides_idempotency_key_works_without_uuidgen(tmp_path):
    # A PATH with cat but no uuidgen, as in a minimal Linux container.
    (tmp_path / "cat").symlink_to(shutil.which("cat") or "/bin/cat")
    arg = _idempotency_header(
        partners_cli.integration_guide(ReceiverAddress(), partner(), "TOKEN123")
    )

    first, second = _expand(arg, str(tmp_path)), _expand(arg, str(tmp_path))

    assert UUID.match(first), first
    assert first != second


def test_the_guide_says_what_the_idempotency_key_is_for():
    guide = partners_cli.integration_guide(ReceiverAddress(), partner(), "TOKEN123")

    [line] = [ln for ln in guide.splitlines() if ln.startswith("Idempotency-Key:")]
    assert "each event" in line
    assert "retries" in line


def test_show_never_prints_a_url():
    text = partners_cli.show(partner())
    assert "ptn_01" in text
    assert "shown only when created or rotated" in text
    assert "none (any JSON object is accepted)" in text


# ------------------------------------------------------------------------- CLI


def test_partner_and_webhook_url_commands_parse():
    args = parser().parse_args(
        ["partners", "add", "acme", "--require", "a.b", "--require", "c", "--inactive"]
    )
    assert (args.name, args.require, args.inactive, args.tenant) == (
        "acme", ["a.b", "c"], True, "default",
    )  # fmt: skip
    for command in ("show", "rotate", "suspend", "deactivate", "activate", "delete"):
        assert parser().parse_args(["partners", command, "ptn_1"]).partner == "ptn_1"
    assert parser().parse_args(["partners", "list", "--all"]).all
    for command in ("show", "regenerate"):
        assert callable(parser().parse_args(["webhook-url", command]).func)


# -------------------------------------------------------------------- image push


def test_parse_push_gives_the_normalised_image():
    ref = imagepush.parse_push({"image": "ghcr.io/acme/app:v2"})
    info = imagepush.image_info(ref)
    assert (info.registry, info.path, info.tag, info.canonical) == (
        "ghcr.io", "acme/app", "v2", "ghcr.io/acme/app:v2",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "code"),
    [({}, "bad_body"), ({"image": None}, "bad_body"), ({"image": "UPPER/case"}, "bad_image")],
)
def test_parse_push_refuses_with_400(doc, code):
    with pytest.raises(HookbusError) as info:
        imagepush.parse_push(doc)
    problem = problem_for(info.value)
    assert (problem.status, problem.error) == (400, code)


# ---------------------------------------------------------------------- inbound


def test_delivery_id_prefers_idempotency_key_then_webhook_id():
    assert inbound.delivery_id({"idempotency-key": "a", "webhook-id": "b"}) == "a"
    assert inbound.delivery_id({"webhook-id": "b"}) == "b"
    assert inbound.delivery_id({"idempotency-key": ""}) is None
    with pytest.raises(HookbusError) as info:
        inbound.delivery_id({"idempotency-key": "k" * 1000})
    assert problem_for(info.value).status == 400


@pytest.mark.parametrize(
    "ctype", ["application/json; charset=utf-8", "application/cloudevents+json"]
)
def test_json_content_types_are_accepted(ctype):
    assert inbound.json_content_type({"content-type": ctype}).endswith("json")


def test_other_content_types_are_415_and_bad_bodies_400():
    with pytest.raises(HookbusError) as info:
        inbound.json_content_type({"content-type": "text/plain"})
    assert problem_for(info.value).status == 415
    for body in (b"{", b"[]", b"1"):
        with pytest.raises(HookbusError) as info:
            inbound.json_object(body)
        assert problem_for(info.value).status == 400


def test_kept_headers_never_include_the_url_or_authorization():
    kept = inbound.kept_headers({"authorization": "Bearer x", "idempotency-key": "k", "host": "h"})
    assert kept == {"idempotency-key": "k"}


def test_partner_events_have_a_summary():
    created = ev.PartnerCreated(partner_id="ptn_1", name="Acme", token_id="tok_1")
    suspended = ev.PartnerStatusChanged(partner_id="ptn_1", status="SUSPENDED")
    deleted = ev.PartnerDeleted(partner_id="ptn_1")

    assert summary(logged(created)) == "ptn_1 Acme"
    assert summary(logged(suspended)) == "ptn_1 SUSPENDED"
    assert summary(logged(deleted)) == "ptn_1"
