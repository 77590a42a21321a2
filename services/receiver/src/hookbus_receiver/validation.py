"""A partner's validation config (required dotted paths, a JSON Schema) applied to a body."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from jsonschema import SchemaError  # type: ignore[import-untyped]
from jsonschema.validators import validator_for  # type: ignore[import-untyped]

from hookbus_common.errors import ConfigError
from hookbus_common.events import PartnerValidation

MAX_PROBLEMS: Final = 20


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


class BodyValidator:
    """Compiled once per partner version, then applied to every body it sends."""

    def __init__(self, config: PartnerValidation) -> None:
        self.required = list(config.required)
        self._schema: Any = None
        if config.schema is not None:
            cls = validator_for(config.schema)
            try:
                cls.check_schema(config.schema)
            except SchemaError as exc:
                raise InvalidConfig(f"the JSON Schema is not valid: {exc.message}") from None
            self._schema = cls(config.schema, format_checker=cls.FORMAT_CHECKER)

    def violations(self, doc: Any) -> list[Violation]:
        found = [
            Violation(f"$.{path}", "is required")
            for path in self.required
            if not _present(doc, path)
        ]
        if self._schema is not None:
            errors = sorted(self._schema.iter_errors(doc), key=lambda e: list(map(str, e.path)))
            found.extend(Violation(str(e.json_path), str(e.message)) for e in errors)
        return found[:MAX_PROBLEMS]
