"""RFC 9457 problem details: the one place the API's errors become HTTP answers.

The codes are hookbus's error codes (``hookbus_common.errors``) plus ``forbidden`` (a
token whose scope is too small) and the HTTP routing's own (``method_not_allowed``). Every
failed sign-in answers the same ``401``, whatever the reason.
"""

from __future__ import annotations

from typing import Final

import msgspec
from starlette.responses import Response

from hookbus_common.errors import HookbusError

MEDIA_TYPE: Final = "application/problem+json"

_STATUS: Final[dict[str, int]] = {
    "invalid": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "too_many": 429,
    "unavailable": 503,
}
_TITLES: Final[dict[str, str]] = {
    "invalid": "The request cannot be used as given",
    "unauthorized": "Sign in with a valid API token",
    "forbidden": "This token's scope does not allow it",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "conflict": "Conflict",
    "too_many": "Too much waiting already; send again later",
    "unavailable": "Unavailable; try again shortly",
}


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A problem details object (``type``, ``title``, ``status``, ``detail``) and its code."""

    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    instance: str | None = None


def problem(code: str, detail: str | None = None, *, instance: str | None = None) -> Response:
    status = _STATUS.get(code, 400)
    body = Problem(
        type=f"https://hookbus.dev/problems/{code}",
        title=_TITLES.get(code, code),
        status=status,
        code=code,
        detail=detail,
        instance=instance,
    )
    headers = {"www-authenticate": 'Bearer realm="hookbus"'} if status == 401 else {}
    if status in (429, 503):
        headers["retry-after"] = "5"
    return Response(msgspec.json.encode(body), status, headers=headers, media_type=MEDIA_TYPE)


def for_error(exc: HookbusError) -> Response:
    """The answer for one of hookbus's errors: its code, and its message as the detail
    (except for ``unauthorized``, which never says why)."""
    if exc.code == "unauthorized":
        return problem("unauthorized")
    return problem(exc.code, str(exc) or None)


class ApiError(Exception):
    """Raised by a handler to answer with a problem (``forbidden`` and the like)."""

    def __init__(self, code: str, detail: str | None = None) -> None:
        super().__init__(detail or code)
        self.code = code
        self.detail = detail
