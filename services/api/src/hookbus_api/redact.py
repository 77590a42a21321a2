"""What the API never shows: header and environment values that carry credentials.

The receiver keeps no credential header of an inbound webhook, but outbound deliveries
and jobs carry the headers and environment their rules gave them (an ``Authorization``,
a ``DEPLOY_TOKEN``). Every event's data passes through :func:`data` before it is shown.
"""

from __future__ import annotations

import re
from typing import Any, Final

from hookbus_common.settings import redact_url

REDACTED: Final = "[redacted]"

_SENSITIVE = re.compile(
    r"auth|token|secret|signature|passw|cookie|api[-_]?key|session|credential|private|"
    r"^x-hub-signature|^webhook-signature",
    re.IGNORECASE,
)
# Keys whose value is a mapping of names to values that may be credentials.
_MAPPINGS: Final = frozenset({"headers", "env"})


def url(value: str) -> str:
    """A URL as the API shows it: no password, and no query values (they may be tokens)."""
    value = redact_url(value)
    base, sep, query = value.partition("?")
    if not sep:
        return value
    names = [part.split("=", 1)[0] for part in query.split("&") if part]
    return base + "?" + "&".join(f"{n}=***" for n in names)


def sensitive(name: str) -> bool:
    return bool(_SENSITIVE.search(name))


def headers(values: dict[str, Any]) -> dict[str, Any]:
    return {k: REDACTED if sensitive(k) else v for k, v in values.items()}


def data(value: Any) -> Any:
    """``value`` (decoded JSON) with the values of sensitive headers and variables hidden,
    wherever a ``headers`` or ``env`` mapping appears, and URLs' passwords and query values
    (a webhook's payload is shown as it was sent)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in _MAPPINGS and isinstance(v, dict):
                out[k] = headers(v)
            elif k == "url" and isinstance(v, str):
                out[k] = url(v)
            elif k == "payload":
                out[k] = v  # the sender's body, shown as sent
            else:
                out[k] = data(v)
        return out
    if isinstance(value, list):
        return [data(v) for v in value]
    return value
