"""`spillover status --watch` against a real `spillover serve --policies`: on a terminal (a pseudo-terminal
here) it redraws the tables in place, and each redraw shows what changed on the server since the last."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.serve import Spillover

pytestmark = pytest.mark.timeout(90)

POLICY = """\
apiVersion: spillover.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  model: {name}
  localBackend: {{endpoints: ["127.0.0.1:9"]}}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real `spillover serve --policies DIR`: (its admin address, DIR)."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "alpha.yaml").write_text(POLICY.format(name="alpha"))
    serve = Spillover(tmp_path, policies=policies)
    try:
        serve.start(timeout=30)
        yield f"127.0.0.1:{serve.admin_port}", policies
    finally:
        serve.stop()


class Terminal:
    """A pseudo-terminal for a child's stdout, read by a thread into ``text``."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.chunks: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO once the child has closed its side
                return
            if not data:
                return
            self.chunks.append(data.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def close(self) -> None:
        os.close(self.slave)
        self._reader.join(5)
        os.close(self.master)


def frames(text: str) -> list[str]:
    """The redraws: each starts with the cursor-home sequence (newlines as the program wrote them, not
    the terminal's CR LF)."""
    return [f for f in text.replace("\r\n", "\n").split("\x1b[H")[1:] if "\x1b[J" in f]


def test_watch_redraws_in_place_with_what_changed(server: tuple[str, Path]) -> None:
    admin, policies = server
    terminal = Terminal()
    watch = subprocess.Popen(
        [sys.executable, "-m", "spillover", "status", "--admin-address", admin, "--watch", "--interval", "0.2"],
        stdout=terminal.slave, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until(lambda: any("alpha" in f for f in frames(terminal.text)), timeout=20,
                   message="a first frame with model alpha")
        assert terminal.text.startswith("\x1b[2J"), "the screen is cleared once, then redrawn in place"
        (policies / "beta.yaml").write_text(POLICY.format(name="beta"))
        wait_until(lambda: any("beta" in f for f in frames(terminal.text)), timeout=20,
                   message="a later frame with model beta")
        drawn = frames(terminal.text)
        first_beta = next(i for i, f in enumerate(drawn) if "beta" in f)
        assert first_beta >= 1 and "alpha" in drawn[0] and "beta" not in drawn[0]
        for frame in drawn:
            assert frame.startswith(f"spillover status http://{admin}  every 0.2s  "), frame[:120]
            assert "(no proxies connected)" in frame
            # Every line ends by clearing the rest of it: a shorter redraw leaves no stale characters.
            assert all(line.endswith("\x1b[K") for line in frame.split("\x1b[J")[0].split("\n")), frame
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0
        assert watch.stderr is not None and "Traceback" not in watch.stderr.read()
    finally:
        watch.kill()
        watch.wait(5)
        terminal.close()


def test_watch_not_on_a_terminal_prints_frames_and_survives_a_server_going_away(tmp_path: Path) -> None:
    """Output captured: one frame after another, no escape sequences. A server that is not (or no longer)
    there is a line in the frame, retried, not an exit."""
    admin = f"127.0.0.1:{free_port()}"
    watch = subprocess.Popen(
        [sys.executable, "-m", "spillover", "status", "--admin-address", admin, "--watch", "--interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert watch.stdout is not None
        lines: list[str] = []
        while sum(line.startswith("spillover status ") for line in lines) < 3:
            line = watch.stdout.readline()
            assert line, "status --watch ended early"
            lines.append(line)
        assert not any("\x1b" in line for line in lines)
        errors = [line for line in lines if line.startswith("cannot read ")]
        assert len(errors) >= 2 and all(line.rstrip().endswith("(retrying)") for line in errors), lines
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0
    finally:
        watch.kill()
        watch.wait(5)
