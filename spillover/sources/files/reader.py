"""Reading and parsing policy files, each on its own, bounded in size and in time.

A file over `max_bytes` is refused without being read. Every other file is read and parsed in a worker
thread of its own; the caller waits for it until the file's deadline and then goes on without it: the
file counts as unreadable for now (its models keep their last good configuration), and its result is
taken as soon as the worker has it. A file on a hung network mount, or one that takes long to parse,
never holds up the others. Workers are daemon threads, so a read that never returns cannot keep the
process from exiting either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from spillover.policy.defaults import NO_DEFAULTS, PolicyDefaults
from spillover.policy.errors import PolicyError
from spillover.policy.validate import FileResult, PolicyFileTooLarge, load_file, read_policy_file

__all__ = ["FileJob", "refused", "start_job"]


@dataclass(frozen=True)
class Parsed:
    """What a worker produced: the bytes read, and their result (None: same bytes as before)."""

    data: bytes
    result: FileResult | None


@dataclass
class FileJob:
    """A file being read and parsed: for which version of the file (its stat fingerprint), since when."""

    fingerprint: tuple[int, ...]
    future: Future[Parsed | None]  # None: the file vanished
    started: float  # monotonic

    def wait(self, deadline: float) -> bool:
        """Waits until the job is done or `deadline` (monotonic) passed; True when done."""
        try:
            self.future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return False
        except Exception:  # reported by outcome()
            return True
        return True


def refused(name: str, message: str) -> FileResult:
    """A file that is there but can't be used now: its models keep their last good configuration."""
    return FileResult(name, (), (PolicyError(name, None, "", message),), unreadable=True)


def _work(
    path: Path, name: str, base_dir: str, max_bytes: int, previous: bytes | None, defaults: PolicyDefaults
) -> Parsed | None:
    try:
        data = read_policy_file(path, max_bytes)
    except FileNotFoundError:
        return None
    except PolicyFileTooLarge as exc:
        return Parsed(b"", refused(name, str(exc)))
    except OSError as exc:
        return Parsed(b"", refused(name, f"cannot read: {exc.strerror or exc}"))
    if previous is not None and data == previous:
        return Parsed(data, None)
    return Parsed(data, load_file(data, name, base_dir=base_dir, defaults=defaults))


def start_job(
    path: Path,
    name: str,
    base_dir: str,
    max_bytes: int,
    fingerprint: tuple[int, ...],
    previous: bytes | None,
    defaults: PolicyDefaults = NO_DEFAULTS,
    clock: Callable[[], float] = time.monotonic,
) -> FileJob:
    future: Future[Parsed | None] = Future()

    def run() -> None:
        try:
            future.set_result(_work(path, name, base_dir, max_bytes, previous, defaults))
        except BaseException as exc:  # a bug in a worker must surface, not vanish with the thread
            future.set_exception(exc)

    threading.Thread(target=run, name=f"policy-file {name}", daemon=True).start()
    return FileJob(fingerprint, future, clock())
