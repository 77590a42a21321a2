"""The bus: NATS JetStream connection, the stream, durable pull consumers, publishing."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    Header,
    StorageType,
    StreamConfig,
)

from .errors import ConfigError
from .retry import until_up
from .settings import NatsSettings

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
# JetStream's answers when the stream asks for more replicas than there are servers:
# 10074 replicas > 1 on a server that is not clustered, 10023 insufficient resources.
_TOO_FEW_SERVERS = frozenset({10074, 10023})
# The status of the answer to a publish no stream takes.
_NO_RESPONDERS = "503"


def stream_name(prefix: str) -> str:
    return prefix.upper().replace("-", "_")


class Bus:
    """A connected JetStream context bound to one installation's subject prefix."""

    def __init__(self, nc: Client, settings: NatsSettings, prefix: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=settings.publish_timeout)
        self.settings = settings
        self.prefix = prefix
        self.stream = stream_name(prefix)
        self._reconnect_listeners: list[Callable[[], None]] = []
        # publish_many's acks: the batch waiting for each reply subject's.
        self._acks: dict[str, _Batch] = {}
        self._ack_count = 0
        self._ack_prefix: str | None = None
        self._acks_lock = asyncio.Lock()

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` each time the connection to NATS is made again."""
        self._reconnect_listeners.append(listener)

    def reconnected(self) -> None:
        for listener in self._reconnect_listeners:
            listener()

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def ensure_stream(self) -> None:
        """Create the stream or bring its settings up to date; safe to run from every process."""
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.>"],
            storage=StorageType.FILE,
            max_age=self.settings.stream_max_age_days * 86400,
            num_replicas=self.settings.stream_replicas,
            duplicate_window=self.settings.duplicate_window_seconds,
        )
        try:
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                # 10058: a stream of this name exists with another configuration (another
                # replica count too: JetStream changes that in place).
                if exc.err_code != 10058:
                    raise
                await self.js.update_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code in _TOO_FEW_SERVERS:
                raise ConfigError(
                    f"nats.stream_replicas = {self.settings.stream_replicas}: NATS refused it"
                    f" ({exc.description}); a stream with n replicas needs a cluster of at"
                    " least n servers"
                ) from None
            raise

    async def ensure_consumer(
        self,
        durable: str,
        filter_subjects: Sequence[str],
        *,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
    ) -> JetStreamContext.PullSubscription:
        """Create (or update) a durable pull consumer of ``filter_subjects`` and bind to it.

        All replicas of a service share one durable, which is how a service scales. The
        consumer never gives up on a message by itself (max_deliver -1): the consume loop
        decides when a message is dead and records it first. An existing durable takes
        the configuration given (NATS updates it in place, acks kept), so a service can
        widen its filter; several subjects need NATS 2.10, one works on older servers too.
        """
        if isinstance(filter_subjects, str) or not filter_subjects:
            raise ValueError("filter_subjects must be a non-empty sequence of subjects")
        one = len(filter_subjects) == 1
        config = ConsumerConfig(
            durable_name=durable,
            name=durable,
            filter_subject=filter_subjects[0] if one else None,
            filter_subjects=None if one else list(filter_subjects),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
        )
        await self.js.add_consumer(self.stream, config)
        return await self.js.pull_subscribe_bind(durable=durable, stream=self.stream)

    async def publish(self, subject: str, msg_id: str, payload: bytes) -> None:
        """Publish and wait for the stream's ack; the event id dedupes republishes."""
        await self.js.publish(subject, payload, headers={MSG_ID: msg_id})

    async def publish_many(self, items: list[tuple[str, str, bytes]]) -> None:
        """Publish several messages with their acks in flight together (one at a time is ~5x
        slower); raises if any is not acknowledged within the publish timeout.

        The stream's acks come to one subscription of this connection's, each message's
        reply subject naming its batch's slot: per message, one publish and a look at its
        ack, where nats-py's publish_async adds a future, a random token, a semaphore and a
        parsed PubAck (most of the publish's own CPU).
        """
        if not items:
            return
        prefix = self._ack_prefix or await self._acks_start()
        batch = _Batch(len(items))
        tokens = []
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                for subject, msg_id, payload in items:
                    self._ack_count += 1
                    token = str(self._ack_count)
                    self._acks[token] = batch
                    tokens.append(token)
                    await self.nc.publish(
                        subject, payload, reply=prefix + token, headers={MSG_ID: msg_id}
                    )
                await batch.done
        finally:
            for token in tokens:
                self._acks.pop(token, None)
            if not batch.done.done():
                batch.done.cancel()

    async def _acks_start(self) -> str:
        """Subscribe to this bus's acks (once; the client subscribes again after a
        reconnect) and return the prefix of their subjects."""
        async with self._acks_lock:
            if self._ack_prefix is None:
                prefix = self.nc.new_inbox() + "."
                await self.nc.subscribe(prefix + "*", cb=self._on_ack)
                self._ack_prefix = prefix
        return self._ack_prefix

    async def _on_ack(self, msg: Msg) -> None:
        assert self._ack_prefix is not None
        batch = self._acks.pop(msg.subject[len(self._ack_prefix) :], None)
        if batch is None:
            return  # its batch timed out or failed already
        if msg.headers and msg.headers.get(Header.STATUS) == _NO_RESPONDERS:
            batch.failed(nats.js.errors.NoStreamResponseError())
        elif b'"error"' in msg.data:
            answer = json.loads(msg.data)
            if "error" in answer:
                batch.failed(nats.js.errors.APIError.from_error(answer["error"]))
                return
            batch.acked()
        else:
            batch.acked()


class _Batch:
    """The acks a ``publish_many`` waits for: done when all came, failed at the first
    error."""

    __slots__ = ("done", "left")

    def __init__(self, size: int) -> None:
        self.left = size
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def acked(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)

    def failed(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


@asynccontextmanager
async def connect(settings: NatsSettings, prefix: str, name: str) -> AsyncIterator[Bus]:
    """Connect (retrying until ``connect_timeout``), ensure the stream, close on exit."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": str(exc)})

    async def on_disconnect() -> None:
        log.info("nats disconnected")

    bus: Bus | None = None

    async def on_reconnect() -> None:
        log.info("nats reconnected")
        if bus is not None:
            bus.reconnected()

    nc: Client | None = None
    errors = (OSError, nats.errors.Error, asyncio.TimeoutError)
    async for attempt in until_up(settings.connect_timeout, errors):
        with attempt:
            nc = await nats.connect(
                settings.servers,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                drain_timeout=5,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
    assert nc is not None
    bus = Bus(nc, settings, prefix)
    try:
        # A cluster still electing its leader answers "unavailable", or not at all.
        electing = (
            nats.js.errors.ServiceUnavailableError,
            nats.errors.NoRespondersError,
            nats.errors.TimeoutError,
        )
        async for attempt in until_up(settings.connect_timeout, electing):
            with attempt:
                await bus.ensure_stream()
        yield bus
    finally:
        try:
            await nc.drain()
        except Exception:  # closing a connection to a dead server must not mask the real error
            await nc.close()
