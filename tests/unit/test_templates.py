"""Templates in action fields: rendering from the event, the filters the docs use, failures
that leave the action out, compile errors, and that no payload makes one raise."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookbus_router.config import ShellAction, SshAction, WebhookAction
from hookbus_router.templates import (
    MAX_RENDERED,
    RenderError,
    TemplateError,
    compile_action,
    compile_text,
    is_template,
    render_action,
)

CONTEXT: dict[str, Any] = {
    "payload": {
        "ref": "refs/heads/main",
        "after": "c0ffee1234567890",
        "draft": False,
        "size": 3,
        "commits": [{"id": "a1", "message": "one"}, {"id": "b2", "message": "two"}],
        "sender": {"login": "alice"},
        "nothing": None,
        "shell": "$(rm -rf /); `id`",
    },
    "event": {"type": "push", "id": "evt_1", "source": "github", "branch": "main", "tag": None},
    "headers": {"x-event-type": "push"},
}


def render(text: str, context: dict[str, Any] = CONTEXT) -> str:
    template = compile_text(text, "f")
    assert template is not None
    return template.render(context)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ payload.ref }}", "refs/heads/main"),
        ("v-{{ payload.after[:7] }}", "v-c0ffee1"),
        ("{{ event.type }}/{{ event.source }}", "push/github"),
        ('{{ headers["x-event-type"] }}', "push"),
        ("{{ payload.size + 1 }}", "4"),
        ("{{ payload.draft }}", "false"),  # booleans, lists and objects print as JSON
        ("{{ payload.sender }}", '{"login":"alice"}'),
        ("{{ payload.shell }}", "$(rm -rf /); `id`"),  # data, never interpreted
        ("{% if payload.draft %}draft{% else %}ready{% endif %}", "ready"),
        ("{# a note #}plain", "plain"),
    ],
)
def test_render(text, expected):
    assert render(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ payload.ref | replace('refs/heads/', '') }}", "main"),
        ("{{ payload.sender.login | upper }}", "ALICE"),
        ("{{ event.type | lower }}", "push"),
        ("{{ payload.commits | map(attribute='id') | join(',') }}", "a1,b2"),
        ("{{ payload.commits | length }}", "2"),
        ("{{ (payload.commits | first).message }}", "one"),
        ("{{ (payload.commits | last).message }}", "two"),
        ("{{ payload.nothing | default('none', true) }}", "none"),
        ("{{ event.tag | default('untagged', true) }}", "untagged"),
        ("{{ payload.missing | default('x') }}", "x"),
        ("{{ payload.after | truncate(7, true, '') }}", "c0ffee1"),
        ("{{ payload.sender | tojson }}", '{"login": "alice"}'),
        ("{{ payload.sender | json }}", '{"login":"alice"}'),
        ("{{ payload | jmespath('commits[*].id') | join(' ') }}", "a1 b2"),
        ("{{ payload.ref | trim }}", "refs/heads/main"),
        ("{{ payload.ref | urlencode }}", "refs/heads/main"),
    ],
)
def test_filter(text, expected):
    assert render(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{{ payload.missing }}", "undefined"),
        ("{{ payload.sender.nope }}", "undefined"),
        ("{{ nothere }}", "undefined"),
        ("{{ payload.nothing }}", "null"),
        ("{{ event.tag }}", "null"),
        ("{{ payload.size / 0 }}", "ZeroDivisionError"),
        ("{{ payload.__class__ }}", "SecurityError"),
        ("{{ payload.ref.__class__.__mro__ }}", "SecurityError"),
        ("{{ payload | jmespath('[') }}", "jmespath"),
        ("{{ ''.__class__.__subclasses__() }}", "SecurityError"),
    ],
)
def test_a_failing_template_raises_render_error_naming_the_field_and_why(text, why):
    with pytest.raises(RenderError) as info:
        render(text)

    assert str(info.value).startswith("f: ")
    assert why in str(info.value)


def test_a_rendering_past_the_limit_fails():
    with pytest.raises(RenderError, match="limit"):
        render("{{ payload.ref * 100000 }}")
    assert len(render("{{ payload.ref * 1000 }}")) < MAX_RENDERED


def test_texts_without_template_marks_are_not_compiled():
    assert not is_template("./deploy.sh --env=prod {x}")
    assert compile_text("{ not: a template }", "f") is None
    assert is_template("{{ x }}")
    assert is_template("{% if x %}{% endif %}")
    assert is_template("{#")


@pytest.mark.parametrize(
    "text", ["{{ payload.ref ", "{% if x %}", "{{ x | nosuchfilter }}", "{% for %}"]
)
def test_a_template_that_does_not_compile_is_a_config_error_naming_the_field(text):
    with pytest.raises(TemplateError) as info:
        compile_text(text, "actions[0].command[1]")

    assert str(info.value).startswith("actions[0].command[1]: template error on line 1")


# --------------------------------------------------------------------------- actions


def test_each_argv_element_env_value_and_cwd_is_its_own_template():
    action = ShellAction(
        command=["./deploy.sh", "{{ payload.ref }}", "--sha={{ payload.after[:7] }}", "plain"],
        env={"WHO": "{{ payload.sender.login }}", "FIXED": "x{y}"},
        cwd="/srv/{{ event.source }}",
    )
    templates = compile_action("shell", action, "actions[0]")

    assert sorted(templates) == ["command[1]", "command[2]", "cwd", "env.WHO"]
    assert render_action("shell", action, templates, CONTEXT) == {
        "command": ["./deploy.sh", "refs/heads/main", "--sha=c0ffee1", "plain"],
        "env": {"WHO": "alice", "FIXED": "x{y}"},
        "cwd": "/srv/github",
    }


def test_a_value_with_spaces_stays_one_argument():
    action = ShellAction(
        command=["echo", "{{ payload.commits | map(attribute='message') | join(' ') }}"]
    )

    rendered = render_action("shell", action, compile_action("shell", action, "a"), CONTEXT)

    assert rendered["command"] == ["echo", "one two"]


def test_ssh_and_webhook_fields():
    ssh = SshAction(
        host="web1", command=["deploy", "{{ event.branch }}"], env={"A": "{{ event.id }}"}
    )
    hook = WebhookAction(
        url="https://ci.example.com/{{ event.source }}/hooks",
        headers={"x-ref": "{{ payload.ref }}"},
    )

    assert render_action("ssh", ssh, compile_action("ssh", ssh, "a"), CONTEXT) == {
        "command": ["deploy", "main"],
        "env": {"A": "evt_1"},
    }
    assert render_action("webhook", hook, compile_action("webhook", hook, "a"), CONTEXT) == {
        "url": "https://ci.example.com/github/hooks",
        "headers": {"x-ref": "refs/heads/main"},
    }


def test_an_action_without_templates_renders_nothing():
    action = ShellAction(command=["./deploy.sh"], env={"A": "b"})

    assert compile_action("shell", action, "a") == {}
    assert render_action("shell", action, {}, CONTEXT) == {}


def test_the_first_field_that_fails_is_named():
    action = ShellAction(command=["x", "{{ payload.ref }}", "{{ payload.nope }}"])

    with pytest.raises(RenderError, match=r"^actions\[3\]\.command\[2\]: undefined"):
        render_action("shell", action, compile_action("shell", action, "actions[3]"), CONTEXT)


# ------------------------------------------------------------- no payload can raise

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["ref", "a", "commits", "id"]), children, max_size=4)
    ),
    max_leaves=30,
)

ACTION = ShellAction(
    command=[
        "{{ payload.ref }}",
        "{{ payload.a | default('d') }}",
        "{{ payload.commits | map(attribute='id') | join(',') }}",
        "{{ payload.a[0] + 1 }}",
        "{{ payload | jmespath('a.b') | default('x', true) }}",
        "{{ payload.ref | upper }}{{ payload.ref[:7] }}",
        "{% for c in payload.commits %}{{ c.id }}{% endfor %}",
    ],
    env={"J": "{{ payload | tojson }}"},
)
ACTION_TEMPLATES = compile_action("shell", ACTION, "actions[0]")


@settings(max_examples=300, deadline=None)
@given(payload=json_values)
def test_no_payload_makes_a_template_raise_anything_but_render_error(payload):
    context = {**CONTEXT, "payload": payload}
    try:
        rendered = render_action("shell", ACTION, ACTION_TEMPLATES, context)
    except RenderError as exc:
        failure = str(exc)
        rendered = {"command": []}
    else:
        failure = "actions[0]. rendered"
    assert failure.startswith("actions[0].")
    assert all(isinstance(a, str) for a in rendered["command"])
