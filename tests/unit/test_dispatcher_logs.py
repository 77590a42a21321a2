"""The dispatcher never logs a delivery's URL (it can be the secret: a Slack or Discord
webhook URL is one)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from hookbus_dispatcher.httpclient import quiet_request_logs


@pytest.fixture
def httpx_level() -> Iterator[None]:
    logger = logging.getLogger("httpx")
    before = logger.level
    yield
    logger.setLevel(before)


async def test_a_sent_request_leaves_no_url_in_the_logs(
    caplog: pytest.LogCaptureFixture, httpx_level: None
) -> None:
    caplog.set_level(logging.DEBUG)
    url = "https://hooks.slack.test/services/T000/B000/s3cr3t-t0ken"
    transport = httpx.MockTransport(lambda _r: httpx.Response(200))
    async with httpx.AsyncClient(transport=transport) as client:
        await client.post(url, content=b"{}")
        assert "s3cr3t-t0ken" in caplog.text  # what httpx does unless told otherwise
        caplog.clear()
        caplog.set_level(logging.INFO)
        quiet_request_logs()
        await client.post(url, content=b"{}")
    assert "s3cr3t-t0ken" not in caplog.text
