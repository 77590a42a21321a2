"""The dispatcher's HTTP transport: httpx's request and response API, sent by aiohttp.

httpx stays the interface (requests are built, signed and read as ``httpx`` objects, and
its errors are what an attempt records), but the connections are aiohttp's: with many
requests in flight, httpcore's connection pool spends milliseconds of CPU per request
where aiohttp spends a tenth of one, and one dispatcher process is CPU-bound on exactly
that. The transport maps aiohttp's errors onto httpx's, so an attempt's recorded error
names the same kinds as before (``ConnectError``, ``ReadTimeout``, …).
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Final

import aiohttp
import httpx
import yarl

READ_CHUNK: Final = 16 * 1024


def quiet_request_logs() -> None:
    """Keep httpx from logging every request at INFO: the line names the request's URL,
    and a delivery's URL can be its secret (a Slack or Discord webhook URL is one). It is
    also a log line per delivery that nobody needs: the attempt is in the event log."""
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


@contextlib.contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    """aiohttp's errors as httpx's (anything else, a refusal included, passes as it is)."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except aiohttp.SocketTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except aiohttp.ServerTimeoutError as exc:
        raise httpx.TimeoutException(str(exc) or "timed out", request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(
            str(exc) or "the server closed the connection without an answer", request=request
        ) from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.ReadError(str(exc), request=request) from exc
    except aiohttp.ClientResponseError as exc:  # an answer that is not HTTP
        raise httpx.RemoteProtocolError(exc.message or str(exc), request=request) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise httpx.UnsupportedProtocol(f"cannot send to this URL: {exc}", request=request) from exc
    except aiohttp.ClientError as exc:  # connection reset, and the like
        raise httpx.NetworkError(f"{type(exc).__name__}: {exc}", request=request) from exc


async def send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send ``request`` with ``client``'s transport, its answer streamed (read its body,
    then close it), redirects never followed.

    Without the client's own layer (its cookie jar, auth, redirect handling, request
    log): a delivery never carries a cookie an endpoint set on an earlier one, and that
    layer cost about as much CPU per request as the transport itself.
    """
    transport = client._transport_for_url(request.url)
    response = await transport.handle_async_request(request)
    response.request = request
    return response


def _credentials_as_header(request: httpx.Request) -> tuple[httpx.URL, httpx.Headers]:
    """Credentials in the URL (``https://user:pass@host/``) sent as httpx sends them:
    ``Authorization: Basic``, in place of any Authorization header the request has, and
    never in the URL given to aiohttp (which refuses a URL with credentials beside an
    Authorization header)."""
    url = request.url
    if not url.userinfo:
        return url, request.headers
    token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode("ascii")
    headers = request.headers.copy()
    headers["Authorization"] = f"Basic {token}"
    return url.copy_with(userinfo=b""), headers


class _Body(httpx.AsyncByteStream):
    """An aiohttp answer's body as httpx reads it; closing it before the end closes the
    connection (aiohttp reuses only a connection whose answer was read to its end)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_chunked(READ_CHUNK):
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests over one aiohttp session, made (with its connector, from
    ``connector``) at the first request: aiohttp wants a running event loop for both.

    The session keeps no cookies (one endpoint's cookie must never reach another), reads
    no proxy from the environment, follows no redirect and leaves the body's encoding to
    httpx, as httpx's own transport does.
    """

    def __init__(self, connector: Callable[[], aiohttp.BaseConnector]) -> None:
        self._connector = connector
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=self._connector(),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=False,
                # httpx's headers are sent as they are; aiohttp adds none of its own.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        given = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=given.get("pool"),
            sock_connect=given.get("connect"),
            sock_read=given.get("read"),
        )
        body = await request.aread()
        url, headers = _credentials_as_header(request)
        with _mapped(request):
            response = await session.request(
                request.method,
                yarl.URL(str(url), encoded=True),
                headers=headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
