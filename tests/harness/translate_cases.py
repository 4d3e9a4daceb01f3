"""The translator's golden cases: one directory per feature under golden/, its IR input in ir.yaml."""

from __future__ import annotations

from pathlib import Path

from spillover.ir import Gateway
from tests.harness.golden import case_names
from tests.harness.ir_yaml import load_gateway

GOLDEN = Path(__file__).resolve().parents[1] / "translate" / "golden"
INPUT = "ir.yaml"
CASES = case_names(GOLDEN, INPUT)


def load_case(name: str) -> Gateway:
    return load_gateway(GOLDEN / name / INPUT)
