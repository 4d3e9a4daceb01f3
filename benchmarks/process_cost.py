"""What a process spends over a window of a benchmark: its CPU split into user and system time, and how many
syscalls and context switches it made.

User and system time come from /proc/PID/stat (all threads, clock ticks). The syscalls come from perf's
raw_syscalls:sys_enter tracepoint (a software event: it counts in a VM without hardware counters):
`SyscallCount` starts `perf stat -p PID` with its events off (`-D -1`) and switches them on and off
through perf's control fifo, waiting for each acknowledgement, so the count covers exactly the wrapped
code and not perf's own start-up or whatever the process did before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["EVENTS", "PERF", "SyscallCount", "cpu_seconds", "cpu_times"]

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
PERF = "/usr/bin/perf"
# perf's event name -> the key it is reported under.
EVENTS = {"raw_syscalls:sys_enter": "syscalls", "context-switches": "context_switches"}


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads (/proc/PID/stat utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) * _TICK_S, int(fields[12]) * _TICK_S


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    return sum(cpu_times(pid))


class SyscallCount:
    """`with SyscallCount(pid) as count:` ... then `count.counts`: {"syscalls": n, "context_switches": n}
    the process made inside the block (all its threads)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.counts: dict[str, int] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="spillover-perf-"))
        self._perf: subprocess.Popen[bytes] | None = None
        self._ctl: IO[str] | None = None
        self._ack: IO[str] | None = None

    def _command(self, word: str) -> None:
        assert self._ctl is not None and self._ack is not None
        self._ctl.write(word + "\n")
        self._ctl.flush()
        answer = self._ack.readline()  # blocks until perf has done it
        if "ack" not in answer:
            raise RuntimeError(f"perf did not acknowledge {word!r}: {answer!r}")

    def __enter__(self) -> SyscallCount:
        ctl, ack = self._dir / "ctl", self._dir / "ack"
        os.mkfifo(ctl)
        os.mkfifo(ack)
        self._perf = subprocess.Popen(
            [PERF, "stat", "-x", ",", "-e", ",".join(EVENTS), "-D", "-1", "--control", f"fifo:{ctl},{ack}",
             "-p", str(self.pid), "-o", str(self._dir / "out")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(self._dir / "err").open("wb"),
        )  # fmt: skip
        # Opening a fifo blocks until the other end opens it: perf is listening once these return.
        self._ctl = ctl.open("w")
        self._ack = ack.open("r")
        self._command("enable")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:  # fmt: skip
        assert self._perf is not None and self._ctl is not None and self._ack is not None
        try:
            if kind is None:
                self._command("disable")
        finally:
            if self._perf.poll() is None:
                self._perf.send_signal(signal.SIGINT)  # perf stat writes its counts on SIGINT
            self._perf.wait(timeout=30)
            self._ctl.close()
            self._ack.close()
        if kind is not None:
            return
        for line in (self._dir / "out").read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2] in EVENTS and parts[0].isdigit():
                self.counts[EVENTS[parts[2]]] = int(parts[0])
        if set(self.counts) != set(EVENTS.values()):
            raise RuntimeError(f"perf stat counted {self.counts}: {(self._dir / 'err').read_text()[-1000:]}")
