"""The dispatcher's endpoints and settings: what loads, what is refused (naming the key),
and that secrets are read from where they are referenced and never shown."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from hookbus_common.errors import ConfigError
from hookbus_dispatcher import config as dispatcher
from hookbus_router import config as router

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD = "whsec_" + "b2xkLXNlY3JldC1rZXktZm9yLXJvdGF0aW9u"
ENV = {"BILLING_WHSEC": SECRET, "BILLING_OLD": OLD}

BILLING = """
[endpoints.billing]
url = "https://billing.example.com/hooks"
description = "Billing's ledger"
tenant = "acme"
events = ["push", "release*"]
secrets = [{ env = "BILLING_WHSEC" }, { env = "BILLING_OLD" }]
headers = { x-team = "billing" }
timeout = 5
"""


def load(
    tmp_path: Path, text: str, env: dict[str, str] | None = None
) -> dispatcher.DispatcherConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return dispatcher.load(path, ENV if env is None else env)


def refused(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


def test_an_endpoint_loads_with_its_secrets_read_from_the_environment(tmp_path: Path) -> None:
    ep = load(tmp_path, BILLING).endpoints["billing"]
    assert ep.url == "https://billing.example.com/hooks"
    assert (ep.tenant, ep.events, ep.timeout) == ("acme", ["push", "release*"], 5.0)
    assert ep.headers == {"x-team": "billing"}
    assert [s.value for s in ep.secrets] == [SECRET, OLD]
    signer = ep.signer()
    assert signer is not None
    assert signer.scheme == "standard"
    assert len(signer.keys) == 2
    assert not ep.allow_private


def test_defaults() -> None:
    ep = dispatcher.Endpoint(url="https://x.example/")
    assert (ep.tenant, ep.events, ep.signing, ep.timeout) == ("default", ["*"], "standard", 15.0)
    assert ep.signer() is None  # no secret: sent unsigned
    assert dispatcher.DispatcherSettings().allow_networks == []


def test_secrets_never_show_in_reprs(tmp_path: Path) -> None:
    config = load(tmp_path, BILLING)
    text = repr(config) + str(config.endpoints["billing"].signer())
    assert SECRET not in text
    assert SECRET.removeprefix("whsec_") not in text
    assert "BILLING_WHSEC" in text


def test_a_secret_may_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "billing.key").write_text(SECRET + "\n")
    text = BILLING.replace(
        '{ env = "BILLING_WHSEC" }, { env = "BILLING_OLD" }', '{ file = "billing.key" }'
    )
    ep = load(tmp_path, text).endpoints["billing"]
    assert [s.value for s in ep.secrets] == [SECRET]


def test_the_endpoint_id_is_derived_from_the_name() -> None:
    assert dispatcher.endpoint_id("billing") == dispatcher.endpoint_id("billing")
    assert dispatcher.endpoint_id("billing").startswith("ep_")
    assert dispatcher.endpoint_id("billing") != dispatcher.endpoint_id("ops")


def test_plain_signing_takes_its_header_names(tmp_path: Path) -> None:
    text = BILLING + 'signing = "plain"\nsignature_header = "X-Sig"\ntimestamp_header = "X-Ts"\n'
    signer = (
        load(tmp_path, text, {"BILLING_WHSEC": "any text", "BILLING_OLD": "x"})
        .endpoints["billing"]
        .signer()
    )
    assert signer is not None
    assert (signer.scheme, signer.signature_header, signer.timestamp_header) == (
        "plain",
        "x-sig",
        "x-ts",
    )
    assert signer.keys == (b"any text", b"x")


@pytest.mark.parametrize(
    ("change", "env", "where", "problem"),
    [
        ({"url": '"ftp://x.example/"'}, ENV, "endpoints.billing.url", "absolute http"),
        ({"url": '"/relative"'}, ENV, "endpoints.billing.url", "absolute http"),
        ({"timeout": "0"}, ENV, "endpoints.billing.timeout", ">"),
        ({"events": "[]"}, ENV, "endpoints.billing.events", "length"),
        ({"signing": '"hmac"'}, ENV, "endpoints.billing.signing", "'hmac'"),
        ({"signature_header": '"x-sig"'}, ENV, "endpoints.billing.signature_header", "plain"),
        ({"colour": '"red"'}, ENV, "endpoints.billing", "colour"),
        ({}, {"BILLING_OLD": OLD}, "endpoints.billing.secrets[0]", "BILLING_WHSEC is not set"),
        ({}, {"BILLING_WHSEC": "not-base64!", "BILLING_OLD": OLD}, "endpoints.billing.secrets[0]", "whsec_"),
    ],
)  # fmt: skip
def test_a_bad_endpoint_is_refused_naming_the_key(
    tmp_path: Path, change: dict[str, str], env: dict[str, str], where: str, problem: str
) -> None:
    text = BILLING
    for key, value in change.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        text = "\n".join([*lines, f"{key} = {value}"]) + "\n"
    msg = refused(tmp_path, text, env)
    assert where in msg
    assert problem in msg
    assert "not-base64!" not in msg  # a bad secret is never echoed


def test_a_secret_given_two_ways_is_refused(tmp_path: Path) -> None:
    text = BILLING.replace('{ env = "BILLING_OLD" }', '{ env = "BILLING_OLD", value = "x" }')
    assert "endpoints.billing.secrets[1]: give exactly one" in refused(tmp_path, text)


def test_allow_networks_are_read_as_networks(tmp_path: Path) -> None:
    text = '[dispatcher]\nallow_networks = ["127.0.0.0/8", "10.1.2.3", "::1/128"]\n'
    nets = load(tmp_path, text).dispatcher.networks()
    assert nets == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("10.1.2.3/32"),
        ipaddress.ip_network("::1/128"),
    )


def test_a_bad_allowed_network_is_refused_naming_it(tmp_path: Path) -> None:
    msg = refused(tmp_path, '[dispatcher]\nallow_networks = ["127.0.0.0/8", "localhost"]\n')
    assert "dispatcher.allow_networks[1]" in msg
    assert "'localhost'" in msg


def test_allow_networks_from_the_environment(tmp_path: Path) -> None:
    config = load(tmp_path, "", {"HOOKBUS_DISPATCHER__ALLOW_NETWORKS": '["127.0.0.0/8"]'})
    assert config.dispatcher.networks() == (ipaddress.ip_network("127.0.0.0/8"),)


# ------------------------------------------------------------- the router's side


RULE = """
[[rules]]
name = "bill"
actions = [{ kind = "webhook", %s }]
"""


def router_load(tmp_path: Path, text: str) -> router.RouterConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return router.load(path, {})


def test_the_router_knows_endpoints_by_name_only_and_needs_none_of_their_secrets(
    tmp_path: Path,
) -> None:
    # No BILLING_WHSEC in the router's environment: it never reads the endpoint's table.
    config = router_load(tmp_path, BILLING + RULE % 'endpoint = "billing"')
    assert config.endpoint_names == ["billing"]
    (action,) = config.rules[0].actions
    assert isinstance(action, router.WebhookAction)
    assert (action.endpoint, action.url) == ("billing", None)
    assert SECRET not in repr(config)


def test_a_bad_endpoint_table_does_not_stop_the_router(tmp_path: Path) -> None:
    config = router_load(tmp_path, "[endpoints.x]\nurl = 3\n" + RULE % 'url = "https://a.example/"')
    assert config.endpoint_names == ["x"]


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ('endpoint = "payroll"', "no endpoint named 'payroll' is configured"),
        ('url = "https://a.example/", endpoint = "billing"', "exactly one of url and endpoint"),
        ('method = "PUT"', "exactly one of url and endpoint"),
    ],
)
def test_a_webhook_action_names_a_known_endpoint_or_a_url(
    tmp_path: Path, action: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        router_load(tmp_path, BILLING + RULE % action)
    msg = str(info.value)
    assert "rules[0].actions[0] (rule 'bill')" in msg
    assert problem in msg


def test_retry_schedules_globally_and_per_endpoint(tmp_path: Path) -> None:
    text = "[dispatcher]\nretry_schedule = [1, 60]\n" + BILLING + "retry_schedule = [0, 10, 10]\n"
    config = load(tmp_path, text)
    assert config.dispatcher.retry_schedule == [1.0, 60.0]
    assert config.dispatcher.attempts() == 3
    assert config.endpoints["billing"].retry_schedule == [0.0, 10.0, 10.0]


def test_a_negative_wait_is_refused_naming_the_key(tmp_path: Path) -> None:
    msg = refused(tmp_path, BILLING + "retry_schedule = [5, -1]\n")
    assert "endpoints.billing.retry_schedule[1]" in msg
