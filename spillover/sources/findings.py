"""What a policy source logs when it builds a new desired state: the errors and warnings that are new
since the previous state (each is logged once, not again on every rebuild while it lasts), and the
models served from their last good config. Shared by the file source and the Kubernetes source; each
logs to its own logger."""

from __future__ import annotations

import logging

from spillover.policy.state import DesiredState

__all__ = ["kept_note", "log_new_findings"]


def log_new_findings(log: logging.Logger, state: DesiredState, previous: DesiredState | None) -> None:
    old_errors = set(previous.errors) if previous else set()
    for e in state.errors:
        if e not in old_errors:
            log.warning("invalid policy: %s", e)
    old_warnings = set(previous.warnings) if previous else set()
    for w in state.warnings:
        if w not in old_warnings:
            log.warning("policy warning: %s", w)


def kept_note(state: DesiredState) -> str:
    """`, kept last good config of a, b` for the end of a summary line; empty when none is kept."""
    return f", kept last good config of {', '.join(sorted(state.stale))}" if state.stale else ""
