"""The dispatcher's HTTP client on real loopback connections: the guarded connector
checks every address before connecting and connects to the checked address only; a
request is sent exactly as it was built (no cookies, no redirects, no proxy, no headers
of aiohttp's own), and aiohttp's errors come back named by kind."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from hookbus_dispatcher import httpclient
from hookbus_dispatcher.httpclient import Answer, Client, Headers
from hookbus_dispatcher.ssrf import DestinationRefused, Guard, GuardedConnector, guarded_client

pytestmark = pytest.mark.integration

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class Server:
    """HTTP/1.1 on 127.0.0.1: answers each request with ``answer`` (raw bytes), keeps
    every request's head and counts connections."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.heads: list[str] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                self.heads.append(head)
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(self.answer)
                await writer.drain()
                if b"connection: close" in self.answer.lower() or not self.answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Connections still open (kept alive, or mid-answer) are closed with the server.
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)


class Fixed(AbstractResolver):
    """Resolves every name to ``answers`` (no DNS)."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in self.answers
        ]

    async def close(self) -> None:
        pass


def _client(resolver: Fixed, **policy: Any) -> Client:
    guard = Guard(**policy)
    return Client(lambda: GuardedConnector(guard, resolver=resolver), 5.0)


async def _post(
    client: Client,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"{}",
    timeout: float | None = None,
) -> tuple[Answer, bytes]:
    """POST ``body``: the answer, its body read to the end (and closed)."""
    request = httpclient.request("POST", url, Headers(headers or {}), body, timeout)
    answer = await client.send(request)
    try:
        got = b""
        while chunk := await answer.read(1024):
            got += chunk
    finally:
        answer.close()
    return answer, got


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server(OK) as s:
        yield s


async def test_a_name_is_connected_to_at_its_checked_address(server: Server) -> None:
    resolver = Fixed("127.0.0.1")
    async with _client(resolver, allow_networks=LOOPBACK) as client:
        resp, body = await _post(client, f"http://hooks.example.test:{server.port}/in")
    assert resp.status == 200
    assert body == b"ok"
    # The name is what DNS (here: the test's resolver) turned into the checked address;
    # the request itself still names the host it was for.
    assert resolver.asked == ["hooks.example.test"]
    assert "host: hooks.example.test" in server.heads[0].lower()


async def test_one_refused_address_refuses_the_name_before_any_connection(
    server: Server,
) -> None:
    async with _client(Fixed("127.0.0.1", "10.0.0.7"), allow_networks=LOOPBACK) as client:
        with pytest.raises(DestinationRefused) as info:
            await _post(client, f"http://hooks.example.test:{server.port}/in")
    assert info.value.address == "10.0.0.7"
    assert server.connections == 0


async def test_an_address_written_in_the_url_is_checked_too(server: Server) -> None:
    async with guarded_client() as client:
        with pytest.raises(DestinationRefused) as info:
            await _post(client, f"http://127.0.0.1:{server.port}/in")
    assert info.value.reason == "loopback"
    async with guarded_client() as client:
        with pytest.raises(DestinationRefused):
            await _post(client, f"http://[::ffff:127.0.0.1]:{server.port}/in")
    assert server.connections == 0


async def test_a_checked_name_is_cached_and_still_checked_each_time(server: Server) -> None:
    resolver = Fixed("127.0.0.1")
    async with _client(resolver, allow_networks=LOOPBACK) as client:
        for _ in range(3):
            resp, _ = await _post(client, f"http://cached.test:{server.port}/")
            assert resp.status == 200
    # Resolved once (aiohttp's DNS cache holds the checked answer), one kept-alive connection.
    assert resolver.asked == ["cached.test"]
    assert server.connections == 1


async def test_a_name_not_configured_as_allowed_is_refused_as_loopback() -> None:
    async with guarded_client() as client:
        with pytest.raises(DestinationRefused) as info:
            await _post(client, "http://localhost:9/")
    assert info.value.reason == "loopback"


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return port


async def test_connection_refused_is_a_connect_error() -> None:
    port = _closed_port()
    async with guarded_client(allow_networks=LOOPBACK) as client:
        with pytest.raises(httpclient.ConnectError) as info:
            await _post(client, f"http://127.0.0.1:{port}/")
    assert type(info.value).__name__ == "ConnectError"  # the name an attempt records


async def test_a_non_canonical_address_cannot_be_sent() -> None:
    async with guarded_client(allow_networks=LOOPBACK) as client:
        with pytest.raises(httpclient.UnsupportedProtocol):
            await _post(client, "http://2130706433:9/")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", httpclient.RemoteProtocolError),  # closed without an answer
        (b"SMTP ready\r\n\r\n", httpclient.RemoteProtocolError),  # not HTTP
    ],
)
async def test_a_broken_answer_is_named_by_its_kind(answer: bytes, error: type[Exception]) -> None:
    async with Server(answer) as s, guarded_client(allow_networks=LOOPBACK) as client:
        with pytest.raises(error):
            await _post(client, f"http://127.0.0.1:{s.port}/")


async def test_an_answer_that_never_comes_is_a_read_timeout() -> None:
    gone = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; ends when the client goes
        writer.close()
        gone.set()

    held = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = held.sockets[0].getsockname()[1]
    try:
        async with guarded_client(allow_networks=LOOPBACK) as client:
            with pytest.raises(httpclient.ReadTimeout):
                await _post(client, f"http://127.0.0.1:{port}/", timeout=0.3)
            # The connection is dropped at the timeout, not kept for a late answer.
            await asyncio.wait_for(gone.wait(), 10)
    finally:
        held.close()


async def test_a_body_that_breaks_off_is_a_read_error() -> None:
    short = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\nonly this"
    async with Server(short) as s, guarded_client(allow_networks=LOOPBACK) as client:
        with pytest.raises(httpclient.ReadError):
            await _post(client, f"http://127.0.0.1:{s.port}/")


async def test_a_delivery_never_carries_a_cookie_an_endpoint_set_before() -> None:
    answer = b"HTTP/1.1 200 OK\r\nset-cookie: session=abc; Path=/\r\ncontent-length: 0\r\n\r\n"
    async with Server(answer) as s, guarded_client(allow_networks=LOOPBACK) as client:
        for _ in range(2):
            resp, _ = await _post(client, f"http://127.0.0.1:{s.port}/")
            assert resp.headers["set-cookie"] == "session=abc; Path=/"
    assert len(s.heads) == 2
    assert "cookie:" not in s.heads[1].lower()


async def test_a_redirect_is_handed_back_not_followed() -> None:
    answer = b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n"
    async with Server(answer) as s, guarded_client(allow_networks=LOOPBACK) as client:
        resp, _ = await _post(client, f"http://127.0.0.1:{s.port}/in")
    assert resp.status == 302
    assert resp.headers["location"] == "/elsewhere"
    assert len(s.heads) == 1


async def test_no_proxy_is_taken_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = f"http://127.0.0.1:{_closed_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with guarded_client(allow_networks=LOOPBACK) as client:
        resp, _ = await _post(client, f"http://127.0.0.1:{server.port}/direct")
    assert resp.status == 200
    assert server.heads[0].lower().startswith("post /direct http/1.1")


@pytest.mark.parametrize(("read", "connections"), [(False, 2), (True, 1)])
async def test_an_answer_left_unread_closes_its_connection(read: bool, connections: int) -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n" + b"x" * 200_000
    async with Server(big) as s, guarded_client(allow_networks=LOOPBACK) as client:
        for _ in range(2):
            if read:
                await _post(client, f"http://127.0.0.1:{s.port}/")
                continue
            request = httpclient.request("POST", f"http://127.0.0.1:{s.port}/", Headers(), b"{}")
            resp = await client.send(request)
            assert await resp.read(1024)
            resp.close()
    # Not reused with the rest of the first answer still on the wire; reused when read.
    assert s.connections == connections


async def test_an_answer_in_whole_keeps_its_connection_though_not_all_of_it_is_read() -> None:
    # Nothing of it is left on the wire, so the connection serves the next request.
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 10000\r\n\r\n" + b"x" * 10_000
    async with Server(answer) as s, guarded_client(allow_networks=LOOPBACK) as client:
        for _ in range(2):
            request = httpclient.request("POST", f"http://127.0.0.1:{s.port}/", Headers(), b"{}")
            resp = await client.send(request)
            start = None
            while start is None:  # until the rest of the body is in
                await asyncio.sleep(0.01)
                start = resp.complete(4096)
            resp.close()
            assert start == b"x" * 4096
    assert s.connections == 1


async def test_the_request_is_sent_as_it_was_built(server: Server) -> None:
    async with guarded_client(allow_networks=LOOPBACK) as client:
        await _post(
            client,
            f"http://127.0.0.1:{server.port}/p?q=1",
            {"user-agent": "hookbus-dispatcher/test", "X-One": "1"},
            b'{"a": 1}',
        )
    head = server.heads[0].lower()
    assert head.startswith("post /p?q=1 http/1.1")
    assert "user-agent: hookbus-dispatcher/test" in head
    assert "x-one: 1" in head
    assert "content-length: 8" in head
    assert head.count("user-agent:") == 1
    # Nothing of aiohttp's own.
    for name in ("accept:", "accept-encoding:", "content-type:", "cookie:"):
        assert name not in head


@pytest.mark.parametrize("header", [None, "Bearer from-the-endpoint"])
async def test_credentials_in_the_url_are_sent_as_basic_auth(
    server: Server, header: str | None
) -> None:
    # In place of an Authorization header of the endpoint's own, if it has one (aiohttp
    # alone refuses a URL with credentials beside one).
    headers = {"Authorization": header} if header else {}
    url = f"http://us%40r:pa55word@127.0.0.1:{server.port}/p"
    async with guarded_client(allow_networks=LOOPBACK) as client:
        resp, _ = await _post(client, url, headers)
    head = server.heads[0].lower()
    assert resp.status == 200
    assert head.startswith("post /p http/1.1")
    expected = "basic " + base64.b64encode(b"us@r:pa55word").decode().lower()
    assert f"authorization: {expected}" in head
    assert head.count("authorization:") == 1
    assert "pa55word" not in head


async def test_the_answers_charset_is_read_from_its_content_type() -> None:
    answer = (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=latin-1\r\n"
        b"content-length: 1\r\n\r\n\xe9"
    )
    async with Server(answer) as s, guarded_client(allow_networks=LOOPBACK) as client:
        resp, body = await _post(client, f"http://127.0.0.1:{s.port}/")
    assert (resp.status, resp.charset, body) == (400, "latin-1", b"\xe9")


async def test_a_sent_request_leaves_no_url_in_the_logs(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    # A delivery's URL can be its secret (a Slack or Discord webhook URL is one).
    caplog.set_level(logging.DEBUG)
    async with guarded_client(allow_networks=LOOPBACK) as client:
        resp, _ = await _post(client, f"http://127.0.0.1:{server.port}/services/T0/s3cr3t-t0ken")
    assert resp.status == 200
    assert "s3cr3t-t0ken" in server.heads[0]
    assert "s3cr3t-t0ken" not in caplog.text


def test_aiohttp_is_what_sends() -> None:
    assert isinstance(guarded_client(), Client)
    assert issubclass(GuardedConnector, aiohttp.TCPConnector)
