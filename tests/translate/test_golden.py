"""Golden files pin the translator's output, one directory per case (see tests/harness/golden.py).

Each case directory holds its IR (ir.yaml) and one JSON file per xDS resource type, always all five
(an empty type is `{}`), so a missing file is always an error; a case with its splits in runtime
(`split_weights: runtime`) also holds runtime.json, the split weights' layer. UPDATE_GOLDEN=1 rewrites
them after a reviewed change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message

from spillover.translate import Resources, translate
from tests.harness import golden
from tests.harness.translate_cases import CASES, GOLDEN, INPUT, load_case

RESOURCE_FILES = ("listeners", "routes", "clusters", "endpoints", "secrets")


def render(resources: Resources) -> dict[str, str]:
    """One JSON document per resource type: name -> message, keys sorted."""
    by_kind: dict[str, Mapping[str, Message]] = {
        "listeners": resources.listeners,
        "routes": resources.routes,
        "clusters": resources.clusters,
        "endpoints": resources.endpoints,
        "secrets": resources.secrets,
    }
    kinds = list(RESOURCE_FILES)
    if resources.runtimes:
        by_kind["runtime"] = resources.runtimes
        kinds.append("runtime")
    return {
        f"{kind}.json": json.dumps(
            {name: json.loads(MessageToJson(msg, sort_keys=True)) for name, msg in by_kind[kind].items()},
            indent=2,
            sort_keys=True,
        )
        + "\n"
        for kind in kinds
    }


def test_there_are_cases() -> None:
    assert len(CASES) >= 20, CASES


def test_every_golden_directory_is_a_case() -> None:
    assert golden.orphans(GOLDEN, INPUT) == []


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    golden.check_case(GOLDEN / case, {INPUT}, render(translate(load_case(case))))


@pytest.mark.parametrize("case", CASES)
def test_byte_identical_on_repeated_calls(case: str) -> None:
    # Fresh IR objects each time: equality must come from values, not from object identity.
    first = translate(load_case(case)).serialized()
    for _ in range(3):
        assert translate(load_case(case)).serialized() == first


@pytest.mark.parametrize("case", CASES)
def test_names_are_sorted(case: str) -> None:
    resources = translate(load_case(case))
    for items in resources.by_type_url().values():
        assert list(items) == sorted(items)


# -- the golden mechanism itself ------------------------------------------------------------------


def _case_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    case = tmp_path / "golden" / "case"
    case.mkdir(parents=True)
    for name, text in files.items():
        (case / name).write_text(text)
    return case


def test_a_stale_golden_fails_with_a_diff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    case = _case_dir(tmp_path, {INPUT: "name: g\n", "out.json": '{\n  "port": 24010\n}\n'})
    with pytest.raises(pytest.fail.Exception) as failure:
        golden.check_case(case, {INPUT}, {"out.json": '{\n  "port": 24011\n}\n'})
    message = str(failure.value)
    assert '-  "port": 24010' in message and '+  "port": 24011' in message
    assert "UPDATE_GOLDEN=1" in message
    assert (case / "out.json").read_text() == '{\n  "port": 24010\n}\n'


def test_a_case_without_its_goldens_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    case = _case_dir(tmp_path, {INPUT: "name: g\n"})
    with pytest.raises(pytest.fail.Exception, match=r"out\.json is missing"):
        golden.check_case(case, {INPUT}, {"out.json": "{}\n"})


def test_update_golden_writes_the_goldens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    case = _case_dir(tmp_path, {INPUT: "name: g\n", "a.json": "old\n"})
    golden.check_case(case, {INPUT}, {"a.json": "new\n", "b.json": "{}\n"})
    assert (case / "a.json").read_text() == "new\n"
    assert (case / "b.json").read_text() == "{}\n"


def test_unexpected_files_in_a_case_fail_even_when_updating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    case = _case_dir(tmp_path, {INPUT: "name: g\n", "stale.json": "{}\n"})
    with pytest.raises(pytest.fail.Exception, match=r"unexpected file\(s\) stale\.json"):
        golden.check_case(case, {INPUT}, {"a.json": "{}\n"})


def test_a_golden_directory_without_a_case_is_an_orphan(tmp_path: Path) -> None:
    root = tmp_path / "golden"
    _case_dir(tmp_path, {INPUT: "name: g\n"})
    (root / "gone").mkdir()
    (root / "gone" / "routes.json").write_text("{}\n")
    (root / "notes.txt").write_text("x\n")
    problems = golden.orphans(root, INPUT)
    assert len(problems) == 2
    assert "gone: no ir.yaml" in problems[0]
    assert "notes.txt: a stray file" in problems[1]
    assert golden.case_names(root, INPUT) == ["case"]
