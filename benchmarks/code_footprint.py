"""The code a request runs through: how many distinct 64-byte lines and 4 KiB pages of instructions Envoy
executes per request, from callgrind dumps with per-instruction counts.

The instruction count (benchmarks/datapath_instructions.py) says how much work a request is. It does not say
how much *different* code that work spans, and the span decides whether a request's code stays in the core's
caches: this machine's L2 is 512 KiB, and plain routing already runs ~250 KiB of code per request
(results/datapath-cpu-gap.md). A line or page counts when its instructions ran at least once per request on
average. Code run only now and then (a timer, the first request of a connection) is left out.

`python -m benchmarks.code_footprint --requests N DUMP...` reads dumps written by
`benchmarks.datapath_instructions --dump-instr --keep DIR` (the `*.part2.callgrind` files: the requests).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

__all__ = ["executed", "footprint", "main"]

LINE = 64
PAGE = 4096


def executed(dump: Path) -> Counter[int]:
    """Instructions executed at each address (self cost, the first event column) of a callgrind dump made
    with `--dump-instr=yes --dump-line=no`. A cost line right after `calls=` is the call's inclusive
    cost, already counted at the callee's own addresses: it moves the position but adds nothing."""
    counts: Counter[int] = Counter()
    position = 0
    after_call = False
    with dump.open(errors="replace") as lines:
        for line in lines:
            if line.startswith("calls="):
                after_call = True
                continue
            if not line or line[0] not in "0123456789+-*":
                continue
            fields = line.split()
            where = fields[0]
            if where.startswith("0x"):
                position = int(where, 16)
            elif where[0] == "+":
                position += int(where[1:])
            elif where[0] == "-":
                position -= int(where[1:])
            elif where != "*":
                position = int(where)
            if after_call:
                after_call = False
                continue
            if len(fields) > 1:
                counts[position] += int(fields[1])
    return counts


def footprint(counts: Counter[int], requests: int) -> dict[str, float]:
    """Per request: instructions, and the distinct code lines, KiB and pages run at least once per request."""
    hot = [address for address, n in counts.items() if n >= requests]
    lines = {address // LINE for address in hot}
    return {"instructions": sum(counts.values()) / requests, "lines": len(lines), "kib": len(lines) * LINE / 1024,
            "pages": len({address // PAGE for address in hot})}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.code_footprint", description=__doc__)
    parser.add_argument("--requests", type=int, required=True, help="the requests each dump counted")
    parser.add_argument("dumps", type=Path, nargs="+")
    args = parser.parse_args(argv)
    print("| dump | instructions / request | code lines / request | KiB | code pages / request |")
    print("|---|---|---|---|---|")
    for dump in args.dumps:
        f = footprint(executed(dump), args.requests)
        print(f"| {dump.name} | {f['instructions']:,.0f} | {f['lines']:,} | {f['kib']:.0f} | {f['pages']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
