"""What order is kept within: a tenant's endpoint, notification channel or URL, per key."""

from __future__ import annotations

import msgspec

from hookbus_common import events as ev
from hookbus_dispatcher.ordering import destination


def _req(**kw: object) -> ev.DeliveryRequested:
    base = {"delivery_id": "d", "rule": "r", "webhook_id": "w", "url": "https://x.example/in"}
    return msgspec.convert({**base, **kw}, ev.DeliveryRequested)


def test_destinations() -> None:
    assert destination(_req(endpoint="billing", url="")) == "billing"
    assert destination(_req(notification="ops", url="notification:ops")) == "notification:ops"
    assert destination(_req()) == "https://x.example/in"


def test_the_key_is_additive() -> None:
    # An older request without the field decodes with no key (not ordered).
    old = msgspec.json.encode(_req())
    decoded = msgspec.json.decode(
        old.replace(b',"ordering_key":null', b""), type=ev.DeliveryRequested
    )
    assert decoded.ordering_key is None
    assert _req(ordering_key="k").ordering_key == "k"
