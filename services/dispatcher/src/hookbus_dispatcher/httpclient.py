"""The dispatcher's HTTP sending: a request value of its own, sent by an aiohttp session.

A :class:`Request` is what an attempt sends (method, URL, headers, body, timeout), built
and signed once; a :class:`Client` sends it over one aiohttp session and hands back the
answer's status and headers, its body left to read as far as the caller wants. Nothing
else stands between the two: with many requests in flight, one dispatcher process is
CPU-bound on the work each request costs, and a client library's own request and
response objects cost as much as the connection itself.

What is sent is exactly the request: no cookies kept (one endpoint's cookie must never
reach another), no proxy read from the environment (a proxy is what the SSRF guard would
check, not the destination), no redirect followed, no header added (a request carries
the ones it was built with, ``Host`` and ``Content-Length``). aiohttp's errors become
this module's, named by kind (``ConnectError``, ``ReadTimeout``, …): an attempt records
that name and message.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import aiohttp
import msgspec
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

# ------------------------------------------------------------------------- errors


class SendError(Exception):
    """A request that got no answer; the subclass names the kind (what an attempt records)."""


class UnsupportedProtocol(SendError):
    """A URL no attempt can send (an address written in a non-canonical form)."""


class TimeoutException(SendError):
    """No answer in time."""


class ConnectTimeout(TimeoutException):
    """No connection in time."""


class ReadTimeout(TimeoutException):
    """Connected, but the answer did not come in time."""


class NetworkError(SendError):
    """The connection failed (reset, and the like)."""


class ConnectError(NetworkError):
    """No connection: refused, unreachable, a name that does not resolve, TLS refused."""


class ReadError(NetworkError):
    """The answer's body broke off."""


class RemoteProtocolError(SendError):
    """The other end broke HTTP: closed without an answer, or answered something else."""


