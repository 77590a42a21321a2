"""hookbus's one error family: each error carries a code you can act on.

Two questions are asked of an error, each answered in one place: what a consumer does with
the message (``consumer.disposition``: retry later, or never) and what an HTTP caller is
told (the receiver's ``inbound.problem_for``). The codes are what both decide on:

- ``invalid``: the input or configuration can never work as given (4xx; never retried);
- ``not_found``: the thing named does not exist (404);
- ``conflict``: it exists already, or is in a state that forbids the change (409);
- ``unauthorized``: the caller could not prove who it is (401; every reason looks alike);
- ``unavailable``: a dependency is away; the same call can succeed later (503; retried).

Among ``unavailable`` errors, two kinds are kept apart because one spends a message's retry
budget and the other must not: ``RetryableError`` says the work's own target failed (an
endpoint answered 503, refused the connection): that is an attempt, and counts toward
``max_deliver``. ``OutageError`` says a part hookbus itself runs on (Postgres, NATS) is away:
no attempt was made, and a consumer waits for it to come back (``outage.is_outage`` is the
one place that recognises an outage, ours or the drivers' errors alike).

``Deferred`` is not a failure at all: the handler says "not now" (the work is held
elsewhere, the process is stopping). The message comes back after its delay, never counts
toward ``max_deliver`` and is never dead-lettered, however often it is deferred.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Code = Literal["invalid", "not_found", "conflict", "unauthorized", "unavailable"]


class HookbusError(Exception):
    """Base of hookbus's own errors."""

    code: ClassVar[Code] = "invalid"


class InvalidError(HookbusError):
    """The input can never be used as given; the message says what is wrong."""

    code: ClassVar[Code] = "invalid"


class NotFoundError(HookbusError):
    code: ClassVar[Code] = "not_found"


class ConflictError(HookbusError):
    code: ClassVar[Code] = "conflict"


class UnauthorizedError(HookbusError):
    """The caller's proof failed. ``reason`` is for logs and metrics, never the caller."""

    code: ClassVar[Code] = "unauthorized"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnavailableError(HookbusError):
    """A dependency is away; the same call can succeed later."""

    code: ClassVar[Code] = "unavailable"


class ConfigError(InvalidError):
    """The configuration cannot be used; the message names the key and the problem."""


class RetryableError(UnavailableError):
    """Can succeed later (a dead downstream, a lost connection): nak with a delay."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class OutageError(UnavailableError):
    """Postgres or NATS, which hookbus itself runs on, is away: wait for it, spend no retries.

    Raise it (``from`` the driver's error) where our own code finds a part of hookbus gone
    in a way the drivers' errors do not say by themselves.
    """


class PermanentError(InvalidError):
    """Can never succeed as sent: terminate the message and record it as a dead letter."""


class Deferred(HookbusError):
    """Not now, and nothing went wrong: give the message back for ``delay`` seconds.

    Raised by a handler whose work cannot be done at this moment for a reason that is no
    failure of it (another run holds the work, the process is stopping). The consume loop
    naks the message with ``delay``, frees its place among the messages in flight at once,
    spends none of its retry budget and never terminates it for being deferred.
    """

    code: ClassVar[Code] = "unavailable"

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = max(0.0, delay)
        self.reason = reason
