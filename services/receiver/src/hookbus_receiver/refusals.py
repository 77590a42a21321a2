"""Why the receiver refuses a request, as members of hookbus's error family.

Each refusal has the kernel's ``code`` and a ``reason``: a stable label for metrics and
logs that never holds a secret. Only the messages of these classes are written for the
sender; what any error answers over HTTP is decided in one place, ``inbound.problem_for``.
Failed proofs are ``signatures.VerificationError`` (an ``UnauthorizedError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Final

from hookbus_common.errors import InvalidError, NotFoundError, RetryableError, UnavailableError

if TYPE_CHECKING:
    from .validation import Violation

NOT_RECORDED: Final = "could not record the delivery; retry"


class BadRequest(InvalidError):
    """The request can never be accepted as sent; the message tells the sender why."""

    reason: ClassVar[str] = "bad_request"


class BadBody(BadRequest):
    """The body is not what this endpoint takes (not JSON, not an object, no payload)."""

    reason = "bad_body"


class BadImage(BadRequest):
    """An image-push body names an image that is not a valid reference."""

    reason = "bad_image"


class BodyTooLarge(BadRequest):
    reason = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the limit is {limit} bytes")


class UnsupportedMediaType(BadRequest):
    reason = "unsupported_media_type"


class Unstorable(BadRequest):
    """The delivery holds a value the event log cannot store (a NUL character in a fact,
    a string that is not Unicode): refused alone, never failing the deliveries it was
    committed with."""

    reason = "unstorable"

    def __init__(self, detail: str = "the delivery holds a value that cannot be recorded") -> None:
        super().__init__(detail)


class Disconnected(BadRequest):
    """The client went away before its body was read. Nobody hears the answer; it is
    counted, not logged as a failure, and nothing is recorded."""

    reason = "disconnected"

    def __init__(self) -> None:
        super().__init__("the client disconnected before sending the whole body")


class ValidationFailed(BadRequest):
    """The body breaks the partner's validation rules: each violation says where and what."""

    reason = "validation_failed"

    def __init__(self, violations: Sequence[Violation]) -> None:
        super().__init__("; ".join(f"{v.path}: {v.message}" for v in violations))
        self.violations = list(violations)


class ValidationAborted(BadRequest):
    """Validating the body against the partner's JSON Schema went past its time budget
    (or its worker stopped): the body is refused, nothing is recorded."""

    reason = "validation_aborted"


class Unknown(NotFoundError):
    """Nothing answers here for this caller: an unknown partner token, a wrong image-push
    secret, an address outside a source's allow-list. Answered exactly like a path that
    does not exist; ``reason`` (``ip_denied``…) is for metrics and logs only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RateLimited(RetryableError):
    """Too many requests for this source; ``delay`` is when the next one is allowed."""

    reason: ClassVar[str] = "rate_limited"

    def __init__(self, wait: float) -> None:
        super().__init__("too many requests for this source", delay=wait)


class UnverifiedRateLimited(RateLimited):
    """Too many requests from this client address failed to prove their sender."""

    reason = "unverified_rate_limited"

    def __init__(self, wait: float) -> None:
        RetryableError.__init__(self, "too many unverified requests from this address", delay=wait)


class ValidationBusy(RateLimited):
    """Every schema validation worker stayed busy for the whole budget: send it again."""

    reason = "validation_busy"

    def __init__(self, wait: float) -> None:
        RetryableError.__init__(self, "too many validations in flight; retry", delay=wait)


class Unavailable(UnavailableError):
    """Nothing was recorded; the sender should send it again. The message says so."""

    reason: ClassVar[str] = "unavailable"

    def __init__(self, detail: str = NOT_RECORDED) -> None:
        super().__init__(detail)
