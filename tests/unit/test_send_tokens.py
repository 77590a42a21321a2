"""Send tokens bound to tenants: which tenants a token may send for, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hookbus_api.auth import require_tenant
from hookbus_api.problems import ApiError
from hookbus_api.tokens import ApiToken, BadToken, check_tenants


def _token(scope: str = "send", tenants: list[str] | None = None) -> ApiToken:
    return ApiToken(
        token_id="tok_1", name="shop", scope=scope,  # type: ignore[arg-type]
        tenants=tenants or [], created_at=datetime.now(UTC),
    )  # fmt: skip


def test_a_bound_token_sends_for_its_tenants_only() -> None:
    tok = _token(tenants=["acme", "beta"])
    assert tok.may_send_for("acme")
    assert tok.may_send_for("beta")
    assert not tok.may_send_for("gamma")
    assert not tok.may_send_for("ACME")


def test_an_unbound_token_sends_for_every_tenant() -> None:
    assert _token().may_send_for("anyone")


def test_a_message_for_another_tenant_is_forbidden_naming_it() -> None:
    require_tenant(_token(tenants=["acme"]), "acme")
    with pytest.raises(ApiError) as caught:
        require_tenant(_token(tenants=["acme", "beta"]), "gamma")
    assert caught.value.code == "forbidden"
    assert "'gamma'" in caught.value.detail
    assert "acme, beta" in caught.value.detail


def test_tenants_are_checked_and_kept_once_in_order() -> None:
    assert check_tenants("send", ["beta", "acme", "beta"]) == ["beta", "acme"]
    assert check_tenants("read", []) == []
    with pytest.raises(BadToken, match="tenant 'a/b'"):
        check_tenants("send", ["a/b"])
    with pytest.raises(BadToken, match="at most 100"):
        check_tenants("send", [f"t{i}" for i in range(101)])


@pytest.mark.parametrize("scope", ["read", "operate", "admin"])
def test_only_send_tokens_are_bound(scope: str) -> None:
    with pytest.raises(BadToken, match="only send tokens"):
        check_tenants(scope, ["acme"])
