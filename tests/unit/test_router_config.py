"""The router's config: which sources a rule may name."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookbus_common.errors import ConfigError
from hookbus_router import config as router

SHELL = 'actions = [{ kind = "shell", command = ["true"] }]'
GH_SOURCE = '[sources.gh]\nkind = "github"\nsecrets = [{ value = "gh-inline-secret" }]\n'


def load(tmp_path: Path, text: str) -> router.RouterConfig:
    path = tmp_path / "hookbus.toml"
    path.write_text(text)
    return router.load(path, {})


def rule(name: str, source: str) -> str:
    return f'[[rules]]\nname = "{name}"\nsource = "{source}"\n{SHELL}\n'


def test_a_rule_may_name_the_image_push_source_as_the_docs_show(tmp_path):
    config = load(tmp_path, rule("redeploy", "image-push"))

    assert [r.source for r in config.rules] == ["image-push"]


def test_a_rule_may_name_a_partner_by_its_id_which_the_file_does_not_list(tmp_path):
    config = load(tmp_path, GH_SOURCE + rule("orders", "ptn_0193b2c4d5e6f7a8"))

    assert [r.source for r in config.rules] == ["ptn_0193b2c4d5e6f7a8"]


def test_configured_partner_and_image_push_sources_may_be_used_together(tmp_path):
    config = load(
        tmp_path,
        GH_SOURCE + rule("a", "gh") + rule("b", "image-push") + rule("c", "ptn_01"),
    )

    assert [r.source for r in config.rules] == ["gh", "image-push", "ptn_01"]


@pytest.mark.parametrize("source", ["gl", "image_push", "imagepush", "partner_01", "PTN_01"])
def test_an_unknown_source_is_still_refused_with_the_key_and_the_name(tmp_path, source):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, GH_SOURCE + rule("ok", "gh") + rule("bad", source))

    msg = str(info.value)
    assert "rules[1].source" in msg
    assert repr(source) in msg
    assert str(tmp_path / "hookbus.toml") in msg


@pytest.mark.parametrize(
    ("name", "known"),
    [
        ("gh", True),
        ("image-push", True),
        ("ptn_01", True),
        ("gl", False),
        ("image-push-2", False),
        ("xptn_01", False),
    ],
)
def test_known_source(name, known):
    assert router.known_source(name, ["gh"]) is known
