"""Messages applications send: what a body must be (each problem naming its field), how
message ids derive from idempotency keys, the ``send`` scope, and the OpenAPI operation."""

from __future__ import annotations

import msgspec
import pytest

from hookbus_api import messages, openapi, tokens
from hookbus_api.messages import SendMessage
from hookbus_common import events as ev
from hookbus_common.errors import InvalidError


def _body(**fields: object) -> bytes:
    return msgspec.json.encode({"event_type": "invoice.paid", "payload": {"id": 1}, **fields})


def test_a_good_body() -> None:
    msg = messages.parse(_body(tenant="acme", idempotency_key="k-1", ordering_key="cus_1"))
    assert msg == SendMessage(
        event_type="invoice.paid", payload={"id": 1}, tenant="acme", idempotency_key="k-1",
        ordering_key="cus_1",
    )  # fmt: skip
    assert messages.parse(_body(payload=[1, "two", None])).payload == [1, "two", None]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"payload": {}}', "event_type"),
        (b'{"event_type": "a"}', "payload"),
        (_body(event_type=""), "event_type"),
        (_body(event_type="has space"), "event_type"),
        (_body(event_type="x" * 129), "event_type"),
        (_body(event_type=5), "event_type"),
        (_body(tenant=""), "tenant"),
        (_body(tenant="a b"), "tenant"),
        (_body(idempotency_key="k" * 257), "idempotency_key"),
        (_body(idempotency_key="é"), "idempotency_key"),
        (_body(ordering_key=" "), "ordering_key"),
        (_body(extra=1), "extra"),
        (b"", "body"),
        (b"[1]", "body"),
        (b"{", "body"),
        (b'{"event_type": "a", "payload": "' + b"x" * messages.MAX_BODY_BYTES + b'"}', "body"),
    ],
)
def test_a_bad_body_names_its_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidError, match=field):
        messages.parse(body)


def test_an_idempotency_key_makes_the_id_per_tenant_and_key() -> None:
    same = messages.message_id("acme", "k")
    assert same == messages.message_id("acme", "k")
    assert same.startswith("msg_")
    assert same != messages.message_id("beta", "k")
    assert same != messages.message_id("acme", "k2")
    # Without a key every message is new.
    assert messages.message_id("acme", None) != messages.message_id("acme", None)


def test_the_event_is_derived_from_the_message_id() -> None:
    msg = SendMessage(event_type="invoice.paid", payload={"a": 1}, tenant="acme",
                      idempotency_key="k")  # fmt: skip
    one, two = messages.event_for(msg, by="api:x"), messages.event_for(msg, by="api:x")
    assert one.id == two.id == ev.derived_id(one.data.message_id, "submitted")
    assert one.tenant == "acme"
    assert one.bus_subject("hookbus") == "hookbus.message.submitted.acme"
    assert bytes(one.data.payload) == b'{"a":1}'
    assert one.data.submitted_by == "api:x"


@pytest.mark.parametrize(
    ("have", "need", "ok"),
    [
        ("send", "send", True),
        ("operate", "send", True),
        ("admin", "send", True),
        ("read", "send", False),
        ("send", "read", False),
        ("send", "operate", False),
        ("send", "admin", False),
        ("admin", "read", True),
    ],
)
def test_the_send_scope(have: str, need: tokens.Scope, ok: bool) -> None:
    assert tokens.allows(have, need) is ok


def test_the_openapi_operation_says_202_and_200_and_the_scope() -> None:
    op = openapi.document()["paths"]["/api/v1/messages"]["post"]
    assert op["x-hookbus-scope"] == "send"
    assert {"202", "200", "400", "401", "403", "503"} <= set(op["responses"])
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/SendMessage")


def test_a_body_announced_too_large_is_refused_before_it_is_read() -> None:
    with pytest.raises(InvalidError, match="body: larger than"):
        messages.check_length(str(messages.MAX_BODY_BYTES + 1))
    for fine in (None, "", "12", str(messages.MAX_BODY_BYTES), "junk"):
        messages.check_length(fine)
