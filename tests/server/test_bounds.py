"""Bounds on client input, and how client text is shown."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from spillover.server.bounds import LimitExceeded, LogThrottle, StreamLimits, printable
from spillover.server.streams.base import check_node
from tests.harness.clock import FakeClock


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("line\nforged INFO line", "line\\nforged INFO line"),
        ("\r\t\x00\x1b[31mred", "\\r\\t\\x00\\x1b[31mred"),
        ("bidi \u202eevil", "bidi \\u202eevil"),
        ("sep\u2028x", "sep\\u2028x"),
        ("caf\u00e9 \u4e2d\u6587", "caf\u00e9 \u4e2d\u6587"),  # printable non-ASCII stays
        ("back\\slash", "back\\slash"),
        ("\ud800", "\\ud800"),
    ],
)
def test_printable_escapes_what_could_break_a_line_or_a_terminal(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(printable(text)) == printable(text)


def test_printable_cuts_and_says_how_much() -> None:
    shown = printable("x" * 1_000_000, 100)
    assert shown == "x" * 100 + "...[999900 more characters]"


def test_log_throttle_counts_what_it_leaves_out() -> None:
    clock = FakeClock()
    throttle = LogThrottle(burst=2, period=10, clock=clock)
    assert [throttle.allow("k") for _ in range(5)] == [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0)]
    assert throttle.allow("other") == (True, 0)
    clock.advance(10)
    assert throttle.allow("k") == (True, 3)
    assert throttle.allow("k") == (True, 0)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_names_per_type must be a number > 0"):
        StreamLimits(max_names_per_type=0)


def _node(**fields: object) -> base_pb2.Node:
    return base_pb2.Node(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("node", "rule", "resource"),
    [
        (_node(id="x" * 257), "node.id: at most 256 characters", True),
        (_node(id="n", cluster="c" * 257), "node.cluster: at most 256 characters", True),
        (_node(id="n\nforged"), "node.id: control characters are not allowed", False),
        (_node(id="n", cluster="c\x1b"), "node.cluster: control characters are not allowed", False),
        (
            _node(id="n", metadata=struct_pb2.Struct(fields={"k": struct_pb2.Value(string_value="v" * 70_000)})),
            "node.metadata: at most 65536 bytes",
            True,
        ),
        (_node(id="n", user_agent_name="u" * 300_000), "node: at most 262144 bytes", True),
    ],
)
def test_node_bounds(node: base_pb2.Node, rule: str, resource: bool) -> None:
    with pytest.raises(LimitExceeded) as raised:
        check_node(node, StreamLimits())
    assert raised.value.rule == rule and raised.value.resource is resource


def test_a_real_sized_node_passes() -> None:
    metadata = struct_pb2.Struct(fields={"spillover.admin_port": struct_pb2.Value(number_value=24901)})
    check_node(_node(id="spillover-gateway-7d9f-abcde", cluster="spillover-gateway", metadata=metadata), StreamLimits())
