"""A URL is checked the way sending checks it: what the config, or `hookbus endpoints add`,
accepts is a URL a request can be sent to, and what it refuses can never be sent."""

from __future__ import annotations

import pytest

from hookbus_dispatcher import httpclient
from hookbus_dispatcher.config import Endpoint
from hookbus_dispatcher.endpointstore import BadEndpoint, check_url

UNSENDABLE = [
    "not a url",
    "ftp://hooks.test/in",
    "http:///no-host",
    "http://[::1/",
    "http://hooks.test:99999/in",
    "http://hooks.test:0/in",
    "http://hooks.test/\nin",
    "http://hooks .test/in",
]


@pytest.mark.parametrize("url", UNSENDABLE)
def test_a_url_that_cannot_be_sent_is_refused_everywhere(url: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)url|port|ipv6"):
        httpclient.address(url)
    problems = dict(Endpoint(url=url, tenant="acme").problems())
    assert problems["url"] == "must be an absolute http:// or https:// URL"
    with pytest.raises(BadEndpoint, match="must be an absolute"):
        check_url(url)


@pytest.mark.parametrize(
    "url", ["https://hooks.test/in?a=1", "http://127.0.0.1:8080/", "http://[::1]:9/x"]
)
def test_a_sendable_url_is_accepted(url: str) -> None:
    assert "url" not in dict(Endpoint(url=url, tenant="acme").problems())
    assert check_url(url) == url


def test_credentials_are_sent_as_basic_auth_and_never_in_the_url() -> None:
    found = httpclient.address("https://us%40r:pa55@hooks.test/in#part")
    assert found.authorization == "Basic dXNAcjpwYTU1"  # us@r:pa55
    assert str(found.url) == "https://hooks.test/in"
    # A run-time endpoint may not hold them at all (they would sit in the log).
    with pytest.raises(BadEndpoint, match="user name or password"):
        check_url("https://us%40r:pa55@hooks.test/in")
