"""``POST /hooks/{source}``: webhooks from configured sources (GitHub, GitLab, HMAC, JWT…).

The hot path: served straight from the ASGI scope (``app._HooksFirst``), so everything
per-source is prepared once, when the app starts.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from typing import Final

from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.responses import Response

from hookbus_common.errors import HookbusError

from . import inbound, policy, sources
from .config import ReceiverConfig, SourceConfig
from .inbound import FORM, NOT_FOUND, Inbound, Meter
from .refusals import BadBody, RateLimited, Unknown, UnverifiedRateLimited
from .respond import Responder, wait_seconds
from .signatures import VerificationError

log = logging.getLogger(__name__)

REQUESTS: Final = Counter(
    "hookbus_receiver_requests_total",
    "Inbound webhook requests by source and outcome",
    ["source", "outcome"],
)
LATENCY: Final = Histogram(
    "hookbus_receiver_request_seconds",
    "Time from request to answer for known sources",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REJECTED: Final = Counter(
    "hookbus_receiver_rejected_total",
    "Refused webhook requests by source and precise reason (ip_denied, bad_signature, ...)",
    ["source", "reason"],
)


class Admitted:
    """A source with its admission policy (allow-list, proxies, rate limit) and its
    metrics prepared."""

    def __init__(self, name: str, config: SourceConfig) -> None:
        self.source = sources.Source(name, config)
        self.origin = f"/hookbus/receiver/{name}"
        self.allow = policy.networks(config.allow_ips)
        self.trusted = policy.networks(config.trusted_proxies)
        limit = config.rate_limit
        # Requests that proved their sender spend the source's bucket; those that did
        # not, a bucket of the same size per client address: junk never spends the
        # allowance of the real sender (docs/sources.md).
        self.bucket = self.unverified = None
        if limit is not None:
            self.bucket = policy.TokenBucket(limit.per_second, limit.capacity)
            self.unverified = policy.PerAddress(limit.per_second, limit.capacity)
        self.meter = Meter(REQUESTS, name, latency=LATENCY, rejected=REJECTED)
        wait = None if config.respond_wait is None else wait_seconds(config.respond_wait)
        self.respond_wait = wait if isinstance(wait, float) else None
        if config.kind == "none" and not self.allow:
            log.warning(
                "source accepts unsigned deliveries from anywhere; consider allow_ips",
                extra={"source": name},
            )


def prepare_sources(settings: ReceiverConfig) -> dict[str, Admitted]:
    """Build every source before serving: a key that cannot be used stops the start with a
    ConfigError naming it."""
    return {name: Admitted(name, cfg) for name, cfg in settings.sources.items()}


def _form_payload(body: bytes) -> bytes:
    """The JSON in a form body's ``payload`` field, as GitHub sends with that content type."""
    try:
        fields = urllib.parse.parse_qs(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)
        )
    except (UnicodeDecodeError, ValueError):
        raise BadBody("form body is not valid application/x-www-form-urlencoded") from None
    values = fields.get("payload")
    if not values:
        raise BadBody("form body has no payload field")
    return values[0].encode("utf-8", "surrogatepass")


class SourceHooks:
    """Every configured source, opened in the app's lifespan."""

    def __init__(
        self, pipeline: Inbound, admitted: dict[str, Admitted], responder: Responder | None = None
    ) -> None:
        self.inbound = pipeline
        self.sources = admitted
        # Answers for sources with respond_wait (None: no source waits).
        self.responder = responder

    async def hook(self, request: Request, name: str) -> Response:
        admitted = self.sources.get(name)
        if admitted is None:
            # The same answer as any unknown path, and no metric series for made-up names.
            return NOT_FOUND.response()
        response = await admitted.meter.measured(self._accept(admitted, request))
        if admitted.respond_wait is not None and self.responder is not None:
            # Committed (and counted) already: only what the answer says changes.
            return await self.responder.answer(name, response, admitted.respond_wait)
        return response

    async def _accept(self, admitted: Admitted, request: Request) -> Response:
        source = admitted.source
        headers = inbound.headers_of(request)
        peer = inbound.peer_of(request)
        client = policy.client_address(peer, headers.get("x-forwarded-for"), admitted.trusted)
        if not policy.allowed(client, admitted.allow):
            raise Unknown("ip_denied")  # outside the allow-list looks like no such path
        unverified = admitted.unverified
        if unverified is not None:
            # Before any work: an address whose unproven requests used up its allowance.
            wait = unverified.wait(client, time.monotonic())
            if wait:
                raise UnverifiedRateLimited(wait)
        try:
            body = await self.inbound.body(request, headers)
            ctype = inbound.json_content_type(headers, forms=True)
            # Only a source that takes its secret in the URL reads the query string.
            url_token = request.query_params.get("token") if source.takes_url_token else None
            source.verify(headers, body, time.time(), url_token)
        except HookbusError as exc:
            if unverified is not None:
                unverified.charge(client, time.monotonic())
            if isinstance(exc, VerificationError):
                log.info("rejected delivery", extra={"source": source.name, "reason": exc.reason})
            raise
        if admitted.bucket is not None:
            wait = admitted.bucket.take(time.monotonic())
            if wait:
                raise RateLimited(wait)
        payload = _form_payload(body) if ctype == FORM else body
        doc = inbound.json_object(payload)
        facts = source.facts(headers, doc)
        return await self.inbound.record(
            source=source.name,
            kind=source.kind,
            origin=admitted.origin,
            tenant=source.config.tenant,
            facts=facts,
            content_type=ctype,
            headers=source.kept_headers(headers),
            body=body,
            payload=payload,
            remote_addr=policy.text(client) if client is not None else peer,
            subject=facts.repository,
            image=source.image(headers, doc),
        )
