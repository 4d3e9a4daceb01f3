"""Golden directories: one directory per case, holding the case's input files and its golden outputs.

`UPDATE_GOLDEN=1` rewrites the goldens after a reviewed change; without it a stale golden fails with a
unified diff. A directory that holds no case input, a case without its goldens and any file nobody
expects fail too, so the goldens can neither rot silently nor outlive their case.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

__all__ = ["case_names", "check_case", "diff", "orphans", "updating"]

_MAX_DIFF_LINES = 200


def updating() -> bool:
    return os.environ.get("UPDATE_GOLDEN") == "1"


def case_names(root: Path, input_file: str) -> list[str]:
    """The cases under `root`: the subdirectories that hold `input_file`, sorted."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / input_file).is_file())


def orphans(root: Path, input_file: str) -> list[str]:
    """Entries of `root` that are not cases: directories without `input_file`, stray files."""
    if not root.is_dir():
        return [f"{root} does not exist"]
    problems = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            problems.append(f"{entry}: a stray file; every case is a directory")
        elif not (entry / input_file).is_file():
            problems.append(f"{entry}: no {input_file}, so no case produces its goldens; remove it")
    return problems


def diff(expected: str, actual: str, path: Path) -> str:
    lines = list(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"{path} (golden)",
            tofile=f"{path} (now)",
        )
    )
    if len(lines) > _MAX_DIFF_LINES:
        lines = [*lines[:_MAX_DIFF_LINES], f"... {len(lines) - _MAX_DIFF_LINES} more diff lines\n"]
    return "".join(lines)


def check_case(case_dir: Path, inputs: Collection[str], goldens: Mapping[str, str]) -> None:
    """Compare (or, updating, write) every golden of one case; fail on anything unexpected in its directory.

    `inputs` are the file names the case is read from, `goldens` maps each golden file name to the text
    the code produces now."""
    missing_inputs = sorted(name for name in inputs if not (case_dir / name).is_file())
    if missing_inputs:
        pytest.fail(f"{case_dir}: missing input file(s) {', '.join(missing_inputs)}")
    unexpected = sorted(
        entry.name for entry in case_dir.iterdir() if entry.name not in inputs and entry.name not in goldens
    )
    if unexpected:
        pytest.fail(
            f"{case_dir}: unexpected file(s) {', '.join(unexpected)}; a case holds only "
            f"{', '.join(sorted([*inputs, *goldens]))}"
        )
    problems = []
    for name, actual in sorted(goldens.items()):
        path = case_dir / name
        expected = path.read_text() if path.is_file() else None
        if expected == actual:
            continue
        if updating():
            path.write_text(actual)
        elif expected is None:
            problems.append(f"{path} is missing: run with UPDATE_GOLDEN=1 and review the new file")
        else:
            problems.append(diff(expected, actual, path))
    if problems:
        pytest.fail(
            "output differs from the goldens (UPDATE_GOLDEN=1 rewrites them; review the diff first):\n"
            + "\n".join(problems),
            pytrace=False,
        )
