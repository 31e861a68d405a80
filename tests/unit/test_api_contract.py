"""The status responses' types (mipart.api.contract) and openapi.yaml say the same thing."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml
from conftest import AGENT

from mipart.api import contract
from mipart.health.states import STATES

DOCUMENT = yaml.safe_load((AGENT / "mipart" / "api" / "openapi.yaml").read_text())
SCHEMAS = DOCUMENT["components"]["schemas"]
SCALARS = {int: "integer", str: "string", bool: "boolean", float: "number"}


def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def optional(hint) -> tuple[object, bool]:
    """(the type, whether None is allowed) of a field's type hint."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == len(typing.get_args(hint)) - 1 == 1:
            return args[0], True
    return hint, False


def disagreements(hint, schema: dict, where: str) -> list[str]:
    """What openapi.yaml says differently from the type hint (empty when they agree)."""
    schema = resolve(schema)
    hint, nullable = optional(hint)
    found = []
    if bool(schema.get("nullable")) != nullable:
        found.append(f"{where}: nullable is {bool(schema.get('nullable'))} in openapi.yaml, {nullable} in the type")
    if dataclasses.is_dataclass(hint):
        return found + object_disagreements(hint, schema, where)
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        if schema.get("type") != "array":
            return found + [f"{where}: array in the type, {schema.get('type')} in openapi.yaml"]
        return found + disagreements(typing.get_args(hint)[0], schema["items"], f"{where}[]")
    if hint is dict or origin is dict:
        return found + (
            []
            if schema.get("type") == "object"
            else [f"{where}: object in the type, {schema.get('type')} in openapi.yaml"]
        )
    if SCALARS.get(hint) != schema.get("type"):
        found.append(f"{where}: {SCALARS.get(hint, hint)} in the type, {schema.get('type')} in openapi.yaml")
    return found


def object_disagreements(cls, schema: dict, where: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    found = []
    if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
        found.append(f"{where}: openapi.yaml must say type: object, additionalProperties: false")
    properties = schema.get("properties", {})
    if set(properties) != set(names):
        found.append(
            f"{where}: only in the type {sorted(set(names) - set(properties))}, only in openapi.yaml {sorted(set(properties) - set(names))}"
        )
    if set(schema.get("required", [])) != set(names):
        found.append(
            f"{where}: every field is always sent, so every one is required; openapi.yaml requires {schema.get('required')}"
        )
    for name in names:
        if name in properties:
            found += disagreements(hints[name], properties[name], f"{where}.{name}")
    return found


def response_schema(path: str) -> dict:
    return DOCUMENT["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize(
    "path, cls",
    [("/v1/status", contract.Status), ("/v1/instances", contract.Instances), ("/v1/instances/{n}", contract.Instance)],
)
def test_openapi_describes_exactly_the_response_types(path, cls):
    assert disagreements(cls, response_schema(path), cls.__name__) == []


def test_openapi_describes_exactly_the_error_type():
    assert disagreements(contract.ErrorBody, SCHEMAS["Error"], "ErrorBody") == []


def test_every_path_is_served_and_documented_where_its_type_says():
    for cls in (contract.Status, contract.Instances, contract.Instance):
        assert cls.path in DOCUMENT["paths"]


def test_every_status_response_carries_the_api_version():
    for cls in (contract.Status, contract.Instances, contract.Instance):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert fields["api_version"].default == contract.API_VERSION
    assert SCHEMAS["ApiVersion"]["enum"] == [contract.API_VERSION]


def test_the_state_words_are_the_health_states():
    assert SCHEMAS["InstanceState"]["enum"] == list(STATES)
    assert "draining" in STATES
    counts = [f.name for f in dataclasses.fields(contract.InstanceCounts)]
    assert counts == ["total", *STATES]


def test_the_checker_notices_a_difference():
    @dataclasses.dataclass
    class Changed:
        number: int
        extra: str | None

    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["number", "gone"],
        "properties": {"number": {"type": "string"}, "gone": {"type": "string"}},
    }
    found = "\n".join(disagreements(Changed, schema, "Changed"))
    assert "only in the type ['extra']" in found and "only in openapi.yaml ['gone']" in found
    assert "Changed.number: integer in the type, string in openapi.yaml" in found
    assert "required" in found
    nullable = disagreements(int | None, {"type": "integer"}, "x")
    assert nullable == ["x: nullable is False in openapi.yaml, True in the type"]


def test_the_document_is_the_shipped_one():
    from mipart.api.server import openapi_text

    assert openapi_text() == (Path(contract.__file__).parent / "openapi.yaml").read_text()
