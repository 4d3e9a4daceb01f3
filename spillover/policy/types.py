"""Scalar types shared by the policy models: durations, quantities, ports, names.

Each type validates with a message meant for the person who wrote the YAML (the
error translator shows it verbatim), and declares the JSON schema the CRD needs.
"""

from __future__ import annotations

import ipaddress
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

# Custom errors all use this type so the translator knows the message is already human.
ERROR_TYPE = "spillover"


def fail(message: str, field: str | None = None) -> PydanticCustomError:
    """An error whose message is shown as is; `field` is a sub-path below the failing node."""
    return PydanticCustomError(ERROR_TYPE, message, {"field": field} if field else None)


def fail_many(problems: list[tuple[Any, str]]) -> PydanticCustomError:
    """Several problems found by one cross-field check; the translator expands them."""
    first = problems[0][1]
    return PydanticCustomError(ERROR_TYPE, first, {"problems": problems})


# --- durations -------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Go-style durations ("1m30s", "500ms") or a plain number of seconds."""
    if isinstance(value, bool):
        raise fail('must be a duration such as "30s", "1m30s" or "500ms"')
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise fail("must be a non-negative duration")
        return float(value)
    if not isinstance(value, str):
        raise fail('must be a duration such as "30s", "1m30s" or "500ms"')
    text = value.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise fail('must be a duration such as "30s", "1m30s" or "500ms"')
    return total


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    if seconds == int(seconds):
        s = int(seconds)
        h, rem = divmod(s, 3600)
        m, s = divmod(rem, 60)
        return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"
    ms = seconds * 1000
    if ms == int(ms):
        return f"{int(ms)}ms"
    return f"{seconds}s"


_INT_OR_STRING = {"x-kubernetes-int-or-string": True}

# Seconds as float inside; written back in Go notation so a dumped model re-validates
# against the CRD (whose duration fields are int-or-string).
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_INT_OR_STRING),
]

# --- Kubernetes quantities (HPA MetricTarget.value / averageValue) ------------------------

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_QUANTITY_SUFFIX = {
    None: Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def parse_quantity(value: Any) -> float:
    if isinstance(value, bool):
        raise fail('must be a quantity such as 10, "500m" or "2Gi"')
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise fail("must be a finite quantity")
        return float(value)
    if not isinstance(value, str):
        raise fail('must be a quantity such as 10, "500m" or "2Gi"')
    m = _QUANTITY.match(value.strip())
    if not m:
        raise fail('must be a quantity such as 10, "500m" or "2Gi"')
    try:
        result = float(Decimal(m.group(1)) * _QUANTITY_SUFFIX[m.group(2)])
    except (InvalidOperation, OverflowError):
        raise fail('must be a quantity such as 10, "500m" or "2Gi"') from None
    if not math.isfinite(result):
        raise fail("must be a finite quantity")
    return result


def _format_quantity(value: float) -> int | str:
    return int(value) if value == int(value) and abs(value) < 2**53 else repr(value)


Quantity = Annotated[
    float,
    BeforeValidator(parse_quantity),
    PlainSerializer(_format_quantity),
    WithJsonSchema(_INT_OR_STRING),
]

# --- ports, percentages, names ----------------------------------------------------------


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail("must be an integer port number")
    if not 1 <= value <= 65535:
        raise fail("must be a port number between 1 and 65535")
    return value


Port = Annotated[int, BeforeValidator(_port), WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 65535})]

_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


def _port_or_name(value: Any) -> int | str:
    """A Service targetPort: a number, or a container port's name (IANA_SVC_NAME, like Kubernetes)."""
    if isinstance(value, str):
        if "--" in value or not _PORT_NAME.match(value):
            raise fail("must be a port number 1-65535 or a port name (1-15 lowercase letters, digits, '-')")
        return value
    return _port(value)


PortOrName = Annotated[int | str, BeforeValidator(_port_or_name), WithJsonSchema(_INT_OR_STRING)]


def _percentage(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail("must be an integer percentage")
    if not 0 <= value <= 100:
        raise fail("must be a percentage between 0 and 100")
    return value


Percentage = Annotated[
    int, BeforeValidator(_percentage), WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 100})
]

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _resource_name(value: Any) -> str:
    if not isinstance(value, str):
        raise fail("must be a string")
    if not 3 <= len(value) <= 63:
        raise fail("must be 3 to 63 characters long")
    if not DNS1123_LABEL.match(value):
        raise fail("must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit")
    return value


ResourceName = Annotated[
    str,
    BeforeValidator(_resource_name),
    WithJsonSchema({"type": "string", "minLength": 3, "maxLength": 63, "pattern": DNS1123_LABEL.pattern}),
]


def _label(value: Any) -> str:
    if not isinstance(value, str):
        raise fail("must be a string")
    if not 1 <= len(value) <= 63 or not DNS1123_LABEL.match(value):
        raise fail("must be a DNS-1123 label (1 to 63 lowercase letters, digits or '-')")
    return value


Label = Annotated[
    str, BeforeValidator(_label), WithJsonSchema({"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL.pattern})
]

# Model ids are what clients send in {"model": ...}: Hugging Face style ids with '/', '.',
# ':' and capitals must pass, whitespace and control characters must not.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


def _model_name(value: Any) -> str:
    if not isinstance(value, str):
        raise fail("must be a string")
    if not value:
        raise fail("must not be empty")
    if len(value) > 253:
        raise fail("must be at most 253 characters long")
    if not MODEL_NAME.match(value):
        raise fail("must start with a letter or digit and contain only letters, digits and . _ : / @ + -")
    return value


ModelName = Annotated[
    str,
    BeforeValidator(_model_name),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 253, "pattern": MODEL_NAME.pattern}),
]

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_name(value: Any) -> str:
    if not isinstance(value, str):
        raise fail("must be a string")
    if not _HEADER_NAME.match(value):
        raise fail("must be a valid HTTP header name")
    return value.lower()


HeaderName = Annotated[str, BeforeValidator(_header_name), WithJsonSchema({"type": "string"})]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")


def is_valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def split_host_port(text: str) -> tuple[str, int | None]:
    """'h:80' -> ('h', 80); '[::1]:80' -> ('::1', 80); 'h' -> ('h', None). Raises ValueError."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unterminated IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if not is_valid_host(f"[{host}]"):
            raise ValueError("invalid IPv6 address")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("unexpected text after IPv6 address")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
        if ":" in text:
            raise ValueError("IPv6 addresses must be written in brackets, e.g. [::1]:8000")
    if not host or not is_valid_host(host):
        raise ValueError("invalid host name")
    if port_text is None:
        return host, None
    if not port_text.isdigit():
        raise ValueError("port must be a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return host, port
