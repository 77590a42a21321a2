"""Notification messages rendered from the event by Jinja2's sandbox, never by pasting
strings together: a template cannot reach Python's internals, and a name it uses that the
event lacks is an error (StrictUndefined), not an empty string."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

import jinja2
import msgspec
from jinja2.sandbox import SandboxedEnvironment

MAX_OUTPUT: Final = 64 * 1024
"""Characters of a rendered message kept (a template looping over a payload stops here)."""

_ENV: Final = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
)


class TemplateFailed(Exception):
    """A template could not be rendered for this event; the message says why (for people)."""


def check(source: str) -> str | None:
    """Why ``source`` is not a template (its syntax), or ``None``: for config loading."""
    try:
        _compiled(source)
    except jinja2.TemplateSyntaxError as exc:
        return f"template error on line {exc.lineno}: {exc.message}"
    return None


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def variables(context: Mapping[str, str], payload: bytes, **extra: str | None) -> dict[str, Any]:
    """What a template sees: the webhook's facts (``HOOKBUS_BRANCH`` → ``branch``), the
    decoded ``payload``, and ``extra`` (rule, channel, tenant). Facts the webhook lacks
    are absent, so ``{{ branch }}`` fails for a tag push; write ``{{ branch | default("") }}``."""
    out: dict[str, Any] = {
        k.removeprefix("HOOKBUS_").lower(): v for k, v in context.items() if v is not None
    }
    try:
        out["payload"] = msgspec.json.decode(payload) if payload else None
    except msgspec.DecodeError:
        out["payload"] = payload.decode("utf-8", errors="replace")
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def render(source: str, values: Mapping[str, Any]) -> str:
    """``source`` rendered with ``values``; :class:`TemplateFailed` saying why it could not be."""
    try:
        text = _compiled(source).render(values)
    except jinja2.UndefinedError as exc:
        raise TemplateFailed(f"template error: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateFailed(f"template error on line {exc.lineno}: {exc.message}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateFailed(f"template refused by the sandbox: {exc}") from None
    except Exception as exc:  # a filter on a wrong type, a division by zero, …
        raise TemplateFailed(f"template error: {type(exc).__name__}: {exc}") from None
    return text[:MAX_OUTPUT]
