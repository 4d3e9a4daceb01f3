"""The subscriptions streams share: one set, one sorted tuple and one encoding per distinct request."""

from __future__ import annotations

__all__ = ["SHARED_SUBSCRIPTIONS", "SharedSubscriptions"]


class SharedSubscriptions:
    """Streams asking for the same names share one set, one sorted tuple and one encoding of them (for
    100 names, about 7 KiB a stream). Streams never change them in place (a new subscription gets new
    ones). Bounded: once it holds `max_entries` subscriptions, `max_names` names or `max_bytes` of
    encodings, it starts over (streams keep what they have; only newcomers stop sharing with them)."""

    def __init__(self, max_entries: int = 4096, max_names: int = 100_000, max_bytes: int = 16 << 20) -> None:
        self.max_entries, self.max_names, self.max_bytes = max_entries, max_names, max_bytes
        self._names: dict[tuple[str, ...], tuple[set[str], tuple[str, ...]]] = {}
        self._spans: dict[bytes, bytes] = {}
        self._held_names = self._held_bytes = 0

    def names(self, requested: set[str]) -> tuple[set[str], tuple[str, ...]]:
        key = tuple(sorted(requested))
        shared = self._names.get(key)
        if shared is None:
            self._make_room(len(key), 0)
            shared = self._names[key] = (requested, key)
        return shared

    def span(self, span: bytes | None) -> bytes | None:
        if span is None:
            return None
        shared = self._spans.get(span)
        if shared is None:
            self._make_room(0, len(span))
            shared = self._spans[span] = span
        return shared

    def _make_room(self, names: int, size: int) -> None:
        if (
            len(self._names) + len(self._spans) >= self.max_entries
            or self._held_names + names > self.max_names
            or self._held_bytes + size > self.max_bytes
        ):
            self._names.clear()
            self._spans.clear()
            self._held_names = self._held_bytes = 0
        self._held_names += names
        self._held_bytes += size


SHARED_SUBSCRIPTIONS = SharedSubscriptions()
