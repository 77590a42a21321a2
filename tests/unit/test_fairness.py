"""The fair queue: tenants served in turn (deficit round robin, weighted), destinations
within a tenant in turn, and no destination past its cap of items in hand."""

from __future__ import annotations

from hookbus_dispatcher.fairness import FairQueue, Pace
from hookbus_dispatcher.fairness_loop import _RouteData, destination


def _queue(cap: int = 100, weights: dict[str, float] | None = None) -> FairQueue[str]:
    w = weights or {}
    return FairQueue(cap_for=lambda _d: cap, weight_for=lambda t: w.get(t, 1.0))


def _take_all(q: FairQueue[str], finish: bool = True) -> list[str]:
    order = []
    while (taken := q.take()) is not None:
        _tenant, dest, item = taken
        order.append(item)
        if finish:
            q.done(dest)
    return order


def test_a_flooding_tenant_does_not_keep_another_waiting_behind_its_flood() -> None:
    q = _queue()
    for i in range(10_000):
        q.put("a", "ep-a", f"a{i}")
    for i in range(5):
        q.put("b", "ep-b", f"b{i}")
    order = _take_all(q)
    # b's five go out among a's first ten, not after a's ten thousand.
    positions = [order.index(f"b{i}") for i in range(5)]
    assert positions == [1, 3, 5, 7, 9]
    assert len(order) == 10_005
    assert [x for x in order if x.startswith("a")] == [f"a{i}" for i in range(10_000)]
    assert len(q) == 0


def test_a_tenant_that_arrives_later_joins_the_round() -> None:
    q = _queue()
    for i in range(100):
        q.put("a", "ep", f"a{i}")
    assert _take_all(q, finish=False)[:3] == ["a0", "a1", "a2"]
    q2 = _queue()
    for i in range(100):
        q2.put("a", "ep", f"a{i}")
    first = q2.take()
    assert first is not None
    assert first[2] == "a0"
    q2.put("b", "ep-b", "b0")
    q2.put("b", "ep-b", "b1")
    # b joins at the end of the round: after a's turn that was under way, then in turn.
    assert [t[2] for t in (q2.take(), q2.take(), q2.take(), q2.take()) if t] == [
        "a1",
        "b0",
        "a2",
        "b1",
    ]


def test_weights_share_the_turns() -> None:
    q = _queue(weights={"big": 3.0})
    for i in range(30):
        q.put("big", "x", f"big{i}")
        q.put("small", "y", f"small{i}")
    first_eight = _take_all(q)[:8]
    assert first_eight == ["big0", "big1", "big2", "small0", "big3", "big4", "big5", "small1"]


def test_a_slow_destination_holds_at_most_its_cap_and_others_flow() -> None:
    q = _queue(cap=2)
    for i in range(50):
        q.put("a", "slow", f"slow{i}")
    for i in range(5):
        q.put("a", "fast", f"fast{i}")
    # Nothing finishes at "slow" (10 s answers): it gets two places, "fast" all its own.
    taken = []
    while (t := q.take()) is not None:
        taken.append(t)
        if t[1] == "fast":
            q.done("fast")
    slow = [item for _t, dest, item in taken if dest == "slow"]
    fast = [item for _t, dest, item in taken if dest == "fast"]
    assert slow == ["slow0", "slow1"]
    assert fast == [f"fast{i}" for i in range(5)]
    assert q.in_hand("slow") == 2
    assert len(q) == 48
    # One slow answer comes back: exactly one more goes.
    q.done("slow")
    nxt = q.take()
    assert nxt is not None
    assert nxt[2] == "slow2"
    assert q.take() is None


def test_a_tenant_blocked_on_its_caps_lets_others_go_and_saves_no_credit() -> None:
    q = _queue(cap=1)
    q.put("a", "one", "a0")
    q.put("a", "one", "a1")
    q.put("b", "two", "b0")
    q.put("b", "two", "b1")
    assert q.take() == ("a", "one", "a0")
    assert q.take() == ("b", "two", "b0")
    assert q.take() is None  # both at their cap
    q.done("two")
    assert q.take() == ("b", "two", "b1")
    q.done("one")
    assert q.take() == ("a", "one", "a1")
    assert q.take() is None
    assert len(q) == 0


def test_destinations_of_one_tenant_take_turns() -> None:
    q = _queue()
    for i in range(3):
        q.put("a", "x", f"x{i}")
        q.put("a", "y", f"y{i}")
    assert _take_all(q) == ["x0", "y0", "x1", "y1", "x2", "y2"]


def test_backlog_longest_and_giving_back() -> None:
    q = _queue()
    for i in range(3):
        q.put("a", "x", f"x{i}")
    q.put("b", "y", "y0")
    assert q.backlog() == {("a", "x"): 3, ("b", "y"): 1}
    assert q.longest() == ("a", "x")
    assert q.pop_newest("a", "x") == "x2"
    assert q.pop_newest("b", "y") == "y0"
    assert q.backlog() == {("a", "x"): 2}
    assert sorted(q.drain()) == ["x0", "x1"]
    assert len(q) == 0
    assert q.take() is None


def test_what_a_delivery_is_counted_by() -> None:
    assert destination(_RouteData(endpoint="billing")) == "billing"
    assert destination(_RouteData(notification="ops", endpoint=None)) == "notification:ops"
    assert destination(_RouteData(url="https://user@Hooks.Example.com:8443/x")) == (
        "url:hooks.example.com:8443"
    )


def test_the_pace_counts_the_last_window() -> None:
    pace = Pace(window=5.0)
    for i in range(1, 301):  # 100 a second for 3 s
        pace.finished(i / 100)
    assert pace.per_second(3.0) == 300 / 5.0
    assert pace.per_second(6.0) == 201 / 5.0  # those before 1.0 s have left the window
    assert pace.per_second(9.0) == 0.0