def _translated(exc: aiohttp.ClientError) -> SendError:
    """aiohttp's error as this module's (anything not an ``aiohttp.ClientError``, a
    refusal included, passes as it is)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimeout(str(exc) or "connect timed out")
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return ReadTimeout(str(exc) or "read timed out")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return TimeoutException(str(exc) or "timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(str(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return RemoteProtocolError(str(exc) or "the server closed the connection without an answer")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ReadError(str(exc))
    if isinstance(exc, aiohttp.ClientResponseError):  # an answer that is not HTTP
        return RemoteProtocolError(exc.message or str(exc))
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return UnsupportedProtocol(f"cannot send to this URL: {exc}")
    return NetworkError(f"{type(exc).__name__}: {exc}")  # connection reset, and the like


# ------------------------------------------------------------------------ requests


class Address(msgspec.Struct, frozen=True):
    """A URL as it is sent: without credentials, which go in ``authorization``
    (``Basic``, as a URL's ``user:password@`` is sent by browsers and curl)."""

    url: yarl.URL
    authorization: str | None


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_TAB: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""What an HTTP header's name may be (RFC 9110 §5.1)."""


@functools.lru_cache(maxsize=4096)
def address(text: str) -> Address:
    """``text`` parsed and checked as a URL to send to; ``ValueError`` saying why it cannot
    be one. Deliveries to an endpoint use the same few URLs again and again: each is
    parsed once."""
    bad = _CONTROL.search(text)
    if bad is not None:
        raise ValueError(f"a non-printable character ({bad[0]!r}) in the URL")
    url = yarl.URL(text)  # ValueError for a bad port or a broken IPv6 address
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ValueError("not an absolute http(s) URL")
    if any(c.isspace() for c in url.raw_host):
        raise ValueError("a space in the URL's host")
    port = url.explicit_port
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    authorization = None
    if url.raw_user is not None or url.raw_password is not None:
        pair = f"{url.user or ''}:{url.password or ''}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        url = url.with_user(None)
    return Address(url.with_fragment(None), authorization)


def _check_header(name: str, value: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header name {name!r} is not a valid HTTP header name")
    if not value.isascii():
        raise ValueError(f"header {name!r}: its value is not ASCII")
    bad = _CONTROL_BUT_TAB.search(value)
    if bad is not None:
        raise ValueError(f"header {name!r}: a non-printable character ({bad[0]!r}) in its value")


Headers = CIMultiDict
"""A request's headers being built: names case-insensitive, and ``update`` replaces a name
set before (a configured ``User-Agent`` replaces ours rather than adding a second one)."""


class Request(msgspec.Struct, frozen=True):
    """One HTTP request, as an attempt sends it.

    ``headers`` hold every header sent but ``Host`` and ``Content-Length`` (names
    case-insensitive); ``timeout`` bounds connecting and each read, and the whole
    exchange up to the answer's status and headers (``None``: the sending client's)."""

    method: str
    url: str
    headers: CIMultiDictProxy[str]
    body: bytes
    timeout: float | None = None


def request(
    method: str, url: str, headers: Headers[str], body: bytes, timeout: float | None = None
) -> Request:
    """A request to send; ``ValueError`` when it never can be (the URL is not an absolute
    http(s) one, a header cannot be sent as it is)."""
    found = address(url)
    if found.authorization is not None:
        headers["authorization"] = found.authorization
    for name, value in headers.items():
        _check_header(name, value)
    return Request(method.upper(), url, CIMultiDictProxy(headers), body, timeout)


# ------------------------------------------------------------------------- answers


class Answer(Protocol):
    """What a request got back: status and headers in, the body still to read."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def charset(self) -> str | None: ...

    def complete(self, n: int) -> bytes | None:
        """The body's first ``n`` bytes when all of it is in already (``None``: read it)."""
        ...

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes more of the body (``b""`` at its end); ``ReadError``,
        ``ReadTimeout`` when it breaks off."""
        ...

    def close(self) -> None:
        """Done with it: a connection whose answer was not read to its end is closed."""
        ...


class Sender(Protocol):
    """What sends an attempt's request (a :class:`Client`, or a test's stand-in)."""

    @property
    def timeout(self) -> float: ...

    async def send(self, request: Request) -> Answer: ...


class _Answer:
    __slots__ = ("_response", "charset", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self.charset = response.charset

    def complete(self, n: int) -> bytes | None:
        content = self._response.content
        return content.read_nowait(n) if content.is_eof() else None

    async def read(self, n: int) -> bytes:
        try:
            return await self._response.content.read(n)
        except aiohttp.ClientError as exc:
            raise _translated(exc) from exc

    def close(self) -> None:
        if self._response.content.is_eof():
            # All of it has arrived, read or not: nothing of it is left on the wire, and
            # the connection is kept for the next request.
            self._response.release()
        else:
            self._response.close()


# ------------------------------------------------------------------------- clients


class Client:
    """Sends requests over one aiohttp session, made (with its connector, from
    ``connector``) at the first request: aiohttp wants a running event loop for both.
    ``timeout`` is a request's when it gives none."""

    def __init__(self, connector: Callable[[], aiohttp.BaseConnector], timeout: float) -> None:
        self._connector = connector
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self.timeout = timeout

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=self._connector(),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=False,
                # A request's headers are sent as they are; aiohttp adds none of its own.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def _timeout(self, seconds: float | None) -> aiohttp.ClientTimeout:
        seconds = self.timeout if seconds is None else seconds
        found = self._timeouts.get(seconds)
        if found is None:
            found = aiohttp.ClientTimeout(
                total=None, connect=seconds, sock_connect=seconds, sock_read=seconds
            )
            self._timeouts[seconds] = found
        return found

    async def send(self, request: Request) -> Answer:
        """Send ``request``: its answer's status and headers, the body left to read
        (close the answer when done). Redirects are never followed."""
        session = self._open()
        where = address(request.url)
        try:
            response = await session.request(
                request.method,
                where.url,
                headers=request.headers,
                data=request.body or None,
                allow_redirects=False,
                timeout=self._timeout(request.timeout),
            )
        except aiohttp.ClientError as exc:
            raise _translated(exc) from exc
        return _Answer(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
