"""What happens to a message after a handler failure: terminate, nak with a delay, backoff."""

from __future__ import annotations

import errno
import itertools
from typing import Any

import asyncpg
import msgspec
import nats.errors
import pytest

from hookbus_common import consumer
from hookbus_common.consumer import Ack, Defer, Incoming, Nak, Term, backoff, disposition
from hookbus_common.errors import Deferred, OutageError, PermanentError, RetryableError
from hookbus_common.events import decode


def _ceiling(deliveries: int, base: float = 0.5, cap: float = 60.0) -> float:
    return min(cap, base * 2 ** max(0, deliveries - 1))


def _decode_error() -> msgspec.DecodeError:
    try:
        decode(b"{not json")
    except msgspec.DecodeError as exc:
        return exc
    raise AssertionError("decode accepted malformed JSON")


def _validation_error() -> msgspec.ValidationError:
    try:
        decode(b'{"id": 1}')
    except msgspec.ValidationError as exc:
        return exc
    raise AssertionError("decode accepted an invalid envelope")


@pytest.fixture
def fixed_jitter(monkeypatch):
    """Pin the jitter so a delay can be compared with an exact figure."""

    def pin(value: float) -> None:
        monkeypatch.setattr(consumer.random, "random", lambda: value)

    return pin


# ------------------------------------------------------------------------ disposition


@pytest.mark.parametrize(
    "exc",
    [
        PermanentError("bad input"),
        _decode_error(),
        _validation_error(),
        msgspec.ValidationError("Expected `str`"),
    ],
    ids=["permanent", "decode", "validation", "bare-validation"],
)
def test_errors_that_can_never_succeed_terminate_at_once(exc):
    outcome = disposition(exc, deliveries=1, max_deliver=10)

    assert isinstance(outcome, Term)
    assert type(exc).__name__ in outcome.reason
    assert str(exc) in outcome.reason


def test_retryable_error_with_a_delay_is_nakd_with_that_delay():
    assert disposition(RetryableError("busy", delay=7.5), 1, 10) == Nak(7.5)
    assert disposition(RetryableError("busy", delay=0.0), 3, 10) == Nak(0.0)


@pytest.mark.parametrize(
    "exc",
    [RetryableError("no delay"), RuntimeError("boom"), ConnectionError("reset"), KeyError("k")],
)
@pytest.mark.parametrize("deliveries", [1, 2, 5])
def test_other_failures_are_nakd_with_backoff(exc, deliveries):
    outcome = disposition(exc, deliveries, max_deliver=10)

    assert isinstance(outcome, Nak)
    ceiling = _ceiling(deliveries)
    assert ceiling / 2 <= outcome.delay <= ceiling


@pytest.mark.parametrize(
    "exc", [RetryableError("busy", delay=1.0), RetryableError("busy"), RuntimeError("boom")]
)
def test_reaching_max_deliver_terminates(exc):
    assert isinstance(disposition(exc, deliveries=4, max_deliver=5), Nak)

    outcome = disposition(exc, deliveries=5, max_deliver=5)

    assert isinstance(outcome, Term)
    assert "5" in outcome.reason
    assert str(exc) in outcome.reason


def test_past_max_deliver_still_terminates():
    assert isinstance(disposition(RuntimeError("x"), deliveries=50, max_deliver=5), Term)


def test_max_deliver_of_one_never_retries():
    assert isinstance(disposition(RetryableError("x", delay=1.0), 1, 1), Term)


