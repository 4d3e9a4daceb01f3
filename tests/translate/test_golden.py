"""Golden files pin the translator's output; UPDATE_GOLDEN=1 rewrites them after a reviewed change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToJson

from spillover.translate import Resources, translate
from tests.translate.cases import CASES

GOLDEN = Path(__file__).parent / "golden"


def render(resources: Resources) -> str:
    document = {
        kind: {name: json.loads(MessageToJson(msg, sort_keys=True)) for name, msg in items.items()}
        for kind, items in (
            ("listeners", resources.listeners),
            ("routes", resources.routes),
            ("clusters", resources.clusters),
            ("endpoints", resources.endpoints),
            ("secrets", resources.secrets),
        )
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    path = GOLDEN / f"{case}.json"
    rendered = render(translate(CASES[case]()))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(rendered)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 and review the diff"
    assert rendered == path.read_text(), f"{case}: output differs from {path} (UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_byte_identical_on_repeated_calls(case: str) -> None:
    # Fresh IR objects each time: equality must come from values, not from object identity.
    first = translate(CASES[case]()).serialized()
    for _ in range(3):
        assert translate(CASES[case]()).serialized() == first


@pytest.mark.parametrize("case", sorted(CASES))
def test_names_are_sorted(case: str) -> None:
    resources = translate(CASES[case]())
    for items in resources.by_type_url().values():
        assert list(items) == sorted(items)
