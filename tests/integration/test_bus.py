"""Publishing to the stream: every message of a batch acknowledged, refusals raised."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest

from hookbus_common.service import Runtime

pytestmark = pytest.mark.integration


async def test_a_batch_returns_once_the_stream_has_every_message(rt: Runtime) -> None:
    subject = f"{rt.bus.prefix}.test.batch"
    before = (await rt.bus.js.stream_info(rt.bus.stream)).state.messages
    await rt.bus.publish_many([(subject, f"batch-{i}", b"{}") for i in range(50)])
    # Returned: every message is stored already, not merely sent.
    assert (await rt.bus.js.stream_info(rt.bus.stream)).state.messages == before + 50
    last = await rt.bus.js.get_last_msg(rt.bus.stream, subject)
    assert last.headers is not None
    assert last.headers["Nats-Msg-Id"] == "batch-49"


async def test_batches_published_side_by_side_each_wait_for_their_own_acks(
    rt: Runtime,
) -> None:
    subject = f"{rt.bus.prefix}.test.side"
    await asyncio.gather(
        *(
            rt.bus.publish_many([(subject, f"side-{b}-{i}", b"{}") for i in range(20)])
            for b in range(5)
        )
    )
    info = await rt.bus.js.stream_info(rt.bus.stream, subjects_filter=subject)
    assert info.state.subjects == {subject: 100}
    # Republished ids are stored once (the stream dedupes on Nats-Msg-Id), and acked.
    await rt.bus.publish_many([(subject, f"side-0-{i}", b"{}") for i in range(20)])
    again = await rt.bus.js.stream_info(rt.bus.stream, subjects_filter=subject)
    assert again.state.subjects == {subject: 100}


async def test_a_message_no_stream_takes_fails_its_batch_at_once(rt: Runtime) -> None:
    ours = f"{rt.bus.prefix}.test.ok"
    nowhere = f"not-{rt.bus.prefix}.nowhere"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await rt.bus.publish_many([(ours, "ok-1", b"{}"), (nowhere, "lost-1", b"{}")])
    # Refused by the server, not given up on after the publish timeout.
    assert loop.time() - started < rt.bus.settings.publish_timeout
    # The bus publishes on afterwards.
    await rt.bus.publish_many([(ours, "ok-2", b"{}")])
