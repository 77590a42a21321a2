"""``POST /api/webhook/{secret}``: "this image was pushed", from CI or a registry hook."""

from __future__ import annotations

import logging
from typing import Final

import asyncpg
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response

from hookbus_common import events as ev

from . import inbound, webhookurl
from .imageref import ImageRef, ImageRefError, parse_image_ref
from .inbound import Facts, Inbound, Meter
from .refusals import BadBody, BadImage, Unavailable, Unknown

log = logging.getLogger(__name__)

SOURCE: Final = "image-push"
ORIGIN: Final = f"/hookbus/receiver/{SOURCE}"
EVENT_TYPE: Final = "push"

REQUESTS: Final = Counter(
    "hookbus_receiver_image_push_requests_total",
    "Image-push webhook requests by outcome (a wrong secret is not_found)",
    ["outcome"],
)


def image_info(ref: ImageRef) -> ev.ImageInfo:
    return ev.ImageInfo(
        registry=ref.registry,
        namespace=ref.namespace,
        repository=ref.repository,
        path=ref.path,
        canonical=ref.canonical,
        tag=ref.tag,
        digest=ref.digest,
    )


def parse_push(doc: dict[str, object]) -> ImageRef:
    """The image a push body names; raises BadBody or BadImage saying what is wrong."""
    image = doc.get("image")
    if not isinstance(image, str):
        raise BadBody('the body must be {"image": "<registry/org/app:tag>"} (a string)')
    try:
        return parse_image_ref(image)
    except ImageRefError as exc:
        raise BadImage(str(exc)) from None


class ImagePushHooks:
    """Opened in the app's lifespan, once the secret exists. The secret is read per
    request, never cached: a ``hookbus webhook-url regenerate`` must retire the old URL at
    once."""

    def __init__(self, pool: asyncpg.Pool, pipeline: Inbound) -> None:
        self.pool = pool
        self.inbound = pipeline
        self.meter = Meter(REQUESTS)

    async def handle(self, request: Request) -> Response:
        return await self.meter.measured(self._accept(request))

    async def _admit(self, secret: str) -> None:
        try:
            async with self.pool.acquire() as conn:
                expected = await webhookurl.current(conn)
        except Exception as exc:
            log.error("image-push secret lookup failed", extra={"error": repr(exc)})
            raise Unavailable() from None
        if not webhookurl.matches(expected, secret):
            raise Unknown("wrong_secret")  # answered exactly as any unknown path

    async def _accept(self, request: Request) -> Response:
        await self._admit(request.path_params["secret"])
        headers = inbound.headers_of(request)
        body = await self.inbound.body(request, headers)
        ctype = inbound.json_content_type(headers)
        ref = parse_push(inbound.json_object(body, max_depth=self.inbound.max_json_depth))
        delivery = inbound.delivery_id(headers)
        return await self.inbound.record(
            source=SOURCE,
            kind=SOURCE,
            origin=ORIGIN,
            tenant=None,
            # Rules match on these like on a Git push: repository "acme/*", tag "v*".
            facts=Facts(
                event_type=EVENT_TYPE, delivery_id=delivery, repository=ref.path, tag=ref.tag
            ),
            content_type=ctype,
            headers=inbound.kept_headers(headers),
            body=body,
            remote_addr=inbound.peer_of(request),
            subject=ref.canonical,
            image=image_info(ref),
        )
