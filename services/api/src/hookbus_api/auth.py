"""Who is asking: a bearer token, checked against ``api_tokens``; every failure alike."""

from __future__ import annotations

import logging

import asyncpg
from prometheus_client import Counter
from starlette.requests import Request

from hookbus_common.errors import UnauthorizedError

from . import tokens
from .problems import ApiError
from .tokens import ApiToken, Scope

log = logging.getLogger(__name__)

AUTH_FAILURES = Counter(
    "hookbus_api_auth_failures_total",
    "Requests refused for want of a valid token, by reason (never shown to the caller)",
    ["reason"],
)


def bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    kind, _, token = value.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def principal(pool: asyncpg.Pool, request: Request) -> ApiToken:
    """The live token the request carries; UnauthorizedError (one answer for every reason)
    otherwise. The reason goes to metrics only."""
    token = bearer(request)
    if token is None:
        AUTH_FAILURES.labels("missing").inc()
        raise UnauthorizedError("missing")
    async with pool.acquire() as conn:
        found = await tokens.authenticate(conn, token)
    if found is None:
        AUTH_FAILURES.labels("unknown").inc()
        raise UnauthorizedError("unknown")
    return found


def require(who: ApiToken, need: Scope) -> None:
    if not tokens.allows(who.scope, need):
        raise ApiError("forbidden", f"needs a token with scope {need} (this one has {who.scope})")


def require_tenant(who: ApiToken, tenant: str) -> None:
    """Refuse a message for ``tenant`` from a send token bound to other tenants."""
    if not who.may_send_for(tenant):
        raise ApiError(
            "forbidden",
            f"tenant {tenant!r}: this token sends only for tenant"
            f"{'s' if len(who.tenants) > 1 else ''} {', '.join(who.tenants)}",
        )