@pytest.mark.parametrize(
    "exc",
    [
        OutageError("postgres away"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        nats.errors.ConnectionClosedError(),
    ],
    ids=["outage-error", "pg-connection-lost", "pg-starting", "refused", "nats-closed"],
)
@pytest.mark.parametrize("deliveries", [1, 5, 50])
def test_an_outage_is_never_terminated_whatever_the_delivery_count(exc, deliveries):
    outcome = disposition(exc, deliveries, max_deliver=5)

    assert isinstance(outcome, Nak)
    assert outcome.delay <= 60.0


def test_a_downstreams_failure_still_counts_toward_max_deliver():
    # An endpoint that refused the connection is the work's failure, not hookbus's.
    assert isinstance(disposition(RetryableError("endpoint refused", delay=1.0), 5, 5), Term)


# ----------------------------------------------------------------------- progress


class _Msg:
    def __init__(self, fails_with: BaseException | None) -> None:
        self.fails_with = fails_with
        self.reported = 0

    async def in_progress(self) -> None:
        self.reported += 1
        if self.fails_with is not None:
            raise self.fails_with


def _incoming(msg: Any) -> Incoming:
    return Incoming(event=None, subject="s", deliveries=1, _msg=msg)  # type: ignore[arg-type]


async def test_progress_reports_to_jetstream():
    msg = _Msg(None)
    await _incoming(msg).progress()
    assert msg.reported == 1


async def test_progress_with_nats_away_is_not_the_handlers_failure():
    msg = _Msg(nats.errors.ConnectionClosedError())
    await _incoming(msg).progress()  # does not raise: a long job keeps running
    assert msg.reported == 1


async def test_progress_raises_what_is_not_an_outage():
    msg = _Msg(nats.errors.MsgAlreadyAckdError())
    with pytest.raises(nats.errors.MsgAlreadyAckdError):
        await _incoming(msg).progress()


# ---------------------------------------------------------------------------- backoff


@pytest.mark.parametrize("deliveries", [1, 2, 3, 4, 5, 8, 12, 20, 50])
def test_backoff_stays_within_half_and_all_of_its_ceiling(deliveries):
    ceiling = _ceiling(deliveries)

    delays = [backoff(deliveries) for _ in range(200)]

    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1  # jitter spreads replicas that failed together


def test_backoff_bounds_are_the_half_and_the_whole_ceiling(fixed_jitter):
    fixed_jitter(0.0)
    assert backoff(1) == pytest.approx(0.25)
    assert backoff(4) == pytest.approx(2.0)
    fixed_jitter(0.999999)
    assert backoff(1) == pytest.approx(0.5, rel=1e-5)
    assert backoff(4) == pytest.approx(4.0, rel=1e-5)


def test_backoff_doubles_until_the_cap_then_stays(fixed_jitter):
    fixed_jitter(0.5)

    delays = [backoff(d) for d in range(1, 16)]

    for earlier, later in itertools.pairwise(delays):
        assert later == pytest.approx(min(2 * earlier, 60.0 * 0.75))
    assert max(delays) <= 60.0
    assert delays[-1] == pytest.approx(60.0 * 0.75)


def test_backoff_honours_base_and_cap(fixed_jitter):
    fixed_jitter(0.999999)

    assert backoff(1, base=2.0, cap=5.0) == pytest.approx(2.0, rel=1e-5)
    assert backoff(2, base=2.0, cap=5.0) == pytest.approx(4.0, rel=1e-5)
    assert backoff(3, base=2.0, cap=5.0) == pytest.approx(5.0, rel=1e-5)


def test_every_later_delivery_waits_at_least_as_long_before_the_cap():
    # The lower bound of delivery n+1 is the upper bound of delivery n, so with any jitter
    # a later retry never comes sooner, until the cap is reached.
    for n in range(1, 7):
        assert min(backoff(n + 1) for _ in range(50)) >= max(backoff(n) for _ in range(50))


@pytest.mark.parametrize("deliveries", [0, -3])
def test_backoff_of_a_first_or_odd_count_is_the_base(deliveries):
    assert 0.25 <= backoff(deliveries) <= 0.5


def test_backoff_stays_capped_after_very_many_deliveries():
    # The JetStream consumer has no max_deliver of its own, so a message whose dead letter
    # cannot be recorded keeps coming back, and its count keeps growing.
    assert 30.0 <= backoff(5000) <= 60.0


# ------------------------------------------------------------------ deferrals


@pytest.mark.parametrize("deliveries", [1, 5, 6, 1000])
def test_a_deferral_is_given_back_with_its_delay_and_never_terminated(deliveries):
    outcome = disposition(Deferred(2.5, "held elsewhere"), deliveries, max_deliver=5)
    assert outcome == Defer(2.5, "held elsewhere")


def test_a_deferral_is_not_an_outage_nor_a_failure():
    from hookbus_common.outage import is_outage

    assert not is_outage(Deferred(1.0, "not now"))
    assert Deferred(-3.0, "not now").delay == 0.0


def test_deferrals_are_left_out_of_the_failure_budget():
    ledger = consumer._Ledger()
    # Never deferred: JetStream's count is the budget, redeliveries after a crash included.
    assert ledger.tries(7, deliveries=3) == 3
    for n in range(1, 10):  # deferred nine times
        assert ledger.tries(7, deliveries=n) == (n if n == 1 else 1)
        ledger.settled(7, Defer(1.0, "held"))
    # Its first real failure is try 1, whatever JetStream counted.
    assert ledger.tries(7, deliveries=10) == 1
    ledger.settled(7, Nak(1.0))
    assert ledger.tries(7, deliveries=11) == 2
    ledger.settled(7, Defer(1.0, "held"))
    assert ledger.tries(7, deliveries=12) == 2
    assert disposition(RuntimeError("bug"), ledger.tries(7, 12), max_deliver=2) == Term(
        "gave up after 2 deliveries: RuntimeError: bug"
    )
    ledger.settled(7, Ack())
    assert ledger.tries(7, deliveries=13) == 13  # forgotten once settled for good


def test_the_ledger_forgets_the_oldest_messages_beyond_its_size():
    ledger = consumer._Ledger(size=2)
    for seq in (1, 2, 3):
        ledger.settled(seq, Defer(1.0, "held"))
    assert ledger.tries(1, deliveries=4) == 4
    assert (ledger.tries(2, deliveries=4), ledger.tries(3, deliveries=4)) == (1, 1)


def test_an_incomings_tries_default_to_its_deliveries():
    msg: Any = object()
    event: Any = None
    assert Incoming(event=event, subject="s", deliveries=4, _msg=msg).tries == 4
    assert Incoming(event=event, subject="s", deliveries=4, _msg=msg, counted=1).tries == 1
