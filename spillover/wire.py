"""Protocol-buffer wire encoding that both the translation (the route table joined from encoded pieces)
and the xDS server (responses joined from encoded resources) write by hand. Imports nothing of ours."""

from __future__ import annotations

__all__ = ["varint"]


def varint(value: int) -> bytes:
    """`value` (>= 0) as a base-128 varint: tags and lengths of length-delimited fields."""
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)
