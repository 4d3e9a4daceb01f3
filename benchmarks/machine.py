"""What the numbers were measured on."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

PACKAGES = ("grpcio", "protobuf", "xds-protos", "envoy-data-plane", "betterproto2")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _git() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"{commit}{' (+ uncommitted changes)' if dirty else ''}" if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe() -> dict[str, Any]:
    from google.protobuf.internal import api_implementation

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": _cpu_model(),
        "cores": cores,
        "usable_cores": usable,
        "ram_bytes": _ram_bytes(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "protobuf_backend": api_implementation.Type(),
        "versions": versions,
        "git": _git(),
    }
    info["summary"] = (
        f"{info['cpu_model']}, {usable} cores, {info['ram_bytes'] / 2**30:.1f} GiB RAM, "
        f"Python {info['python']}, grpcio {versions['grpcio']}, protobuf {versions['protobuf']} "
        f"({info['protobuf_backend']})"
    )
    return info
