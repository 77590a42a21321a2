"""Rules as configured: glob lists, ``when`` conditions and templates loaded from TOML, the
routing record's decisions and version, actions left out when a template fails, and the
reload of the rules (without a bus: the consume loop's reload is an integration test)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from hookbus_common import events as ev
from hookbus_common.errors import ConfigError
from hookbus_router import config as router
from hookbus_router.reload import LiveRules, watched_files
from hookbus_router.routing import make_handler, route, route_replay
from hookbus_router.rules import RuleSet, evaluate

SOURCES = '[sources.github]\nkind = "github"\nsecrets = [{ value = "s" }]\n'
PAYLOAD = {
    "ref": "refs/heads/main",
    "after": "c0ffee1234567890",
    "commits": [{"message": "fix"}, {"message": "ship [deploy]"}],
    "sender": {"login": "alice"},
}


def load(tmp_path: Path, text: str, name: str = "hookbus.toml") -> router.RouterConfig:
    path = tmp_path / name
    path.write_text(SOURCES + text)
    return router.load(path, {})


def hook(payload: object = PAYLOAD, **facts: str | None) -> ev.Event[ev.WebhookReceived]:
    fields: dict[str, object] = {"repository": "acme/app", "branch": "main", "commit": "c0ffee12"}
    fields.update(facts)
    data = ev.WebhookReceived(
        source="github",
        kind="github",
        event_type="push",
        payload=msgspec.Raw(msgspec.json.encode(payload)),
        **fields,  # type: ignore[arg-type]
    )
    return ev.make_event(data, source="/hookbus/receiver/github", id="evt_hook", tenant="acme")


DEPLOY = """
[[rules]]
name = "deploy-prod"
source = "github"
event = "push"
repository = ["acme/app", "acme/api"]
when = { all = [
  { path = "payload.ref", equals = "refs/heads/main" },
  { path = "payload.commits[*].message", contains = "[deploy]" },
  { not = { path = "payload.sender.login", glob = "*[bot]" } },
] }
actions = [
  { kind = "shell", command = [
      "./deploy.sh", "{{ payload.ref }}", "{{ event.commit[:7] }}",
    ], env = { WHO = "{{ payload.sender.login }}" } },
]
"""


# ----------------------------------------------------------------------- loading


def test_the_example_of_the_docs_loads_and_routes(tmp_path):
    config = load(tmp_path, DEPLOY)

    routed, job = route(config.rules, hook())

    assert isinstance(routed.data, ev.WebhookRouted)
    assert routed.data.matched == ["deploy-prod"]
    assert isinstance(job.data, ev.JobRequestedV2)
    assert job.data.spec.command == ["./deploy.sh", "refs/heads/main", "c0ffee1"]
    assert job.data.spec.env == {"WHO": "alice"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[rules]]\nname = "a"\nactions = [{ kind = "shell", command = ["true"] }]\n'
            '[[rules]]\nname = "deploy-prod"\nwhen = { all = [{ path = "payload.a", exists = true },'
            ' { path = "payload.x", contain = "y" }] }\n'
            'actions = [{ kind = "shell", command = ["true"] }]\n',
            'rules[1] "deploy-prod": when.all[1]: unknown operator "contain" (did you mean'
            ' "contains"?)',
        ),
        (
            '[[rules]]\nname = "t"\nactions = [{ kind = "shell", command = ["echo", "{{ x "] }]\n',
            'rules[0] "t": actions[0].command[1]: template error on line 1',
        ),
        (
            '[[rules]]\nname = "t"\nactions = [{ kind = "webhook", url = "{% if %}" }]\n',
            'rules[0] "t": actions[0].url: template error',
        ),
        (
            '[[rules]]\nname = "t"\nrepository = []\nactions = [{ kind = "shell", command = ["x"] }]\n',
            'rules[0] "t": repository: an empty list matches nothing',
        ),
        (
            '[[rules]]\nname = "t"\nsource = ["github", "gitlab"]\n'
            'actions = [{ kind = "shell", command = ["x"] }]\n',
            "rules[0].source: no source named 'gitlab' is configured",
        ),
        (
            '[[rules]]\nname = "t"\nwhen = "payload.ref == 1"\n'
            'actions = [{ kind = "shell", command = ["x"] }]\n',
            "rules[0].when: Expected `object | null`",
        ),
    ],
)
def test_a_bad_rule_is_refused_at_load_naming_the_file_the_rule_and_the_part(
    tmp_path, text, message
):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)

    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "hookbus.toml"))


def test_a_rules_file_is_checked_the_same_way(tmp_path):
    (tmp_path / "rules.toml").write_text(
        '[[rules]]\nname = "r"\nwhen = { path = "paylod.ref", equals = 1 }\n'
        'actions = [{ kind = "shell", command = ["x"] }]\n'
    )

    with pytest.raises(ConfigError, match=r'rules\[0\] "r": when: path "paylod.ref" starts at'):
        load(tmp_path, '[router]\nrules_file = "rules.toml"\n')


# --------------------------------------------------------------------- the four globs


@pytest.mark.parametrize(
    ("repository", "matched"),
    [(["acme/app", "acme/api"], True), (["acme/web", "acme/a*"], True), (["acme/web"], False)],
)
def test_a_glob_may_be_a_list_any_of_which_matches(repository, matched):
    rule = router.Rule(name="r", repository=repository, actions=[router.ShellAction(command=["x"])])

    result = evaluate(rule, hook().data)

    assert result.matched is matched
    if not matched:
        assert result.reason == "repository: 'acme/app' does not match one of ['acme/web']"
        assert (result.failed, result.path, result.operator, result.saw) == (
            "repository",
            "event.repository",
            "glob",
            '"acme/app"',
        )


def test_a_missing_fact_is_shown_as_nothing():
    rule = router.Rule(name="r", branch="main", actions=[router.ShellAction(command=["x"])])

    result = evaluate(rule, hook(branch=None).data)

    assert not result.matched
    assert result.reason == "branch: the event has none (rule wants 'main')"
    assert result.saw == "nothing"


# ---------------------------------------------------------------- the routing record


def test_each_rule_says_why_it_did_not_match_with_the_first_failed_test(tmp_path):
    config = load(tmp_path, DEPLOY)
    bot = {**PAYLOAD, "sender": {"login": "renovate[bot]"}}

    (routed,) = route(config.rules, hook(bot), record_unmatched=True)

    (decision,) = routed.data.evaluations
    assert not decision.matched
    assert decision.failed == "when.all[2]"
    assert decision.path == "payload.sender.login"
    assert decision.operator == "not glob"
    assert decision.saw == '"renovate[bot]"'
    assert "when.all[2]" in decision.reason


def test_the_record_names_the_version_of_the_rules(tmp_path):
    config = load(tmp_path, DEPLOY)
    changed = load(tmp_path, DEPLOY.replace("[deploy]", "[ship]"), "other.toml")

    first = route(config.rules, hook())[0].data
    again = route(RuleSet.build(config.rules), hook())[0].data
    other = route(changed.rules, hook(), record_unmatched=True)[0].data

    assert first.config_version == again.config_version == RuleSet.build(config.rules).version
    assert len(first.config_version or "") == 12
    assert other.config_version != first.config_version


def test_no_rule_matching_still_records_nothing_by_default(tmp_path):
    config = load(tmp_path, DEPLOY)

    assert (
        route(config.rules, hook(branch="dev", payload={"ref": "x"}), record_unmatched=False) == []
    )


def test_an_action_whose_template_fails_is_left_out_and_recorded(tmp_path):
    config = load(
        tmp_path,
        """
