"""``POST /webhook/v1/{token}``: webhooks from partners, who prove who they are by their URL."""

from __future__ import annotations

import logging
from typing import Any, Final, NoReturn

import asyncpg
import msgspec
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response

from . import inbound
from . import partnerstore as store
from .inbound import Facts, Inbound, Meter
from .refusals import Unavailable, Unknown, ValidationFailed
from .schemachecks import SchemaChecks
from .validation import MAX_PROBLEMS, BodyValidator, InvalidConfig, Violation

log = logging.getLogger(__name__)

KIND: Final = "partner"
DEFAULT_EVENT_TYPE: Final = "webhook"
_CACHE_MAX: Final = 1024

REQUESTS: Final = Counter(
    "hookbus_receiver_partner_requests_total",
    "Partner webhook requests by outcome (unknown, inactive and revoked tokens are not_found)",
    ["outcome"],
)


class _Checks(msgspec.Struct, frozen=True):
    """A partner version's validation: required fields checked here, and its JSON Schema
    (as JSON text) checked by a worker process, which compiles it once per ``key``."""

    validator: BodyValidator
    key: str
    schema: bytes | None


class PartnerHooks:
    """Opened in the app's lifespan with the pool partners are looked up in and the worker
    processes their JSON Schemas are checked in."""

    def __init__(self, pool: asyncpg.Pool, pipeline: Inbound, schemas: SchemaChecks) -> None:
        self.pool = pool
        self.inbound = pipeline
        self.schemas = schemas
        self.meter = Meter(REQUESTS)
        # By (partner, version): a partner's change gives a new key.
        self._validators: dict[tuple[str, float], _Checks] = {}

    async def handle(self, request: Request) -> Response:
        return await self.meter.measured(self._accept(request))

    async def _partner(self, token: str) -> store.Partner:
        try:
            async with self.pool.acquire() as conn:
                # The same single lookup for every token, whatever it looks like.
                partner = await store.find_active_by_token(conn, token)
        except Exception as exc:
            log.error("partner lookup failed", extra={"error": repr(exc)})
            raise Unavailable() from None
        if partner is None:
            raise Unknown("unknown_token")  # answered exactly as any unknown path
        return partner

    def _checks(self, partner: store.Partner) -> _Checks:
        key = (partner.partner_id, partner.modified_at.timestamp())
        found = self._validators.get(key)
        if found is None:
            if len(self._validators) >= _CACHE_MAX:
                self._validators.clear()
            try:
                # Compiled here too, so that an unusable schema is known without a worker.
                validator = BodyValidator(partner.validation)
            except InvalidConfig as exc:
                self._misconfigured(partner, exc)
            schema = partner.validation.schema
            found = _Checks(
                validator,
                f"{key[0]}@{key[1]!r}",
                msgspec.json.encode(schema) if schema is not None else None,
            )
            self._validators[key] = found
        return found

    @staticmethod
    def _misconfigured(partner: store.Partner, exc: InvalidConfig) -> NoReturn:
        log.error(
            "partner validation config is unusable",
            extra={"partner": partner.partner_id, "error": str(exc)},
        )
        raise Unavailable("this partner's validation is misconfigured") from None

    async def _violations(self, partner: store.Partner, doc: Any, body: bytes) -> list[Violation]:
        checks = self._checks(partner)
        found = checks.validator.missing(doc)
        if checks.schema is not None:
            try:
                found += await self.schemas.violations(checks.key, checks.schema, body)
            except InvalidConfig as exc:
                self._misconfigured(partner, exc)
        return found[:MAX_PROBLEMS]

    async def _accept(self, request: Request) -> Response:
        partner = await self._partner(request.path_params["token"])
        headers = inbound.headers_of(request)
        body = await self.inbound.body(request, headers)
        ctype = inbound.json_content_type(headers)
        doc = inbound.json_object(body, max_depth=self.inbound.max_json_depth)
        delivery = inbound.delivery_id(headers)
        violations = await self._violations(partner, doc, body)
        if violations:
            raise ValidationFailed(violations)
        event_type = headers.get("x-event-type", "").strip()[:128] or DEFAULT_EVENT_TYPE
        return await self.inbound.record(
            source=partner.source,
            kind=KIND,
            origin=f"/hookbus/receiver/partners/{partner.partner_id}",
            tenant=partner.tenant,
            facts=Facts(event_type=event_type, delivery_id=delivery, sender=partner.name),
            content_type=ctype,
            headers=inbound.kept_headers(headers),
            body=body,
            remote_addr=inbound.peer_of(request),
        )
