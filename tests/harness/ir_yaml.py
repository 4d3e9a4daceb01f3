"""A typed loader from YAML to the IR dataclasses (spillover.ir), for the translator's golden cases.

Driven by the dataclasses' own type hints, so it follows the IR without a schema of its own. Strict on
purpose: an unknown or misspelt field, a missing required field or a value of the wrong type is an
error naming the file and the path of the field, never a silently applied default. Field names are
the dataclasses' (snake_case); a tuple is a YAML list, `headers` a list of [name, value] pairs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml  # type: ignore[import-untyped]

from spillover.ir import Gateway

__all__ = ["IrYamlError", "from_data", "load_gateway"]

T = TypeVar("T")


class IrYamlError(ValueError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """Refuses duplicate keys, which plain YAML resolves silently by keeping the last one."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_gateway(path: Path) -> Gateway:
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise IrYamlError(f"{path}: invalid YAML: {exc}") from None
    try:
        return from_data(Gateway, data)
    except IrYamlError as exc:
        raise IrYamlError(f"{path}: {exc}") from None


def from_data(cls: type[T], data: Any, where: str = "") -> T:
    """`data` (parsed YAML) as an instance of the dataclass `cls`."""
    return typing.cast(T, _value(cls, data, where))


def _describe(where: str) -> str:
    return where or "the document"


def _value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        others = [option for option in options if option is not type(None)]
        if len(others) != 1:
            raise TypeError(f"{where}: the loader does not handle the union {tp!r}")
        return _value(others[0], value, where)
    if origin is tuple:
        return _tuple(typing.get_args(tp), value, where)
    if dataclasses.is_dataclass(tp):
        return _dataclass(typing.cast(type, tp), value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise IrYamlError(f"{_describe(where)}: must be a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        # bool is an int in Python; YAML's `true` must not pass for a port.
        if type(value) is not tp:
            raise IrYamlError(f"{_describe(where)}: must be {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"{where}: the loader does not handle the type {tp!r}")


def _tuple(args: tuple[Any, ...], value: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise IrYamlError(f"{_describe(where)}: must be a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_value(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if len(value) != len(args):
        raise IrYamlError(f"{_describe(where)}: must be a list of {len(args)} items, got {value!r}")
    pairs = enumerate(zip(args, value, strict=True))
    return tuple(_value(arg, item, f"{where}[{i}]") for i, (arg, item) in pairs)


def _dataclass(cls: type, value: Any, where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(value, dict):
        raise IrYamlError(f"{_describe(where)}: must be a mapping of {cls.__name__} fields, got {value!r}")
    unknown = sorted(str(key) for key in value if key not in fields)
    if unknown:
        raise IrYamlError(
            f"{_describe(where)}: unknown field(s) {', '.join(unknown)} of {cls.__name__} "
            f"(known: {', '.join(fields)})"
        )
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in value]
    if missing:
        raise IrYamlError(f"{_describe(where)}: {cls.__name__} needs field(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    return cls(**{name: _value(hints[name], item, prefix + name) for name, item in value.items()})
