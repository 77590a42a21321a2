"""Dispatcher replicas telling each other who holds a backlog and who waits for work.

Replicas share one durable consumer, and the first to read a backlog reads it ahead, up
to ``dispatcher.read_ahead``, while a replica started later finds nothing in the stream.
So a replica that holds more than it will send in the next few seconds says so, once a
second, on a core NATS subject of the installation's (never stored: it is outside the
stream's subjects); a replica that hears it and holds clearly less answers that it waits
for work, with what it holds. The holder then gives back what it holds beyond its part
(``fairness_loop``), where the waiting replica's pull request takes it.

Only replicas speak for themselves: a lone dispatcher hears no one and never gives
anything back, and an idle installation sends nothing at all (a holder speaks first).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from hookbus_common import events as ev

log = logging.getLogger(__name__)

EVERY: Final = 1.0
"""Seconds between a holder's words, and the least between a waiting replica's answers."""

HEARD_FOR: Final = 2.5 * EVERY
"""How long a replica's word counts: it has stopped (or started working) when it is older."""


class Word(msgspec.Struct, frozen=True):
    """What a replica says: who it is, how many deliveries it holds read ahead, and
    whether it waits for work."""

    id: str
    held: int = 0
    waiting: bool = False


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Word).decode


@dataclass
class _Heard:
    at: float
    word: Word


class Presence:
    """This replica's voice and what it heard from the others.

    ``wants_work(held)``, called when another replica says it holds ``held``, gives what
    this replica holds if it would take some of that (it answers, waiting), else None.
    """

    def __init__(
        self,
        nc: Client,
        prefix: str,
        *,
        wants_work: Callable[[int], int | None],
        clock: Callable[[], float] = time.monotonic,
        me: str | None = None,
    ) -> None:
        self._nc = nc
        self.subject = ev.presence_subject(prefix)
        self.me = me or uuid.uuid4().hex
        self._wants_work = wants_work
        self.clock = clock
        # What each replica said last, as a holder and as one waiting (a replica can be
        # both: it holds a little and waits for more).
        self._heard: dict[tuple[str, bool], _Heard] = {}
        self._answered_at = float("-inf")
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self.subject, cb=self._on_word)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # NATS away: the subscription ends with the connection
                log.debug("could not unsubscribe from presence", extra={"error": repr(exc)})

    async def hold(self, held: int) -> None:
        """Say that this replica holds ``held`` deliveries read ahead."""
        await self._say(Word(self.me, held=held))

    def waiting_peers(self) -> list[int]:
        """What each other replica that said lately that it waits for work holds."""
        now = self.clock()
        return [
            h.word.held for h in self._heard.values() if h.word.waiting and now - h.at <= HEARD_FOR
        ]

    def answered(self) -> None:
        """The waiting replicas were given their part: what they said is out of date."""
        self._heard = {k: h for k, h in self._heard.items() if not h.word.waiting}

    async def _say(self, word: Word) -> None:
        try:
            await self._nc.publish(self.subject, _encode(word))
        except Exception as exc:  # NATS away: nobody hears anyone, nothing is given back
            log.debug("could not speak on presence", extra={"error": repr(exc)})

    async def _on_word(self, msg: Msg) -> None:
        try:
            word = _decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not ours to understand
        if word.id == self.me:
            return
        now = self.clock()
        self._heard[word.id, word.waiting] = _Heard(now, word)
        for gone in [k for k, h in self._heard.items() if now - h.at > HEARD_FOR]:
            del self._heard[gone]
        if word.waiting or now - self._answered_at < EVERY / 2:
            return
        mine = self._wants_work(word.held)
        if mine is not None:
            self._answered_at = now
            await self._say(Word(self.me, held=mine, waiting=True))
