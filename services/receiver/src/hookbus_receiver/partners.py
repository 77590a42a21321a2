"""``POST /webhook/v1/{token}``: webhooks from partners, who prove who they are by their URL."""

from __future__ import annotations

import hashlib
import logging
from typing import Final

import asyncpg
import msgspec
from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from hookbus_common import events as ev
from hookbus_common.eventlog import Pending

from . import inbound
from . import partnerstore as store
from .config import ReceiverConfig
from .groupcommit import GroupCommitter
from .inbound import Problem
from .validation import BodyValidator, InvalidConfig

log = logging.getLogger(__name__)

KIND: Final = "partner"
DEFAULT_EVENT_TYPE: Final = "webhook"
_CACHE_MAX: Final = 1024

REQUESTS = Counter(
    "hookbus_receiver_partner_requests_total",
    "Partner webhook requests by outcome (unknown, inactive and revoked tokens are not_found)",
    ["outcome"],
)


class PartnerHooks:
    """Bound to the pool and the group committer in the app's lifespan."""

    def __init__(self, settings: ReceiverConfig) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._committer: GroupCommitter | None = None
        # Compiled validators by (partner, version): a partner's change gives a new key.
        self._validators: dict[tuple[str, float], BodyValidator] = {}

    def bind(self, pool: asyncpg.Pool, committer: GroupCommitter) -> None:
        self._pool = pool
        self._committer = committer

    async def handle(self, request: Request) -> Response:
        if self._pool is None or self._committer is None:
            raise RuntimeError("PartnerHooks used before bind()")
        try:
            async with self._pool.acquire() as conn:
                # The same single lookup for every token, whatever it looks like.
                partner = await store.find_active_by_token(conn, request.path_params["token"])
        except Exception as exc:
            log.error("partner lookup failed", extra={"error": repr(exc)})
            REQUESTS.labels("unavailable").inc()
            return inbound.unavailable().response()
        if partner is None:
            REQUESTS.labels("not_found").inc()
            # The app's 404 handler answers, exactly as for any unknown path.
            raise HTTPException(404)
        return await inbound.answered(
            self._accept(partner, request, self._committer), lambda o: REQUESTS.labels(o).inc()
        )

    def _validator(self, partner: store.Partner) -> BodyValidator:
        key = (partner.partner_id, partner.modified_at.timestamp())
        found = self._validators.get(key)
        if found is None:
            if len(self._validators) >= _CACHE_MAX:
                self._validators.clear()
            try:
                found = BodyValidator(partner.validation)
            except InvalidConfig as exc:
                log.error(
                    "partner validation config is unusable",
                    extra={"partner": partner.partner_id, "error": str(exc)},
                )
                raise Problem(
                    503, "unavailable", "this partner's validation is misconfigured"
                ) from None
            self._validators[key] = found
        return found

    async def _accept(
        self, partner: store.Partner, request: Request, committer: GroupCommitter
    ) -> Response:
        body = await inbound.read_body(request, self.settings.receiver.max_body_bytes)
        headers = inbound.headers_of(request)
        ctype = inbound.json_content_type(headers)
        doc = inbound.json_object(body)
        delivery = inbound.delivery_id(headers)
        violations = self._validator(partner).violations(doc)
        if violations:
            raise Problem(
                422,
                "validation_failed",
                "; ".join(f"{v.path}: {v.message}" for v in violations),
                violations=[msgspec.to_builtins(v) for v in violations],
            )
        data = ev.WebhookReceived(
            source=partner.source,
            kind=KIND,
            event_type=headers.get("x-event-type", "").strip()[:128] or DEFAULT_EVENT_TYPE,
            delivery_id=delivery,
            content_type=ctype,
            headers=inbound.kept_headers(headers),
            payload=msgspec.Raw(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            remote_addr=request.client.host if request.client else None,
            sender=partner.name,
        )
        event = ev.make_event(
            data,
            source=f"/hookbus/receiver/partners/{partner.partner_id}",
            id=ev.new_id(),
            tenant=partner.tenant,
        )
        dedupe = f"{partner.source}:{delivery}" if delivery else None
        return await inbound.record(committer, Pending(event, dedupe, body), partner.source)
