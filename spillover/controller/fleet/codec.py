"""Compact, bounded documents in Lease annotations, and Lease names (pure).

A Lease is the coordination object: small, watched by every replica, and limited like any object
(annotations 256 KiB in total, the whole object about 1.5 MiB in etcd). What the fleet keeps there is
JSON, compressed (node ids and model names repeat their prefixes, so zlib shrinks them 5-10x) and
base64-encoded: `z1:<base64 of zlib of compact JSON>`. Reading one is bounded: at most `max_bytes`
are inflated (a hostile or broken annotation cannot make a replica allocate more), and anything that
is not that format is a ValueError naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import zlib
from typing import Any

__all__ = ["MAX_DOCUMENT_BYTES", "lease_name", "pack", "unpack"]

_PREFIX = "z1:"
MAX_DOCUMENT_BYTES = 8 << 20
_NAME_OK = re.compile(r"[^a-z0-9-]+")
_MAX_NAME = 63


def pack(value: Any) -> str:
    """`value` as `z1:` text (sorted keys: the same document always gives the same text)."""
    raw = json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    return _PREFIX + base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def unpack(text: object, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """The document of `pack`'s text; ValueError when it is not one, or inflates past `max_bytes`."""
    if not isinstance(text, str) or not text.startswith(_PREFIX):
        raise ValueError(f"not a {_PREFIX} document")
    try:
        compressed = base64.b64decode(text[len(_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, max_bytes + 1)
    except zlib.error as exc:
        raise ValueError(f"not zlib data ({exc})") from None
    if len(raw) > max_bytes or inflater.unconsumed_tail:
        raise ValueError(f"inflates past {max_bytes} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None


def lease_name(prefix: str, identity: str) -> str:
    """A DNS-1123 label for `prefix-identity`: lower case, [a-z0-9-], at most 63 characters. A name
    that had to be changed gets a hash of the identity, so that two identities never share a Lease."""
    wanted = f"{prefix}-{identity}"
    cleaned = _NAME_OK.sub("-", wanted.lower()).strip("-")
    if cleaned == wanted and len(cleaned) <= _MAX_NAME:
        return cleaned
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return f"{cleaned[: _MAX_NAME - len(digest) - 1].rstrip('-')}-{digest}"
