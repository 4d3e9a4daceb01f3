"""Giving freed memory back to the operating system after a large release (many node groups forgotten).

CPython frees objects into the C allocator, which keeps the pages for reuse: after thousands of groups
are dropped, the process's RSS (what a container's memory limit counts) stays at its high-water mark
although nothing holds the memory. glibc's `malloc_trim` returns the free pages; elsewhere this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

__all__ = ["release_free_memory"]

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """True when the C allocator was asked to return its free pages."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
