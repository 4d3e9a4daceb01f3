"""Argument types shared by the commands: each refuses a bad value with the rule it breaks."""

from __future__ import annotations

import argparse

__all__ = ["host_port", "port", "positive_int", "seconds"]


def host_port(value: str) -> tuple[str, int]:
    host, sep, number = value.rpartition(":")
    if not sep or not host or not number.isdigit() or not 0 <= int(number) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT with a port 0-65535")
    return host, int(number)


def port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a port 1-65535")
    return int(value)


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of seconds") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be >= 0")
    return number


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an integer >= 1")
    return int(value)
