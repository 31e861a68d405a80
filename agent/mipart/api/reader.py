"""Reading the status responses back from JSON, by the fields and annotations of their types: pure.

The writer's types (api.contract) read the other way, so no field is spelled twice. A reader
refuses another api_version and a field that is missing or of the wrong JSON type, in one line
naming the field's path (`/v1/status: field instances.ready missing`), and passes over fields
it does not know: adding a field keeps api_version (the contract's rule).
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from functools import cache
from typing import Any, TypeVar

VERSION_FIELD = "api_version"
SCALARS: dict[object, str] = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}

T = TypeVar("T")


class ContractError(ValueError):
    """JSON that is not the response type it was read as; str() is one line naming where and the field."""


def read_json(cls: type[T], data: object, where: str) -> T:
    """`data` (parsed JSON) as the dataclass `cls`; ContractError, starting with `where`, when it is not one."""
    return typing.cast(T, _value(cls, data, where, ""))


def _value(hint: Any, value: object, where: str, path: str) -> Any:
    inner, nullable = _optional(hint)
    if value is None and nullable:
        return None
    if is_dataclass(inner):
        return _object(inner, _checked(value, dict, hint, where, path), where, path)
    origin = typing.get_origin(inner)
    if origin is tuple:
        items = _checked(value, list, hint, where, path)
        return tuple(_value(typing.get_args(inner)[0], v, where, f"{path}[{i}]") for i, v in enumerate(items))
    if inner is dict or origin is dict:
        return _checked(value, dict, hint, where, path)
    if inner in SCALARS:
        return _checked(value, inner, hint, where, path)
    raise TypeError(f"api.reader cannot read {hint!r} (at {path or 'the top'}); teach _value its JSON form")


def _object(cls: Any, data: dict[str, Any], where: str, path: str) -> Any:
    values = {}
    for name, hint, default in _fields(cls):
        at = f"{path}.{name}" if path else name
        if name not in data:
            raise ContractError(f"{where}: field {at} missing")
        if name == VERSION_FIELD and data[name] != default:
            raise ContractError(f"{where}: {at} {_shown(data[name])}, but this mipart reads {VERSION_FIELD} {default}")
        values[name] = _value(hint, data[name], where, at)
    return cls(**values)


@cache
def _fields(cls: Any) -> tuple[tuple[str, Any, object], ...]:
    """(name, type, default) of each field in order: the contract's types declare api_version first, so
    another version is named before its shape is."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name], None if f.default is MISSING else f.default) for f in fields(cls))


def _optional(hint: Any) -> tuple[Any, bool]:
    """(the type, whether null is allowed) of `X | None`; other hints as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(typing.get_args(hint)) == 2
    return hint, False


def _checked(value: object, kind: type, hint: Any, where: str, path: str) -> Any:
    if type(value) is kind:  # type(), not isinstance(): JSON's true is no integer
        return value
    got = f"{_json_kind(value)} ({_shown(value)})" if type(value) in SCALARS else _json_kind(value)
    if not path:
        raise ContractError(f"{where}: the answer is {got}, not {_wanted(hint)}")
    raise ContractError(f"{where}: field {path} is {got}, not {_wanted(hint)}")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if type(value) in (int, float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else SCALARS[type(value)]


def _wanted(hint: Any) -> str:
    inner, nullable = _optional(hint)
    if is_dataclass(inner) or inner is dict or typing.get_origin(inner) is dict:
        kind = "an object"
    elif typing.get_origin(inner) is tuple:
        kind = "an array"
    else:
        kind = SCALARS.get(inner, str(inner))
    return f"{kind} or null" if nullable else kind


def _shown(value: object, width: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."
