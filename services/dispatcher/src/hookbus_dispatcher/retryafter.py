"""Reading ``Retry-After`` (RFC 9110 §10.2.3): how long a receiver asks us to wait."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MAX_DELAY = 3600.0
"""The longest wait a receiver can ask for, in seconds (one hour).

Asking for more (a huge number, a date next year) gets this: one header must not park a
delivery for days, and a receiver that is back sooner loses at most an hour."""

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse(value: str | None, now: datetime) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when ``value`` is missing or
    unreadable (the caller then falls back on its own backoff).

    Both forms of the header are read: delay-seconds (``120``) and an HTTP-date
    (IMF-fixdate, and the obsolete RFC 850 and asctime forms), the date relative to
    ``now`` (an aware datetime). A date already past means "now" (0). Anything else,
    a sign or a fraction included, is not delay-seconds (``1*DIGIT``) and reads as ``None``.
    The result is capped at ``MAX_DELAY``.
    """
    if value is None:
        return None
    text = value.strip()
    # isascii: str.isdigit also accepts "²" and other Unicode digits.
    if text.isascii() and text.isdigit():
        # A number of thousands of digits is over the cap; int() of it would raise.
        digits = text.lstrip("0") or "0"
        return MAX_DELAY if len(digits) > 9 else min(float(digits), MAX_DELAY)
    try:
        when = parsedate_to_datetime(text)
    except (ValueError, TypeError, OverflowError):
        return None
    if when.tzinfo is None:
        # asctime carries no zone and "-0000" means none was given; HTTP-dates are GMT.
        when = when.replace(tzinfo=UTC)
    return min(max((when - now).total_seconds(), 0.0), MAX_DELAY)
