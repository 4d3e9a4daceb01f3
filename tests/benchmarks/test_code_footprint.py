"""The code-footprint reader on a real callgrind dump: a small program run under valgrind with per-instruction
counts, whose self costs must add up to the dump's own total."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.code_footprint import LINE, executed, footprint


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="no valgrind")
def test_per_instruction_counts_add_up_to_the_dumps_total_and_give_lines_and_pages(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out"
    # A real program with calls in it (`ls` calls into libc): the call lines' inclusive costs must not count.
    subprocess.run(["valgrind", "--tool=callgrind", "--dump-instr=yes", "--dump-line=no",
                    f"--callgrind-out-file={dump}", "ls", "/"], check=True, capture_output=True, timeout=120)  # fmt: skip
    total = next(int(line.split()[1]) for line in dump.read_text().splitlines() if line.startswith("summary:"))
    counts = executed(dump)
    assert sum(counts.values()) == total
    assert all(n > 0 for n in counts.values())
    # Run once: every address executed counts at `requests=1`; a line holds several instructions.
    once = footprint(counts, 1)
    assert once["instructions"] == total
    assert len(counts) > once["lines"] > once["pages"] > 0
    assert once["kib"] == once["lines"] * LINE / 1024
    # As if the dump held more requests than instructions: nothing ran once per request.
    assert footprint(counts, total + 1)["lines"] == 0
