"""A partner's validation config (required dotted paths, a JSON Schema) applied to a body.

JSON Schemas are compiled with jsonschema-rs (drafts 4, 6, 7, 2019-09 and 2020-12, the
default): compiled once, validated in Rust, a hundred times and more faster than the
Python package on large bodies, and never fetching a remote ``$ref``. Draft 3, which it
does not know, falls back to the Python ``jsonschema`` package. Either way the receiver
validates in a worker process under a time budget (``schemachecks``), never on its
event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any, Final

import jsonschema_rs
import msgspec

from hookbus_common.errors import ConfigError
from hookbus_common.events import PartnerValidation

MAX_PROBLEMS: Final = 20
# A message may quote the offending value: keep answers small whatever the body holds.
MAX_MESSAGE: Final = 200
_DRAFT3: Final = "http://json-schema.org/draft-03/schema"

SchemaCheck = Callable[[Any], list["Violation"]]


class Violation(msgspec.Struct, frozen=True):
    """One thing wrong with a body: where (a JSON path from ``$``) and what."""

    path: str
    message: str


class InvalidConfig(ConfigError):
    """The validation config itself is unusable (a JSON Schema that is not one)."""


def _present(doc: Any, path: str) -> bool:
    node = doc
    for part in path.split("."):
        if isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return node is not None


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _json_path(doc: Any, pointer: str) -> str:
    """``$.items[0].sku`` for the JSON pointer ``/items/0/sku`` into ``doc``: the document
    says whether a number is a list index or an object's key."""
    path, node = "$", doc
    for raw in pointer.split("/")[1:] if pointer else ():
        part = raw.replace("~1", "/").replace("~0", "~")
        if type(node) is list and part.isdigit():
            path += f"[{part}]"
            node = node[int(part)] if int(part) < len(node) else None
        else:
            path += f".{part}"
            node = node.get(part) if type(node) is dict else None
    return path


def compile_schema(schema: Any) -> SchemaCheck:
    """The check of ``schema``; raises InvalidConfig saying why it is not a usable schema."""
    if isinstance(schema, dict) and str(schema.get("$schema", "")).rstrip("#") == _DRAFT3:
        return _compile_python(schema)
    try:
        compiled = jsonschema_rs.validator_for(schema, validate_formats=True, offline=True)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc).split("\n", 1)[0]
        raise InvalidConfig(f"the JSON Schema is not valid: {_short(message)}") from None

    def check(doc: Any) -> list[Violation]:
        if compiled.is_valid(doc):  # the common case, and the cheapest
            return []
        # evaluate() reports every error far faster than iter_errors() on bodies with many.
        errors = compiled.evaluate(doc).errors()[:MAX_PROBLEMS]
        return [
            Violation(_json_path(doc, e["instanceLocation"]), _short(e["error"])) for e in errors
        ]

    return check


def _compile_python(schema: dict[str, Any]) -> SchemaCheck:
    from jsonschema import SchemaError  # type: ignore[import-untyped]
    from jsonschema.validators import validator_for  # type: ignore[import-untyped]

    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise InvalidConfig(f"the JSON Schema is not valid: {_short(exc.message)}") from None
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    def check(doc: Any) -> list[Violation]:
        errors = islice(validator.iter_errors(doc), MAX_PROBLEMS)
        return [Violation(str(e.json_path), _short(str(e.message))) for e in errors]

    return check


class BodyValidator:
    """Compiled once per partner version. Required fields are checked where the body was
    read; the schema wherever ``check_schema`` runs (a worker process, in the receiver)."""

    def __init__(self, config: PartnerValidation) -> None:
        self.required = list(config.required)
        self.schema: Any = config.schema
        self.check_schema: SchemaCheck | None = (
            compile_schema(config.schema) if config.schema is not None else None
        )

    def missing(self, doc: Any) -> list[Violation]:
        return [
            Violation(f"$.{path}", "is required")
            for path in self.required[:MAX_PROBLEMS]
            if not _present(doc, path)
        ]

    def violations(self, doc: Any) -> list[Violation]:
        """Everything wrong with ``doc``, here and now (up to MAX_PROBLEMS)."""
        found = self.missing(doc)
        if self.check_schema is not None:
            found.extend(self.check_schema(doc))
        return found[:MAX_PROBLEMS]
