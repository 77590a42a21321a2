"""Partner validation: JSON Schemas compiled by jsonschema-rs (draft 3 by the Python
package), answers kept small, nothing fetched."""

from __future__ import annotations

from typing import Any

import pytest

from hookbus_common.events import PartnerValidation
from hookbus_receiver.validation import (
    MAX_MESSAGE,
    MAX_PROBLEMS,
    BodyValidator,
    InvalidConfig,
    compile_schema,
)


def found(schema: Any, doc: Any) -> list[tuple[str, str]]:
    return [(v.path, v.message) for v in compile_schema(schema)(doc)]


def test_paths_say_list_indexes_and_object_keys_apart() -> None:
    schema = {
        "properties": {
            "items": {"items": {"required": ["sku"]}},
            "by_id": {"additionalProperties": {"type": "string"}},
            "a/b~c": {"type": "integer"},
        }
    }
    doc = {"items": [{"sku": 1}, {}], "by_id": {"0": 5}, "a/b~c": "x"}

    assert {path for path, _ in found(schema, doc)} == {"$.items[1]", "$.by_id.0", "$.a/b~c"}


def test_formats_are_checked() -> None:
    assert found({"format": "email"}, "not an address") != []
    assert found({"format": "email"}, "a@example.com") == []


def test_draft_3_is_validated_by_the_python_package() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-03/schema#",
        "properties": {"id": {"type": "string", "required": True}},
    }
    assert found(schema, {"id": "x"}) == []
    assert found(schema, {}) == [("$.id", "'id' is a required property")]


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "https://example.com/schema.json"},  # never fetched
        {"$ref": "file:///etc/passwd"},
        {"type": 12},
        {"$schema": "http://json-schema.org/draft-03/schema#", "type": 12},
        {"pattern": "("},
    ],
)
def test_schemas_that_cannot_be_used_are_config_errors(schema: Any) -> None:
    with pytest.raises(InvalidConfig, match="the JSON Schema is not valid"):
        compile_schema(schema)


def test_answers_stay_small_whatever_the_body_holds() -> None:
    check = compile_schema({"type": "array", "items": {"type": "integer"}})
    problems = check(["x" * 100_000] * 1000)

    assert len(problems) == MAX_PROBLEMS
    assert all(len(p.message) <= MAX_MESSAGE for p in problems)
    assert problems[0].message.endswith("…")


def test_required_fields_and_the_schema_report_together() -> None:
    v = BodyValidator(PartnerValidation(required=["order.id"], schema={"required": ["x"]}))

    assert [p.path for p in v.missing({})] == ["$.order.id"]
    assert [p.path for p in v.violations({})] == ["$.order.id", "$"]
