"""Deadline-bound polling: tests wait for a condition, never for a guessed amount of time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeAlias, TypeVar, overload

__all__ = ["async_wait_until", "wait_until"]

T = TypeVar("T")

# What a predicate returns: a value, or None or False for "not yet" (a wait returns the first truthy value).
Outcome: TypeAlias = "T | Literal[False] | None"

_NOTHING = object()


def _failure(
    message: str, timeout: float, attempts: int, last_value: Any, last_error: BaseException | None
) -> str:
    parts = [f"condition not met within {timeout:g}s after {attempts} attempts"]
    if message:
        parts.insert(0, message)
    if last_value is not _NOTHING:
        parts.append(f"last value: {last_value!r}")
    if last_error is not None:
        parts.append(f"last exception: {type(last_error).__name__}: {last_error}")
    return "; ".join(parts)


def wait_until(
    predicate: Callable[[], Outcome[T]],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Call ``predicate`` until it returns something truthy and return that.

    Exceptions from the predicate count as "not yet" (a server that is still starting refuses
    connections); the last one is reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    last_value: Any = _NOTHING
    last_error: BaseException | None = None
    while True:
        attempts += 1
        try:
            value = predicate()
        except Exception as exc:
            last_error = exc
        else:
            if value:
                return value
            last_value, last_error = value, None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(_failure(message, timeout, attempts, last_value, last_error)) from last_error
        time.sleep(min(interval, remaining))


@overload
async def async_wait_until(
    predicate: Callable[[], Awaitable[Outcome[T]]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
    *,
    fail_fast: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def async_wait_until(
    predicate: Callable[[], Outcome[T]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
    *,
    fail_fast: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def async_wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "",
    *,
    fail_fast: tuple[type[BaseException], ...] = (),
) -> Any:
    """``wait_until`` for event-loop code; ``predicate`` may be a plain or a coroutine function. An
    exception of a ``fail_fast`` type ends the wait at once; any other is retried until the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts = 0
    last_value: Any = _NOTHING
    last_error: BaseException | None = None
    while True:
        attempts += 1
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except fail_fast:
            raise
        except Exception as exc:
            last_error = exc
        else:
            if value:
                return value
            last_value, last_error = value, None
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(_failure(message, timeout, attempts, last_value, last_error)) from last_error
        await asyncio.sleep(min(interval, remaining))
