"""Deliveries in order per key, through the dispatcher's loop on real NATS and Postgres:
a failing first message holds back the later ones of its key until it succeeds, and only
those; another key's messages flow meanwhile."""

from __future__ import annotations

import threading

import httpx
import pytest

from hookbus_common.service import Runtime
from hookbus_dispatcher.config import Endpoint

from .test_fairness import Loop, Sink, client, dispatcher_config, request, until

pytestmark = pytest.mark.integration

__all__ = ["client"]  # fixture


async def test_a_failing_message_holds_back_only_its_own_key(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    n1_arrived = threading.Event()

    def answer(delivery: str) -> int:
        if delivery == "dlv_a_n1":
            n1_arrived.set()
        # k1's first message fails until the other key's last one has arrived: were
        # k2 held behind it, nothing would move and the test would time out.
        return 503 if delivery == "dlv_a_m0" and not n1_arrived.is_set() else 200

    with Sink(answer=answer) as sink:
        endpoints = {
            "ep": Endpoint(url=sink.url, tenant="a", allow_private=True, retry_schedule=[0.2] * 30)
        }
        settings = dispatcher_config(max_in_flight=8, endpoints=endpoints)
        k1 = [request("a", f"m{i}", endpoint="ep", ordering_key="k1") for i in range(3)]
        k2 = [request("a", f"n{i}", endpoint="ep", ordering_key="k2") for i in range(2)]
        loose = [request("a", f"x{i}", endpoint="ep") for i in range(3)]
        await rt.outbox.commit_and_publish([*k1, *k2, *loose])
        async with Loop(rt, client, settings, max_in_flight=8) as loop:
            loop.scheduler.idle_interval = 0.2

            def done() -> bool:
                return {d for d, s in sink.answers if s == 200} >= {
                    r.data.delivery_id for r in [*k1, *k2, *loose]
                }

            await until(done, timeout=120)
    answers = sink.answers
    first_ok = {d: answers.index((d, 200)) for d, s in answers if s == 200}
    # m0 failed at least once, and m1, m2 were not sent before it succeeded, then in order.
    assert ("dlv_a_m0", 503) in answers
    m_sent = [i for i, (d, _s) in enumerate(answers) if d in ("dlv_a_m1", "dlv_a_m2")]
    assert min(m_sent) > first_ok["dlv_a_m0"]
    assert first_ok["dlv_a_m0"] < first_ok["dlv_a_m1"] < first_ok["dlv_a_m2"]
    # k2 went in its own order while m0 was failing; each message once.
    assert first_ok["dlv_a_n0"] < first_ok["dlv_a_n1"] < first_ok["dlv_a_m0"]
    assert [d for d, _s in answers].count("dlv_a_m1") == 1
    assert [d for d, _s in answers].count("dlv_a_n0") == 1
    waiting = await rt.pool.fetchval("SELECT count(*) FROM ordering_waits")
    assert waiting == 0
