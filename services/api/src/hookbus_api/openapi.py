"""The OpenAPI 3.1 document, built from the route table and the msgspec schemas."""

from __future__ import annotations

from typing import Any

import msgspec

from .problems import MEDIA_TYPE, Problem
from .routes import OPS, Op

_REF = "#/components/schemas/{name}"


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {MEDIA_TYPE: {"schema": {"$ref": _REF.format(name="Problem")}}},
    }


def document(version: str = "0.1.0") -> dict[str, Any]:
    types: list[Any] = [Problem]
    for op in OPS:
        types += [t for t in (op.answer, op.body) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, by_type)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hookbus operator API",
            "version": version,
            "description": "See, search and replay what hookbus recorded. Sign in with a"
            " token from `hookbus tokens create` as `Authorization: Bearer <token>`. Errors"
            " are RFC 9457 problem details.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "tags": [{"name": t} for t in sorted({op.tag for op in OPS})],
    }


def _operation(op: Op, by_type: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "description": p.description,
                "schema": p.schema,
            }
            for p in op.params
        ],
    }
    if op.answer is not None:
        content = {op.media_type: {"schema": by_type[op.answer]}}
    else:
        content = {op.media_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(op.status): {"description": op.summary, "content": content}}
    for status, why in op.also:
        responses[str(status)] = {"description": why, "content": content}
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": by_type[op.body]}},
        }
        responses["400"] = _problem_response("The request cannot be used as given")
    if op.scope is None:
        out["security"] = []
    else:
        out["security"] = [{"bearer": []}]
        out["x-hookbus-scope"] = op.scope
        responses["401"] = _problem_response("No token, or not a valid one (alike)")
        responses["403"] = _problem_response(f"The token's scope is below {op.scope}")
    if "{" in op.path:
        responses["404"] = _problem_response("Not found")
    responses["503"] = _problem_response("Postgres or NATS is away")
    out["responses"] = responses
    return out
