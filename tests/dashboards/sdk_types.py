"""Checks a dashboard's JSON against Grafana's dashboard schema as the foundation SDK types it (the
`grafana-foundation-sdk` package, generated from Grafana's own schema).

Two checks: the JSON decodes into the SDK's typed models and encodes back to exactly itself (no key the
schema does not know, nothing misplaced), and every attribute of every decoded model holds a value of
its declared type (strings, numbers, booleans, lists, maps, enum members, literals, nested models;
the SDK's decoders copy JSON values without checking them).
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

__all__ = ["schema_errors"]

plugins.register_default_plugins()


def _type_errors(value: Any, hint: Any, path: str, out: list[str]) -> None:
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        # A panel's options and custom field config are typed `object` on the panel and decoded by the
        # panel type's own model: that model is checked.
        if hasattr(value, "to_json") and typing.get_type_hints(type(value)):
            _model_errors(value, path, out)
        return
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return
        attempts: dict[Any, list[str]] = {}
        for option in options:
            if option is type(None):
                continue
            errors: list[str] = []
            _type_errors(value, option, path, errors)
            if not errors:
                return
            attempts[option] = errors
        # A model of one of the union's classes is wrong inside: say where.
        own = [errors for option, errors in attempts.items() if isinstance(value, _runtime_class(option))]
        out.extend(own[0] if own else [f"{path}: {value!r} is none of {hint}"])
        return
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            out.append(f"{path}: {value!r} is not one of {typing.get_args(hint)}")
        return
    if origin is list:
        if not isinstance(value, list):
            out.append(f"{path}: expected a list, got {value!r}")
            return
        (item,) = typing.get_args(hint)
        for i, element in enumerate(value):
            _type_errors(element, item, f"{path}[{i}]", out)
        return
    if origin is dict:
        if not isinstance(value, dict):
            out.append(f"{path}: expected a map, got {value!r}")
            return
        key_type, item = typing.get_args(hint)
        for key, element in value.items():
            _type_errors(key, key_type, f"{path} key", out)
            _type_errors(element, item, f"{path}.{key}", out)
        return
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if value not in {member.value for member in hint}:
            out.append(f"{path}: {value!r} is not a {hint.__name__} ({', '.join(str(m.value) for m in hint)})")
        return
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.append(f"{path}: expected a number, got {value!r}")
        return
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(f"{path}: expected an integer, got {value!r}")
        return
    if hint in (str, bool):
        if not isinstance(value, hint):
            out.append(f"{path}: expected {hint.__name__}, got {value!r}")
        return
    if isinstance(hint, type):
        if not isinstance(value, hint):
            out.append(f"{path}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
            return
        if hasattr(hint, "to_json"):
            _model_errors(value, path, out)
        return
    out.append(f"{path}: cannot check {hint!r}")


def _runtime_class(hint: Any) -> type | tuple[type, ...]:
    """What a value of `hint` is an instance of at run time (list for list[X]); () when nothing is."""
    origin = typing.get_origin(hint) or hint
    return origin if isinstance(origin, type) else ()


def _model_errors(model: Any, path: str, out: list[str]) -> None:
    if isinstance(model, cogvariants.Dataquery) and not hasattr(type(model), "__annotations__"):
        return
    hints = typing.get_type_hints(type(model))
    for name, hint in hints.items():
        if name.startswith("_"):
            continue
        _type_errors(getattr(model, name, None), hint, f"{path}.{name}", out)


def schema_errors(document: dict[str, Any]) -> list[str]:
    """Every way `document` is not a dashboard of Grafana's schema (empty: it is one)."""
    decoded = dm.Dashboard.from_json(document)
    errors: list[str] = []
    _model_errors(decoded, "dashboard", errors)
    again = json.loads(json.dumps(decoded, cls=JSONEncoder))
    if again != document:
        errors.extend(_differences(document, again, "dashboard"))
    return errors


def _differences(expected: Any, got: Any, path: str) -> list[str]:
    if isinstance(expected, dict) and isinstance(got, dict):
        out = [f"{path}.{key}: not in the schema (dropped when decoded)" for key in expected if key not in got]
        out += [f"{path}.{key}: added by the schema's defaults" for key in got if key not in expected]
        for key in expected.keys() & got.keys():
            out += _differences(expected[key], got[key], f"{path}.{key}")
        return out
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        return [d for i, (a, b) in enumerate(zip(expected, got, strict=True)) for d in _differences(a, b, f"{path}[{i}]")]
    return [] if expected == got else [f"{path}: {expected!r} decodes as {got!r}"]
