"""Templates in an action's text fields, rendered from the event by a sandboxed Jinja2.

Each text (one argv element, one env value, a URL) is its own template, rendered to one
string: no shell ever sees payload data, and a value cannot spill into the next argument.
Texts without ``{{``, ``{%`` or ``{#`` are used as written, with no rendering at all.
Rendering never raises: a template that fails (an undefined name, a null, an error)
gives a ``RenderError`` saying which field and why, and the action is not run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jinja2
import jmespath
import msgspec
from jinja2.sandbox import SandboxedEnvironment
from jmespath.exceptions import JMESPathError

from hookbus_common.errors import ConfigError

# What a rendered field may grow to (an argv element past this is a mistake, not a value).
MAX_RENDERED: Final = 128 * 1024

# The fields of each action kind that hold templates: a text, a list of texts, or a table
# whose values are texts (its keys stay as written).
TEMPLATED: Final[dict[str, tuple[str, ...]]] = {
    "shell": ("command", "env", "cwd"),
    "ssh": ("command", "env"),
    "webhook": ("url", "headers"),
    "docker": ("image", "container", "command", "env"),
    "compose": ("env",),
}

_MARKS: Final = ("{{", "{%", "{#")
# A job action's ``concurrency.key`` is a template too (rendered to the request's key).
CONCURRENCY_KEY: Final = "concurrency.key"


class TemplateError(ConfigError):
    """A template that does not compile; the message names the field."""


class RenderError(Exception):
    """A template that failed for one event; the message names the field and the cause."""


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _finalize(value: Any) -> Any:
    # What ``{{ … }}`` prints: texts and numbers as they are, booleans, lists and objects
    # as JSON, and a null is an error (an action never runs with a silent blank: write
    # ``| default("x", true)`` for a value that may be null).
    if value is None:
        raise jinja2.UndefinedError("a value is null (use | default(...) to allow it)")
    if isinstance(value, bool | list | dict):
        return _json(value)
    return value


def _jmespath(value: Any, expression: str) -> Any:
    try:
        return jmespath.search(expression, value)
    except JMESPathError as exc:
        raise jinja2.TemplateRuntimeError(f"jmespath {expression!r}: {exc}") from None


def _environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, finalize=_finalize
    )
    env.filters["json"] = _json
    env.filters["jmespath"] = _jmespath
    return env


ENV: Final = _environment()


def is_template(text: str) -> bool:
    return any(mark in text for mark in _MARKS)


@dataclass(frozen=True, slots=True)
class Template:
    """One compiled text and where it is (``command[2]``, ``env.TAG``)."""

    field: str
    source: str
    compiled: jinja2.Template

    def render(self, context: Mapping[str, Any]) -> str:
        try:
            text = self.compiled.render(context)
        except Exception as exc:  # any failure is the event's, never the router's
            raise RenderError(f"{self.field}: {_why(exc)}") from None
        if len(text) > MAX_RENDERED:
            raise RenderError(
                f"{self.field}: rendered to {len(text)} characters (limit {MAX_RENDERED})"
            )
        return text


def _why(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined: {text}"[:300]
    return f"{type(exc).__name__}: {text}"[:300]


def compile_text(text: str, field: str) -> Template | None:
    """The template of ``text``, or None for a plain text (used as written)."""
    if not is_template(text):
        return None
    try:
        return Template(field, text, ENV.from_string(text))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"{field}: template error on line {exc.lineno}: {exc.message}"
        ) from None


def compile_action(kind: str, action: Any, at: str) -> dict[str, Template]:
    """The templates among an action's text fields, by field path (``command[0]``,
    ``env.TAG``, ``url``); raises TemplateError naming ``at`` and the field."""
    found: dict[str, Template] = {}
    for name in TEMPLATED.get(kind, ()):
        value = getattr(action, name, None)
        items: list[tuple[str, Any]]
        if isinstance(value, str):
            items = [(name, value)]
        elif isinstance(value, list):
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, dict):
            items = [(f"{name}.{k}", v) for k, v in value.items()]
        else:
            continue
        for field, text in items:
            if isinstance(text, str):
                template = compile_text(text, f"{at}.{field}")
                if template is not None:
                    found[field] = template
    limit = getattr(action, "concurrency", None)
    if limit is not None:
        template = compile_text(limit.key, f"{at}.concurrency.key")
        if template is not None:
            found[CONCURRENCY_KEY] = template
    return found


def render_action(
    kind: str, action: Any, templates: Mapping[str, Template], context: Mapping[str, Any]
) -> dict[str, Any]:
    """The action's templated fields, rendered: ``{"command": [...], "env": {...}}`` (only
    the fields that hold a template). RenderError on the first that fails."""
    if not templates:
        return {}
    out: dict[str, Any] = {}
    if CONCURRENCY_KEY in templates:
        limit = action.concurrency
        key = templates[CONCURRENCY_KEY].render(context)
        out["concurrency"] = msgspec.structs.replace(limit, key=key)
    for name in TEMPLATED.get(kind, ()):
        value = getattr(action, name, None)
        if isinstance(value, str):
            if name in templates:
                out[name] = templates[name].render(context)
        elif isinstance(value, list):
            keys = [f"{name}[{i}]" for i in range(len(value))]
            if any(k in templates for k in keys):
                out[name] = [
                    templates[k].render(context) if k in templates else v
                    for k, v in zip(keys, value, strict=True)
                ]
        elif isinstance(value, dict):
            keys = [f"{name}.{k}" for k in value]
            if any(k in templates for k in keys):
                out[name] = {
                    k: templates[f"{name}.{k}"].render(context) if f"{name}.{k}" in templates else v
                    for k, v in value.items()
                }
    return out
