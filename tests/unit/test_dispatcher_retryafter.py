"""Retry-After as RFC 9110 writes it: delay-seconds or an HTTP-date, capped, else None."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from hookbus_dispatcher.retryafter import MAX_DELAY, parse, utcnow

# RFC 9110's own example instant, so the three date forms below name the same second.
NOW = datetime(1994, 11, 6, 8, 49, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("7", 7.0),
        ("120", 120.0),
        (" 30 ", 30.0),  # surrounding whitespace is not part of the value
        ("0005", 5.0),
        ("3599", 3599.0),
        ("3600", MAX_DELAY),
    ],
)
def test_delay_seconds(value: str, seconds: float) -> None:
    assert parse(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    ["3601", "86400", "999999999", "9999999999", "1" + "0" * 5000],
    ids=["just-over", "a-day", "nine-digits", "ten-digits", "five-thousand-digits"],
)
def test_delay_seconds_over_the_cap_are_capped(value: str) -> None:
    assert parse(value, NOW) == MAX_DELAY


def test_the_cap_is_one_hour() -> None:
    assert MAX_DELAY == 3600.0


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate, the form senders must use
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 form
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime form (no zone: it is GMT)
    ],
    ids=["imf-fixdate", "rfc850", "asctime"],
)
def test_http_date_forms_are_measured_from_now(value: str) -> None:
    assert parse(value, NOW) == 30.0
    assert parse(value, NOW + timedelta(seconds=10)) == 20.0


def test_http_date_with_an_explicit_offset_is_converted() -> None:
    # 10:49:37 at +02:00 is 08:49:37 GMT.
    assert parse("Sun, 06 Nov 1994 10:49:37 +0200", NOW) == 30.0


def test_http_date_is_measured_from_an_aware_now_in_any_zone() -> None:
    east = NOW.astimezone(timezone(timedelta(hours=5)))
    assert parse("Sun, 06 Nov 1994 08:49:37 GMT", east) == 30.0


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:07 GMT",  # exactly now
        "Sun, 06 Nov 1994 08:49:06 GMT",  # one second ago
        "Thu, 01 Jan 1970 00:00:00 GMT",
    ],
    ids=["now", "a-second-ago", "epoch"],
)
def test_a_date_not_in_the_future_means_now(value: str) -> None:
    assert parse(value, NOW) == 0.0


@pytest.mark.parametrize(
    "value",
    ["Sun, 06 Nov 1994 09:49:08 GMT", "Fri, 31 Dec 9999 23:59:59 GMT"],
    ids=["an-hour-and-a-second", "year-9999"],
)
def test_a_date_too_far_ahead_is_capped(value: str) -> None:
    assert parse(value, NOW) == MAX_DELAY


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-5",  # delay-seconds is 1*DIGIT: no sign ...
        "+5",
        "1.5",  # ... no fraction ...
        "1e3",  # ... no exponent
        "0x10",
        "²",  # str.isdigit says yes; it is no ASCII digit
        "٣",  # an Arabic-Indic three: float() would read it, the RFC does not
        "5 seconds",
        "7, 7",  # two Retry-After headers, joined by the client
        "Sun, 06 Nov 1994",  # a date without a time
        "Sun, 32 Nov 1994 08:49:37 GMT",  # no such day
        "Sun, 06 Nov 1994 25:49:37 GMT",  # no such hour
        "Sun, 06 Nov 99999 08:49:37 GMT",  # beyond datetime's years
    ],
)
def test_garbage_is_none_so_the_caller_uses_its_own_backoff(value: str | None) -> None:
    assert parse(value, NOW) is None


def test_utcnow_is_aware_so_dates_can_be_measured_from_it() -> None:
    now = utcnow()
    assert now.utcoffset() == timedelta(0)
    assert parse("Fri, 31 Dec 9999 23:59:59 GMT", now) == MAX_DELAY
