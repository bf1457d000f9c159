"""Request bodies checked against the JSON Schema the OpenAPI document publishes.

The subset dsm's schemas use: type, enum, minLength, maxLength, required, properties,
additionalProperties: false, $ref to a component. The message names the field by its path
(`params.force_download`), so a client sees which of its fields is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsm.errors import BadInput

REF_PREFIX = "#/components/schemas/"


def json_type(value: Any) -> str:
    """The JSON Schema type name of a parsed JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "boolean"
    if isinstance(value, int):
        return "integer"
    names = {float: "number", str: "string", list: "array", dict: "object"}
    return names[type(value)]


def check(schema: Mapping[str, Any], value: Any, where: str, defs: Mapping[str, Any]) -> None:
    """BadInput naming `where` when `value` does not fit `schema`."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].removeprefix(REF_PREFIX)]
    want, got = schema.get("type"), json_type(value)
    if want is not None and got != want and not (want == "number" and got == "integer"):
        raise BadInput(f"{where} must be of type {want}, got {got}")
    if "enum" in schema and value not in schema["enum"]:
        raise BadInput(f"{where} must be one of: {', '.join(map(str, schema['enum']))}")
    if got == "string" and not schema.get("minLength", 0) <= len(value) <= schema.get(
        "maxLength", len(value)
    ):
        low, high = schema.get("minLength", 0), schema.get("maxLength", "any")
        raise BadInput(f"{where} must be {low} to {high} characters long, got {len(value)}")
    if got == "object":
        _check_object(schema, value, where, defs)


def _check_object(
    schema: Mapping[str, Any], value: dict[str, Any], where: str, defs: Mapping[str, Any]
) -> None:
    props = schema.get("properties", {})
    prefix = f"{where}." if where != "body" else ""
    if schema.get("additionalProperties") is False:
        extra = sorted(set(value) - set(props))
        if extra:
            raise BadInput(f"unknown field(s) in {where}: {', '.join(prefix + e for e in extra)}")
    for name in schema.get("required", ()):
        if name not in value:
            raise BadInput(f"{prefix}{name} is required")
    for name, sub in props.items():
        if name in value:
            check(sub, value[name], prefix + name, defs)
