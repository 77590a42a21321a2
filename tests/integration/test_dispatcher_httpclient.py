"""The dispatcher's HTTP client on real loopback connections: the guarded connector
checks every address before connecting and connects to the checked address only, and the
aiohttp transport answers with httpx's responses and httpx's errors."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from hookbus_dispatcher.httpclient import AiohttpTransport, send
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
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


def _client(resolver: Fixed, **policy: Any) -> httpx.AsyncClient:
    guard = Guard(**policy)
    return httpx.AsyncClient(
        transport=AiohttpTransport(lambda: GuardedConnector(guard, resolver=resolver)),
        timeout=5.0,
    )


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server(OK) as s:
        yield s


async def test_a_name_is_connected_to_at_its_checked_address(server: Server) -> None:
    resolver = Fixed("127.0.0.1")
    async with _client(resolver, allow_networks=LOOPBACK) as client:
        resp = await client.post(f"http://hooks.example.test:{server.port}/in", content=b"{}")
    assert resp.status_code == 200
    assert resp.text == "ok"
    # The name is what DNS (here: the test's resolver) turned into the checked address;
    # the request itself still names the host it was for.
    assert resolver.asked == ["hooks.example.test"]
    assert "host: hooks.example.test" in server.heads[0].lower()


async def test_one_refused_address_refuses_the_name_before_any_connection(
    server: Server,
) -> None:
    async with _client(Fixed("127.0.0.1", "10.0.0.7"), allow_networks=LOOPBACK) as client:
        with pytest.raises(DestinationRefused) as info:
            await client.post(f"http://hooks.example.test:{server.port}/in", content=b"{}")
    assert info.value.address == "10.0.0.7"
    assert server.connections == 0


async def test_an_address_written_in_the_url_is_checked_too(server: Server) -> None:
    async with guarded_client() as client:
        with pytest.raises(DestinationRefused) as info:
            await client.post(f"http://127.0.0.1:{server.port}/in", content=b"{}")
    assert info.value.reason == "loopback"
    async with guarded_client() as client:
        with pytest.raises(DestinationRefused):
            await client.post(f"http://[::ffff:127.0.0.1]:{server.port}/in", content=b"{}")
    assert server.connections == 0


async def test_a_checked_name_is_cached_and_still_checked_each_time(server: Server) -> None:
    resolver = Fixed("127.0.0.1")
    async with _client(resolver, allow_networks=LOOPBACK) as client:
        for _ in range(3):
            resp = await client.post(f"http://cached.test:{server.port}/", content=b"{}")
            assert resp.status_code == 200
    # Resolved once (aiohttp's DNS cache holds the checked answer), one kept-alive connection.
    assert resolver.asked == ["cached.test"]
    assert server.connections == 1


async def test_a_name_not_configured_as_allowed_is_refused_as_loopback() -> None:
    async with guarded_client() as client:
        with pytest.raises(DestinationRefused) as info:
            await client.get("http://localhost:9/")
    assert info.value.reason == "loopback"


async def test_connection_refused_is_a_connect_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    async with guarded_client(allow_networks=LOOPBACK) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_a_non_canonical_address_cannot_be_sent() -> None:
    async with guarded_client(allow_networks=LOOPBACK) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("http://2130706433:9/")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", httpx.RemoteProtocolError),  # closed without an answer
        (b"SMTP ready\r\n\r\n", httpx.RemoteProtocolError),  # not HTTP
    ],
)
async def test_a_broken_answer_is_an_httpx_error(answer: bytes, error: type[Exception]) -> None:
    async with Server(answer) as s, guarded_client(allow_networks=LOOPBACK) as client:
        with pytest.raises(error):
            await client.post(f"http://127.0.0.1:{s.port}/", content=b"{}")


async def test_a_delivery_never_carries_a_cookie_an_endpoint_set_before() -> None:
    answer = b"HTTP/1.1 200 OK\r\nset-cookie: session=abc; Path=/\r\ncontent-length: 0\r\n\r\n"
    async with Server(answer) as s, guarded_client(allow_networks=LOOPBACK) as client:
        for _ in range(2):
            req = client.build_request("POST", f"http://127.0.0.1:{s.port}/", content=b"{}")
            resp = await send(client, req)
            await resp.aclose()
            assert resp.headers["set-cookie"] == "session=abc; Path=/"
    assert len(s.heads) == 2
    assert "cookie:" not in s.heads[1].lower()


async def test_an_answer_left_unread_closes_its_connection() -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n" + b"x" * 200_000
    async with Server(big) as s, guarded_client(allow_networks=LOOPBACK) as client:
        for _ in range(2):
            req = client.build_request("POST", f"http://127.0.0.1:{s.port}/", content=b"{}")
            resp = await client.send(req, stream=True)
            async for _chunk in resp.aiter_bytes():
                break
            await resp.aclose()
    # Not reused with the rest of the first answer still on the wire.
    assert s.connections == 2


async def test_aiohttp_sends_the_request_as_httpx_built_it(server: Server) -> None:
    async with guarded_client(allow_networks=LOOPBACK) as client:
        await client.post(
            f"http://127.0.0.1:{server.port}/p?q=1",
            content=b'{"a": 1}',
            headers={"user-agent": "hookbus-dispatcher/test", "x-one": "1"},
        )
    head = server.heads[0].lower()
    assert head.startswith("post /p?q=1 http/1.1")
    assert "user-agent: hookbus-dispatcher/test" in head
    assert "x-one: 1" in head
    assert "content-length: 8" in head
    assert head.count("user-agent:") == 1


@pytest.mark.parametrize("header", [None, "Bearer from-the-endpoint"])
async def test_credentials_in_the_url_are_sent_as_basic_auth_as_httpx_sends_them(
    server: Server, header: str | None
) -> None:
    # As httpx sends them, with or without an Authorization header of the endpoint's own
    # (aiohttp alone refuses a URL with credentials beside one).
    headers = {"authorization": header} if header else {}
    async with guarded_client(allow_networks=LOOPBACK) as client:
        request = client.build_request(
            "POST", f"http://us%40r:pa55word@127.0.0.1:{server.port}/p", content=b"{}",
            headers=headers,
        )  # fmt: skip
        resp = await send(client, request)
        await resp.aread()
        await resp.aclose()
    head = server.heads[0].lower()
    assert resp.status_code == 200
    assert head.startswith("post /p http/1.1")
    expected = httpx.BasicAuth("us@r", "pa55word")._auth_header.lower()
    assert f"authorization: {expected}" in head
    assert head.count("authorization:") == 1
    assert "pa55word" not in head


def test_aiohttp_is_what_sends() -> None:
    assert isinstance(guarded_client()._transport, AiohttpTransport)
    assert issubclass(GuardedConnector, aiohttp.TCPConnector)
