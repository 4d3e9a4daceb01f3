"""Policy files are parsed bounded: libyaml's loader, a size cap per file (refused without being read),
an expansion cap against alias bombs, and each file read and parsed on its own with a deadline, so that
one big, slow or broken file never holds up the changes of the others.

Before: a 10 MB file took 47-60 s to parse (pure-Python YAML) and 1 GB of RSS, and no other file's change
was applied meanwhile."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from spillover.policy import validate
from spillover.policy.validate import MAX_POLICY_FILE_BYTES, load_file, validate_documents
from spillover.sources.files.policies import DirectorySource
from tests.harness.policy_docs import base


def doc(model: str, rps: int = 1) -> dict[str, Any]:
    d = base(model=model, routing={"profiles": {"default": {"requestsPerSecond": rps}}})
    d["metadata"]["name"] = model
    return d


def many(count: int) -> bytes:
    """`count` valid ModelDeployments of about 870 bytes each (rendered once, then repeated by text:
    dumping thousands of documents with PyYAML would take longer than what is measured)."""
    template = doc("bulk-NNNNN")
    template["metadata"]["labels"] = {f"k{j}": "v" * 60 for j in range(8)}
    text = yaml.safe_dump(template)
    return "---\n".join(text.replace("NNNNN", f"{i:05d}") for i in range(count)).encode()


def replace(path: Path, content: bytes) -> None:
    """`path` holds `content` at once (a rename), never a partly written file."""
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_bytes(content)
    os.replace(staged, path)


def rps(source: DirectorySource, model: str) -> float | None:
    return source.state.models[model].spec.routing.effective_profiles()["default"].requests_per_second


def test_the_c_loader_is_used_and_keeps_line_numbers() -> None:
    assert validate.C_LOADER, "PyYAML without libyaml: policy files would parse ~10x slower"
    result = load_file(b"kind: ModelDeployment\nspec:\n  model: a\n  model: b\n", "dup.yaml")
    (error,) = result.errors
    assert error.line == 4 and "duplicate key 'model'" in error.message


def test_a_10_mb_file_is_refused_at_once_while_another_files_change_applies(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc("alpha", rps=1)))
    source = DirectorySource(tmp_path)
    assert source.poll() is not None and rps(source, "alpha") == 1
    huge = many(15_000)
    assert len(huge) > 10 * 1024 * 1024
    (tmp_path / "huge.yaml").write_bytes(huge)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc("alpha", rps=7)))
    started = time.monotonic()
    state = source.poll()
    took = time.monotonic() - started
    assert took < 1.0, f"the poll took {took:.2f}s"
    assert state is not None and rps(source, "alpha") == 7
    (error,) = state.errors
    assert error.file == "huge.yaml"
    assert error.message == f"file is {len(huge)} bytes, over the limit of {MAX_POLICY_FILE_BYTES} bytes"
    assert set(state.models) == {"alpha"}


def test_the_size_cap_is_configurable_and_an_oversized_file_keeps_its_last_good_config(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc("alpha", rps=3)))
    source = DirectorySource(tmp_path, max_file_bytes=4096)
    source.poll()
    grown = doc("alpha", rps=9)
    grown["metadata"]["annotations"] = {"notes": "n" * 5000}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(grown))
    state = source.poll()
    assert state is not None and rps(source, "alpha") == 3 and state.stale == {"alpha"}
    assert [str(e) for e in state.errors] == [
        f"a.yaml: file is {(tmp_path / 'a.yaml').stat().st_size} bytes, over the limit of 4096 bytes"
    ]


def test_a_file_slower_than_its_deadline_does_not_hold_up_the_others(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc("alpha", rps=1)))
    (tmp_path / "bulk.yaml").write_bytes(many(10))
    source = DirectorySource(tmp_path, parse_timeout=0.001)
    deadline = time.monotonic() + 10
    while source.poll() is None or "bulk-00000" not in source.state.models:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # A big rewrite of bulk.yaml (about 0.5 s of parsing) and a small change of a.yaml, polled at once.
    # Each replaced whole, as a deploy does: a poll between write_bytes' truncation and its write would
    # rightly read an empty bulk.yaml, with no models.
    replace(tmp_path / "bulk.yaml", many(1000))
    replace(tmp_path / "a.yaml", yaml.safe_dump(doc("alpha", rps=5)).encode())
    seen_pending = False
    while "bulk-00999" not in source.state.models:
        assert time.monotonic() < deadline, source.state.errors
        state = source.poll()
        if state is not None and any("still being read or parsed" in e.message for e in state.errors):
            seen_pending = True
            # Meanwhile: a.yaml's change is in, bulk.yaml's models keep their last good configuration.
            assert rps(source, "alpha") == 5 and "bulk-00000" in state.models and "bulk-00000" in state.stale
        time.sleep(0.02)
    assert seen_pending
    assert not source.state.errors and len(source.state.models) == 1001


def test_an_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "\n".join(lines).encode()  # 10**9 values in under 400 bytes
    started = time.monotonic()
    result = load_file(bomb, "bomb.yaml")
    assert time.monotonic() - started < 1.0
    assert [e.message for e in result.errors] == [
        f"invalid YAML: expands to more than {validate.MAX_DOCUMENT_VALUES} values (YAML aliases?)"
    ]


def test_a_dangling_symlink_is_an_unreadable_file_not_a_deleted_one(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml.src"
    target.write_text(yaml.safe_dump(doc("alpha")))
    policies = tmp_path / "policies"
    policies.mkdir()
    os.symlink(target, policies / "alpha.yaml")
    source = DirectorySource(policies)
    source.poll()
    assert set(source.state.models) == {"alpha"}
    target.unlink()
    state = source.poll()
    assert state is not None and set(state.models) == {"alpha"} and state.stale == {"alpha"}
    assert [str(e) for e in state.errors] == ["alpha.yaml: cannot read: No such file or directory"]


def test_validate_refuses_an_oversized_file_by_name(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_POLICY_FILE_BYTES + 1))
    _, errors = validate_documents([str(big)])
    assert [str(e) for e in errors] == [
        f"{big}: file is {MAX_POLICY_FILE_BYTES + 1} bytes, over the limit of {MAX_POLICY_FILE_BYTES} bytes"
    ]
