"""The operator API's config: its own section, and what it shows of endpoints and rules
(never a secret), read leniently so another service's mistake never stops it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookbus_api import config, redact, tokens
from hookbus_api.openapi import document
from hookbus_api.routes import OPS
from hookbus_common.errors import ConfigError


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config.ApiConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return config.load(path, env or {})


def test_defaults_listen_on_loopback_on_their_own_port(tmp_path: Path) -> None:
    api = _load(tmp_path, "").api
    assert (api.host, api.port) == ("127.0.0.1", 9180)


def test_mistakes_in_the_api_section_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"api: .*`prot`"):
        _load(tmp_path, "[api]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"api\.port"):
        _load(tmp_path, "[api]\nport = 70000\n")
    with pytest.raises(ConfigError, match=r"api\.host"):
        _load(tmp_path, '[api]\nhost = "a b"\n')
    assert _load(tmp_path, "", {"HOOKBUS_API__PORT": "9999"}).api.port == 9999


def test_endpoints_are_shown_without_secrets(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
[endpoints.billing]
url = "https://u:pw@billing.example.com/in?sig=abc&x=1"
tenant = "acme"
events = ["invoice.*"]
signing = "plain"
secrets = [{ env = "BILLING_SECRET" }]
headers = { Authorization = "Bearer xyz", "X-Team" = "ops" }
""",
    )
    (ep,) = cfg.endpoint_views
    assert ep.url == "https://***@billing.example.com/in?sig=***&x=***"
    assert (ep.tenant, ep.events, ep.signing, ep.signed) == ("acme", ["invoice.*"], "plain", True)
    assert ep.header_names == ["Authorization", "X-Team"]
    assert "xyz" not in repr(cfg)
    assert "pw" not in ep.url


def test_rules_come_from_the_file_and_the_rules_file(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(
        '[[rules]]\nname = "extra"\nactions = [{ kind = "ssh", host = "web1", command = ["x"] }]\n'
    )
    cfg = _load(
        tmp_path,
        """
[router]
rules_file = "rules.toml"

[[rules]]
name = "deploy"
branch = "main"
enabled = false
actions = [
  { kind = "shell", command = ["./deploy.sh", "--token", "t0p"], env = { K = "v" } },
  { kind = "webhook", url = "https://x.example.com/?key=k3y" },
  { kind = "webhook", endpoint = "billing" },
]
""",
    )
    deploy, extra = cfg.rule_views
    assert (deploy.name, deploy.branch, deploy.enabled) == ("deploy", "main", False)
    assert [(a.kind, a.target) for a in deploy.actions] == [
        ("shell", "./deploy.sh"),
        ("webhook", "https://x.example.com/?key=***"),
        ("webhook", "endpoint billing"),
    ]
    assert [(a.kind, a.target) for a in extra.actions] == [("ssh", "host web1")]
    assert "t0p" not in repr(cfg)
    assert "k3y" not in repr(cfg)


def test_another_services_broken_tables_do_not_stop_the_api(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
[router]
rules_file = "missing.toml"

[endpoints.odd]
url = 42
events = "push"

[[rules]]
actions = "nope"
""",
    )
    (ep,) = cfg.endpoint_views
    assert (ep.name, ep.url, ep.events) == ("odd", "", ["*"])
    (rule,) = cfg.rule_views
    assert (rule.name, rule.actions) == ("?", [])


@pytest.mark.parametrize(
    ("have", "need", "ok"),
    [
        ("read", "read", True),
        ("read", "operate", False),
        ("operate", "read", True),
        ("operate", "operate", True),
        ("operate", "admin", False),
        ("admin", "operate", True),
        ("nonsense", "read", False),
    ],
)
def test_scopes_include_the_ones_before_them(have: str, need: tokens.Scope, ok: bool) -> None:
    assert tokens.allows(have, need) is ok


def test_redaction() -> None:
    data = {
        "headers": {"Authorization": "Bearer a", "X-Hub-Signature-256": "s", "X-Ok": "1"},
        "spec": {"env": {"DEPLOY_TOKEN": "t", "REGION": "eu"}},
        "url": "https://u:p@h.example.com/x?token=q",
        "payload": {"headers": {"authorization": "the sender's own field"}},
        "webhook": {"headers": {"cookie": "c"}},
    }
    shown = redact.data(data)
    assert shown["headers"] == {
        "Authorization": "[redacted]",
        "X-Hub-Signature-256": "[redacted]",
        "X-Ok": "1",
    }
    assert shown["spec"]["env"] == {"DEPLOY_TOKEN": "[redacted]", "REGION": "eu"}
    assert shown["url"] == "https://***@h.example.com/x?token=***"
    assert shown["payload"] == data["payload"]
    assert shown["webhook"]["headers"] == {"cookie": "[redacted]"}


def test_the_openapi_document_covers_the_route_table() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    assert {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops} == {
        (op.method, op.path) for op in OPS
    }
    for op in OPS:
        described = doc["paths"][op.path][op.method.lower()]
        assert described["security"] == ([] if op.scope is None else [{"bearer": []}])
        if op.scope is not None:
            assert described["x-hookbus-scope"] == op.scope
