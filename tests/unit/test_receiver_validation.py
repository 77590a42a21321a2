"""Partner validation: JSON Schemas compiled by jsonschema-rs (draft 3 by the Python
package), answers kept small, nothing fetched."""

from __future__ import annotations

from typing import Any

import pytest

from hookbus_common.events import PartnerValidation
from hookbus_receiver import partnerstore as store
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


def paths(validator: BodyValidator, doc: object) -> list[str]:
    return [v.path for v in validator.violations(doc)]


# ------------------------------------------------- required paths and the partner config


def test_required_paths_follow_objects_and_list_indexes():
    v = BodyValidator(PartnerValidation(required=["order.id", "items.0.sku", "meta"]))

    assert paths(v, {"order": {"id": 0}, "items": [{"sku": "x"}], "meta": {}}) == []
    assert paths(v, {"order": {}, "items": [], "meta": None}) == [
        "$.order.id",
        "$.items.0.sku",
        "$.meta",  # null counts as missing
    ]
    assert paths(v, {"order": "not an object", "items": {"0": {"sku": 1}}, "meta": 1}) == [
        "$.order.id"
    ]


def test_schema_violations_name_the_path_and_the_problem():
    schema = {
        "type": "object",
        "required": ["event"],
        "properties": {"amount": {"type": "integer", "minimum": 1}},
    }
    v = BodyValidator(PartnerValidation(schema=schema))

    found = v.violations({"amount": 0})

    assert [(x.path, x.message) for x in found] == [
        ("$", '"event" is a required property'),
        ("$.amount", "0 is less than the minimum of 1"),
    ]
    assert v.violations({"event": "e", "amount": 3}) == []


def test_schema_draft_comes_from_dollar_schema():
    v = BodyValidator(
        PartnerValidation(
            schema={"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}
        )
    )
    assert paths(v, []) == ["$"]


def test_an_unusable_schema_is_a_config_error():
    with pytest.raises(InvalidConfig, match="not valid"):
        BodyValidator(PartnerValidation(schema={"type": 12}))


def test_violations_are_capped():
    v = BodyValidator(PartnerValidation(required=[f"f{i}" for i in range(50)]))
    assert len(v.violations({})) == MAX_PROBLEMS


@pytest.mark.parametrize(
    ("required", "schema", "message"),
    [
        (["order..id"], None, "dotted path"),
        ([""], None, "dotted path"),
        ([], ["not", "an", "object"], "JSON object"),
        ([], {"type": "nonsense"}, "not valid"),
    ],
)
def test_parse_validation_refuses_what_cannot_work(required, schema, message):
    with pytest.raises(store.PartnerError, match=message):
        store.parse_validation(required, schema)


def test_parse_validation_keeps_what_it_was_given():
    v = store.parse_validation(["a.b"], {"type": "object"})
    assert v == PartnerValidation(required=["a.b"], schema={"type": "object"})