[[rules]]
name = "two"
actions = [
  { kind = "shell", command = ["./notify.sh", "{{ payload.pull_request.number }}"] },
  { kind = "shell", command = ["./log.sh", "{{ payload.ref }}"] },
]
""",
    )
    before = (
        REGISTRY.get_sample_value("hookbus_router_actions_skipped_total", {"rule": "two"}) or 0.0
    )

    routed, job = route(config.rules, hook(), record_unmatched=False)

    assert routed.data.matched == ["two"]
    assert routed.data.requested == [job.id]
    assert job.data.spec.command == ["./log.sh", "refs/heads/main"]
    (skip,) = routed.data.skipped
    assert (skip.rule, skip.action, skip.field) == ("two", 0, "actions[0].command[1]")
    assert "pull_request" in skip.reason
    assert skip.reason.startswith("undefined")
    after = REGISTRY.get_sample_value("hookbus_router_actions_skipped_total", {"rule": "two"})
    assert after == before + 1


def test_a_matched_rule_whose_every_action_fails_is_still_recorded(tmp_path):
    config = load(
        tmp_path,
        '[[rules]]\nname = "n"\nactions = [{ kind = "webhook", url = "https://x/{{ payload.no }}" }]\n',
    )

    (routed,) = route(config.rules, hook(), record_unmatched=False)

    assert routed.data.requested == []
    assert [s.field for s in routed.data.skipped] == ["actions[0].url"]


def test_templates_see_the_event_facts_and_a_payload_that_is_not_an_object(tmp_path):
    config = load(
        tmp_path,
        '[[rules]]\nname = "n"\nactions = [{ kind = "shell", command = ["x",'
        ' "{{ event.id }}", "{{ event.tenant }}", "{{ event.repository }}", "{{ payload }}"] }]\n',
    )

    _, job = route(config.rules, hook(payload="just text"))

    assert job.data.spec.command == ["x", "evt_hook", "acme", "acme/app", "just text"]


def test_a_replay_is_evaluated_with_the_same_conditions_and_templates(tmp_path):
    config = load(tmp_path, DEPLOY)
    original = hook()
    replay = ev.make_event(
        ev.WebhookReplayed(replay_of=original.id, webhook=original.data),
        source="/hookbus/cli",
        id="evt_replay",
    )

    routed, job = route_replay(config.rules, replay)

    assert routed.data.matched == ["deploy-prod"]
    assert job.data.spec.command[1:] == ["refs/heads/main", "c0ffee1"]


# ------------------------------------------------------------------------- reloading


RULE = '[[rules]]\nname = "{name}"\nactions = [{{ kind = "shell", command = ["x"] }}]\n'


def _reloads(result: str) -> float:
    return REGISTRY.get_sample_value("hookbus_router_reloads_total", {"result": result}) or 0.0


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


async def test_a_reload_applies_good_rules_and_refuses_bad_ones_keeping_the_old(tmp_path):
    path = tmp_path / "hookbus.toml"
    path.write_text(SOURCES + RULE.format(name="one"))
    live = LiveRules(router.load(path, {}), lambda p: router.load(p, {}))
    handler = make_handler(live)
    first = live().version
    applied, refused = _reloads("applied"), _reloads("refused")

    path.write_text(SOURCES + RULE.format(name="two"))
    _touch_later(path)
    assert live.changed()
    assert live.reload("test") == "applied"
    assert [r.rule.name for r in live().rules] == ["two"]
    assert live().version != first

    path.write_text(SOURCES + RULE.format(name="three").replace('"x"', '"{{ x "'))
    _touch_later(path)
    assert live.changed()
    assert live.reload("test") == "refused"
    assert [r.rule.name for r in live().rules] == ["two"]
    assert not live.changed()  # refused once, not again at every poll

    assert live.reload("test") == "refused"
    assert _reloads("applied") == applied + 1
    assert _reloads("refused") == refused + 2

    # The handler reads the rules in use at each event.
    out = [e async for batch in handler(_Incoming(hook())) for e in batch]
    assert out[0].data.matched == ["two"]


async def test_the_watch_reloads_when_asked_and_stops(tmp_path):
    path = tmp_path / "hookbus.toml"
    path.write_text(SOURCES + RULE.format(name="one"))
    live = LiveRules(router.load(path, {}), lambda p: router.load(p, {}))
    stop = asyncio.Event()
    task = asyncio.create_task(live.watch(stop, interval=0.05))

    path.write_text(SOURCES + RULE.format(name="two"))
    live.request()  # what SIGHUP does
    for _ in range(200):
        if [r.rule.name for r in live().rules] == ["two"]:
            break
        await asyncio.sleep(0.02)

    assert [r.rule.name for r in live().rules] == ["two"]
    stop.set()
    await asyncio.wait_for(task, 5)


def test_the_files_watched_are_the_config_and_its_rules_file(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    (tmp_path / "rules.toml").write_text(RULE.format(name="r"))
    config = load(tmp_path, '[router]\nrules_file = "rules.toml"\n')

    assert watched_files(config) == [tmp_path / "hookbus.toml", tmp_path / "rules.toml"]
    assert watched_files(router.load(None, {})) == []


class _Incoming:
    def __init__(self, event: ev.Event[ev.WebhookReceived]) -> None:
        self.event = event
        self.deliveries = 1  # a first delivery: routed without looking for a record


# ------------------------------------------------------------ no payload can raise

ROBUST = RuleSet.build(
    [
        router.Rule(
            name="every-kind-of-test",
            when={
                "any": [
                    {"path": "payload.ref", "glob": "refs/*"},
                    {"path": "payload.commits[*].message", "contains": "[deploy]"},
                    {"path": "payload.a.b[0].c", "gt": 3},
                    {"path": "payload.t", "after": "2026-01-01"},
                    {"path": "sort(payload.a)", "equals": [1]},
                    {"not": {"path": "payload.x", "regex": "^x+$"}},
                ]
            },
            actions=[
                router.ShellAction(
                    command=["run", "{{ payload.ref }}", "{{ payload | tojson }}"],
                    env={"A": "{{ payload.a.b | default('x') }}"},
                ),
                router.WebhookAction(url="https://x.example/{{ payload.commits[0].id }}"),
            ],
        )
    ]
)


def _route_raw(body: bytes) -> list[ev.Event]:
    data = ev.WebhookReceived(
        source="github", kind="github", event_type="push", payload=msgspec.Raw(body)
    )
    return route(ROBUST, ev.make_event(data, source="/t"), record_unmatched=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["ref", "a", "b", "c", "t", "x", "commits", "message", "id"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(payload=json_values)
def test_no_payload_makes_the_router_raise(payload):
    routed, *requests = _route_raw(msgspec.json.encode(payload))

    assert isinstance(routed.data, ev.WebhookRouted)
    assert len(requests) + len(routed.data.skipped) == (2 if routed.data.matched else 0)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=200))
def test_no_body_makes_the_router_raise_even_one_that_is_not_json(body):
    routed, *_ = _route_raw(body)

    assert isinstance(routed.data, ev.WebhookRouted)


def test_a_deeply_nested_payload_is_routed():
    deep = b'{"a":' * 3000 + b"1" + b"}" * 3000

    routed, *_ = _route_raw(deep)

    assert routed.data.evaluations[-1].rule == "every-kind-of-test"


def test_docker_fields_are_templates_too(tmp_path):
    image = ev.ImageInfo(
        registry="docker.io",
        namespace="acme",
        repository="api",
        path="acme/api",
        canonical="docker.io/acme/api",
        tag="v1.2.3",
    )
    data = ev.WebhookReceived(
        source="image-push", kind="image-push", event_type="push", image=image
    )
    rule = router.Rule(
        name="recreate",
        actions=[
            router.DockerAction(
                operation="recreate",
                container="api",
                image="{{ event.image.canonical }}:{{ event.image.tag }}",
            )
        ],
    )

    _, job = route([rule], ev.make_event(data, source="/t"))

    assert job.data.spec.image == "docker.io/acme/api:v1.2.3"


def test_a_routing_record_from_before_versions_still_decodes():
    old = (
        b'{"source":"github","event_type":"push","webhook_id":"evt_1","matched":[],'
        b'"evaluations":[{"rule":"r","matched":false,"reason":"branch: x"}],"requested":[]}'
    )

    routed = ev.decode_data(ev.WebhookRouted.TYPE, old)

    assert isinstance(routed, ev.WebhookRouted)
    assert routed.config_version is None
    assert routed.skipped == []
    assert routed.evaluations[0].failed is None
    assert routed.evaluations[0].saw is None
