"""benchmarks/datapath_instructions.py: an Envoy that exited before answering ends the wait at once, and one
that lost its port to another process says so (the count then runs again on another port)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.datapath import BenchError
from benchmarks.datapath_instructions import PortLost, _first_connection
from tests.harness.ports import free_port


def _exited(log_path: Path, text: str) -> subprocess.Popen[bytes]:
    """A process that writes `text` to its log and exits 1, as Envoy does when it can't start."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.stderr.write({text!r}); sys.exit(1)"],
                                stdout=log, stderr=log)  # fmt: skip
    proc.wait(timeout=30)
    return proc


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[critical] cannot bind '127.0.0.1:4242': Address already in use", PortLost),
        ("[critical] error initializing configuration: bad bootstrap", BenchError),
    ],
    ids=["port-taken", "other"],
)
def test_an_envoy_that_exited_ends_the_wait_at_once(tmp_path: Path, text: str, error: type[BenchError]) -> None:
    log_path = tmp_path / "valgrind.log"
    proc = _exited(log_path, text)
    started = time.monotonic()
    with pytest.raises(error, match="exited \\(1\\) before answering") as raised:
        _first_connection(free_port(), "header", 180, proc, log_path)
    assert time.monotonic() - started < 60  # not the 180 s deadline
    assert (type(raised.value) is PortLost) == (error is PortLost)
    assert text in str(raised.value)
