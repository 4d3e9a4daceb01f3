"""The data-path benchmarks' per-process figures, on real child processes whose work is known: a busy loop
spends user time, reading /dev/zero system time, and a loop of getppid() makes one syscall per call."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from benchmarks.process_cost import PERF, SyscallCount, cpu_times

# Each child says "ready" and waits for a line, works, says "done" and waits for a line before exiting:
# the parent reads its figures in between.
_BUSY = "x = 0\nfor i in range(6_000_000):\n    x += i"
_KERNEL = "f = open('/dev/zero', 'rb', buffering=0)\nfor _ in range(3000):\n    f.read(1 << 20)"
_SYSCALLS = "import os\nfor _ in range(20_000):\n    os.getppid()"


@contextmanager
def _child(work: str) -> Iterator[subprocess.Popen[str]]:
    code = f"import sys\nprint('ready', flush=True)\nsys.stdin.readline()\n{work}\nprint('done', flush=True)\nsys.stdin.readline()\n"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)


def _step(child: subprocess.Popen[str]) -> None:
    """Let the child do its work; return once it has (it then waits for the next line)."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.stdout.readline() == "done\n"


def test_cpu_times_split_a_busy_loop_into_user_time_and_reading_dev_zero_into_system_time() -> None:
    with _child(_BUSY) as busy:
        user_before, sys_before = cpu_times(busy.pid)
        _step(busy)
        user, system = (after - before for after, before in zip(cpu_times(busy.pid), (user_before, sys_before),
                                                                strict=True))  # fmt: skip
    assert user >= 0.1
    assert system < user / 4
    with _child(_KERNEL) as kernel:
        user_before, sys_before = cpu_times(kernel.pid)
        _step(kernel)
        user, system = (after - before for after, before in zip(cpu_times(kernel.pid), (user_before, sys_before),
                                                                strict=True))  # fmt: skip
    assert system >= 0.1
    assert user < system


@pytest.mark.skipif(shutil.which(PERF) is None, reason="no perf")
def test_syscall_count_counts_the_syscalls_made_inside_the_block_only() -> None:
    with _child(_SYSCALLS) as child:
        with SyscallCount(child.pid) as count:
            _step(child)
        # 20,000 getppid() and a few for the child's own reads and writes of its pipes.
        assert 20_000 <= count.counts["syscalls"] < 20_200
        assert count.counts["context_switches"] >= 1  # it blocked on its stdin again
