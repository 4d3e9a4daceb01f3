"""Policy errors, and the translation of pydantic's errors into the users' terms.

An error reads `llama.yaml[0] spec.routing.profiles.batch.requestsPerSecond: must be >= 0`:
file, document index, field path in the camelCase of the YAML, and a rule in plain words.
Input values are never part of a message (they may be secrets).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from spillover.policy.types import ERROR_TYPE


@dataclass(frozen=True, order=True)
class PolicyError:
    file: str | None
    index: int | None  # document index in the file, 0-based
    path: str  # e.g. spec.routing.profiles.batch.requestsPerSecond; "" for the whole document/file
    message: str
    line: int | None = None  # 1-based, for YAML syntax errors
    model: str | None = None  # the model the error concerns, when known

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        if self.index is not None:
            where += f"[{self.index}]"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def join_path(base: str, *parts: str | int) -> str:
    out = base
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif _IDENT.match(p):
            out = f"{out}.{p}" if out else p
        else:
            out += f"[{p!r}]".replace("'", '"')
    return out


_SUB = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _sub_parts(sub: str | tuple[str | int, ...]) -> list[str | int]:
    """A validator's sub-path: "metrics[1].target" or, for keys that may hold dots, a tuple."""
    if isinstance(sub, tuple | list):
        return list(sub)
    return [int(m.group(1)) if m.group(1) is not None else m.group(2) for m in _SUB.finditer(sub)]


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _literal_choices(ctx: dict[str, Any]) -> str:
    expected = str(ctx.get("expected", ""))
    return ", ".join(re.findall(r"'([^']*)'", expected)) or expected


def _message(err: Any, known_fields: list[str] | None) -> str:
    t, ctx = err["type"], err.get("ctx") or {}
    simple = {
        "missing": "is required",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "string_type": "must be a string",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "list_type": "must be a list",
        "none_required": "must be empty",
        "string_unicode": "must be valid text",
        "is_instance_of": "has the wrong type",
    }
    if t in simple:
        return simple[t]
    if t == "extra_forbidden":
        if known_fields:
            field = str(err["loc"][-1])
            close = difflib.get_close_matches(field, known_fields, n=1, cutoff=0.6)
            if close:
                return f'unknown field (did you mean "{close[0]}"?)'
        return "unknown field"
    if t in ("literal_error", "enum"):
        return f"must be one of: {_literal_choices(ctx)}"
    if t == "greater_than_equal":
        return f"must be >= {_num(ctx['ge'])}"
    if t == "greater_than":
        return f"must be > {_num(ctx['gt'])}"
    if t == "less_than_equal":
        return f"must be <= {_num(ctx['le'])}"
    if t == "less_than":
        return f"must be < {_num(ctx['lt'])}"
    if t == "string_too_short":
        return f"must be at least {_plural(ctx['min_length'], 'character')} long"
    if t == "string_too_long":
        return f"must be at most {_plural(ctx['max_length'], 'character')} long"
    if t == "too_short":
        return f"must have at least {_plural(ctx['min_length'], 'item')}"
    if t == "too_long":
        return f"must have at most {_plural(ctx['max_length'], 'item')}"
    if t == "string_pattern_mismatch":
        return f"must match the pattern {ctx['pattern']}"
    if t == "frozen_instance":
        return "cannot be changed"
    # Our own validators' text is human already; anything else: pydantic's message
    # without the "Value error, " prefix. Neither carries the input.
    msg = str(err.get("msg", "is invalid"))
    msg = re.sub(r"^(Value|Assertion) error, ", "", msg)
    return msg[:1].lower() + msg[1:] if t != ERROR_TYPE else msg


def _unwrap(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [x for a in typing.get_args(annotation) for x in _unwrap(a)]
    return [annotation]


def _known_fields(root: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    model = _walk(root, loc[:-1])
    if model is None:
        return None
    return [f.alias or n for n, f in model.model_fields.items()]


def _walk(root: Any, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: Any = root
    for part in loc:
        options = [c for c in _unwrap(current) if c is not type(None)]
        nxt: Any = None
        for c in options:
            if isinstance(c, type) and issubclass(c, BaseModel):
                field = next((f for n, f in c.model_fields.items() if part in (n, f.alias)), None)
                if field is not None:
                    nxt = field.annotation
                    break
            elif typing.get_origin(c) in (list, dict):
                nxt = typing.get_args(c)[-1]
                break
        if nxt is None:
            return None
        current = nxt
    options = [c for c in _unwrap(current) if isinstance(c, type) and issubclass(c, BaseModel)]
    return options[0] if options else None


def translate(
    exc: ValidationError,
    *,
    file: str | None = None,
    index: int | None = None,
    prefix: str = "",
    root: type[BaseModel] | None = None,
    model: str | None = None,
) -> list[PolicyError]:
    """Turn a pydantic ValidationError into PolicyErrors (one per problem, sorted, deduplicated)."""
    out: list[PolicyError] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err["loc"])
        key_error = bool(loc) and loc[-1] == "[key]"
        if key_error:
            loc = loc[:-1]
        base = join_path(prefix, *[p for p in loc])
        ctx = err.get("ctx") or {}
        if err["type"] == ERROR_TYPE and ctx.get("problems"):
            for sub, msg in ctx["problems"]:
                out.append(PolicyError(file, index, join_path(base, *_sub_parts(sub)) if sub else base, msg, model=model))
            continue
        path = join_path(base, *_sub_parts(ctx["field"])) if err["type"] == ERROR_TYPE and ctx.get("field") else base
        known = _known_fields(root, loc) if err["type"] == "extra_forbidden" else None
        msg = _message(err, known)
        if key_error:
            msg = f"invalid name: {msg}"
        out.append(PolicyError(file, index, path, msg, model=model))
    seen: set[PolicyError] = set()
    unique = []
    for e in out:
        if e not in seen:
            seen.add(e)
            unique.append(e)
    return unique
