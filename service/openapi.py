"""OpenAPI request bodies for handlers that decode their own JSON.

Handlers that must report every problem of a body (batch items) or refuse
type coercion decode raw bytes with msgspec. Their request schemas come from
the same msgspec Structs through `msgspec.json.schema_components`, converted to
Litestar's OpenAPI objects here.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar.openapi.spec import (
    Discriminator,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)

REF_TEMPLATE = "#/components/schemas/{name}"
_NESTED = {"items", "additionalProperties", "not"}
_NESTED_LISTS = {"anyOf", "allOf", "oneOf"}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def to_schema(data: dict[str, Any]) -> Schema | Reference:
    """Litestar's Schema for a JSON Schema dict produced by msgspec."""
    if "$ref" in data:
        return Reference(ref=data["$ref"])
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if key == "type":
            fields["type"] = [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
        elif key == "format":
            try:
                fields["format"] = OpenAPIFormat(value)
            except ValueError:
                continue
        elif key == "properties":
            fields["properties"] = {name: to_schema(sub) for name, sub in value.items()}
        elif key in _NESTED:
            target = {"not": "schema_not"}.get(key, _snake(key))
            fields[target] = value if isinstance(value, bool) else to_schema(value)
        elif key in _NESTED_LISTS:
            fields[_snake(key)] = [to_schema(sub) for sub in value]
        elif key in ("$defs", "$schema"):
            continue
        elif key == "discriminator":
            fields["discriminator"] = Discriminator(property_name=value["propertyName"], mapping=value.get("mapping"))
        else:
            fields[_snake(key)] = value
    return Schema(**fields)


def component_schemas(*types: Any) -> dict[str, Schema | Reference]:
    """Components for msgspec types, to pass to `OpenAPIConfig(components=...)`."""
    _, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    return {name: to_schema(definition) for name, definition in components.items()}


def json_body_operation(name: str, body: Schema | Reference) -> type[Operation]:
    """An Operation class whose request body is `body`, for `operation_class=`."""

    def __init__(self: Operation, *args: Any, **kwargs: Any) -> None:
        Operation.__init__(self, *args, **kwargs)
        self.request_body = RequestBody(required=True, content={"application/json": OpenAPIMediaType(schema=body)})

    return type(name, (Operation,), {"__init__": __init__})
