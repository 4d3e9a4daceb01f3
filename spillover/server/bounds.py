"""Bounds on what one xDS client may make the server hold, and how client text is shown.

Every field of a DiscoveryRequest is chosen by the client. Each one the server keeps (names, nonces,
versions, the node, NACK messages) has a limit here, and every piece of client text that reaches a log
line, `/debug/proxies` or `spillover status` goes through `printable` first (escaped, truncated).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

__all__ = ["LimitExceeded", "LogThrottle", "RequestBucket", "StreamLimits", "printable"]


class LimitExceeded(Exception):
    """A client went past one of the bounds; `rule` is a fixed text naming it (never client input)."""

    def __init__(self, rule: str, *, resource: bool = True) -> None:
        super().__init__(rule)
        self.rule = rule
        # True: a size or count bound (RESOURCE_EXHAUSTED); False: malformed input (INVALID_ARGUMENT).
        self.resource = resource


@dataclass(frozen=True)
class StreamLimits:
    """Per-stream and per-request bounds. The defaults fit real Envoys with large configurations (see the
    README's security section for the measurements they come from)."""

    # gRPC's max receive length: the largest DiscoveryRequest accepted (bigger ones never reach Python).
    max_request_bytes: int = 4 * 1024 * 1024
    max_node_id_length: int = 256
    max_node_cluster_length: int = 256
    max_node_metadata_bytes: int = 64 * 1024
    # The whole node as sent (metadata, extensions, client features, ...), of which only a trimmed copy
    # is kept.
    max_node_bytes: int = 256 * 1024
    max_type_url_length: int = 256
    max_types_per_stream: int = 32
    max_names_per_type: int = 50_000
    max_name_length: int = 1024
    max_nonce_length: int = 128
    max_version_length: int = 256
    # NACK messages are kept (and shown) truncated to this many characters, never refused.
    max_error_detail_chars: int = 1024
    # A stream that sends no first request within this time is ended.
    first_request_timeout: float = 30.0
    # Requests per stream: a bucket of `request_burst` refilled at `requests_per_second`. An Envoy sends a
    # few per push (one ACK per type); a stream past this is spinning the server, not syncing.
    requests_per_second: float = 200.0
    request_burst: int = 2000

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{item.name} must be a number > 0, got {value!r}")

    def check_names(self, names: Iterable[str], count: int) -> None:
        """`count` names of one type on one stream (after this request), `names` the ones it added."""
        if count > self.max_names_per_type:
            raise LimitExceeded(f"resource names: at most {self.max_names_per_type} per type and stream")
        limit = self.max_name_length
        if any(len(name) > limit for name in names):
            raise LimitExceeded(f"resource names: at most {limit} characters each")

    def check_type_url(self, type_url: str, known_types: int) -> None:
        """A type URL a stream has not used before, with `known_types` types already on the stream."""
        if len(type_url) > self.max_type_url_length:
            raise LimitExceeded(f"type_url: at most {self.max_type_url_length} characters", resource=False)
        if known_types >= self.max_types_per_stream:
            raise LimitExceeded(f"a stream subscribes to at most {self.max_types_per_stream} resource types")

    def check_token(self, field: str, value: str, limit: int) -> None:
        if len(value) > limit:
            raise LimitExceeded(f"{field}: at most {limit} characters", resource=False)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, limit: int = 256) -> str:
    """`text` safe for one log line or a terminal: control characters escaped, at most `limit` characters
    of the original kept (the rest counted). Backslashes are left alone, so applying it twice changes
    nothing."""
    if limit <= 0:
        raise ValueError("limit must be > 0")
    head = text[:limit]
    if head.isprintable() and len(text) <= limit:
        return text
    # Everything Python does not call printable goes: controls, format characters (bidi overrides),
    # line and paragraph separators, unassigned code points, lone surrogates.
    out = "".join(c if c.isprintable() else (_ESCAPES.get(c) or _escape(c)) for c in head)
    if len(text) > limit:
        out += f"...[{len(text) - limit} more characters]"
    return out


def has_control_characters(text: str) -> bool:
    return not text.isprintable()


class RequestBucket:
    """The request rate bound of one stream (a token bucket on the caller's clock)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens < 1:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1
        return True


class LogThrottle:
    """At most `burst` log lines per key per `period` seconds; the lines left out are counted, and the
    next line that is written says how many. A flood of hostile clients must not flood the log."""

    def __init__(self, burst: int = 10, period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.period = period
        self.clock = clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (window start, written, suppressed)

    def allow(self, key: str) -> tuple[bool, int]:
        """(write this line?, how many lines of this key were left out before it)."""
        now = self.clock()
        start, written, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self.period:
            start, written = now, 0
        if written < self.burst:
            self._windows[key] = (start, written + 1, 0)
            return True, suppressed
        self._windows[key] = (start, written, suppressed + 1)
        return False, 0
