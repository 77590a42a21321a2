"""``POST /api/webhook/{secret}``: "this image was pushed", from CI or a registry hook."""

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

from . import inbound, webhookurl
from .config import ReceiverConfig
from .groupcommit import GroupCommitter
from .imageref import ImageRef, ImageRefError, parse_image_ref
from .inbound import Problem

log = logging.getLogger(__name__)

SOURCE: Final = "image-push"
EVENT_TYPE: Final = "push"

REQUESTS = Counter(
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
    """The image a push body names; raises Problem(400) saying what is wrong."""
    image = doc.get("image")
    if not isinstance(image, str):
        raise Problem(
            400, "bad_body", 'the body must be {"image": "<registry/org/app:tag>"} (a string)'
        )
    try:
        return parse_image_ref(image)
    except ImageRefError as exc:
        raise Problem(400, "bad_image", str(exc)) from None


class ImagePushHooks:
    """Bound in the app's lifespan. The secret is read per request, never cached: a
    ``hookbus webhook-url regenerate`` must retire the old URL at once."""

    def __init__(self, settings: ReceiverConfig) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._committer: GroupCommitter | None = None

    async def bind(self, pool: asyncpg.Pool, committer: GroupCommitter) -> None:
        async with pool.acquire() as conn:
            await webhookurl.ensure(conn)  # made on first start, race-free
        self._pool = pool
        self._committer = committer

    async def handle(self, request: Request) -> Response:
        if self._pool is None or self._committer is None:
            raise RuntimeError("ImagePushHooks used before bind()")
        try:
            async with self._pool.acquire() as conn:
                expected = await webhookurl.current(conn)
        except Exception as exc:
            log.error("image-push secret lookup failed", extra={"error": repr(exc)})
            REQUESTS.labels("unavailable").inc()
            return inbound.unavailable().response()
        if not webhookurl.matches(expected, request.path_params["secret"]):
            REQUESTS.labels("not_found").inc()
            raise HTTPException(404)  # answered by the app exactly as any unknown path
        return await inbound.answered(
            self._accept(request, self._committer), lambda o: REQUESTS.labels(o).inc()
        )

    async def _accept(self, request: Request, committer: GroupCommitter) -> Response:
        body = await inbound.read_body(request, self.settings.receiver.max_body_bytes)
        headers = inbound.headers_of(request)
        ctype = inbound.json_content_type(headers)
        ref = parse_push(inbound.json_object(body))
        delivery = inbound.delivery_id(headers)
        data = ev.WebhookReceived(
            source=SOURCE,
            kind=SOURCE,
            event_type=EVENT_TYPE,
            delivery_id=delivery,
            content_type=ctype,
            headers=inbound.kept_headers(headers),
            payload=msgspec.Raw(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            remote_addr=request.client.host if request.client else None,
            # Rules match on these like on a Git push: repository "acme/*", tag "v*".
            repository=ref.path,
            tag=ref.tag,
            image=image_info(ref),
        )
        event = ev.make_event(
            data, source=f"/hookbus/receiver/{SOURCE}", id=ev.new_id(), subject=ref.canonical
        )
        dedupe = f"{SOURCE}:{delivery}" if delivery else None
        return await inbound.record(committer, Pending(event, dedupe, body), SOURCE)
