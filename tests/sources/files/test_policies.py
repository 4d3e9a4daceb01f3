"""The file source: pure state building, and a real directory watched by polling."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from spillover.policy.validate import load_file
from spillover.sources.files.policies import DesiredState, DirectorySource, Origin, build_desired_state
from tests.harness.policy_docs import base, set_path


def doc(model: str, name: str | None = None, **spec: Any) -> dict[str, Any]:
    d = base(model=model, **spec)
    d["metadata"]["name"] = name or model
    return d


def text(*docs: dict[str, Any]) -> bytes:
    return yaml.safe_dump_all(docs).encode()


def invalid(model: str) -> dict[str, Any]:
    return set_path(doc(model), "spec.routing", {"profiles": {"default": {"requestsPerSecond": -1}}})


def rps(state: DesiredState, model: str) -> float | None:
    return state.models[model].spec.routing.effective_profiles()["default"].requests_per_second


# --- pure ----------------------------------------------------------------------------------


def test_build_initial_state() -> None:
    s = build_desired_state([load_file(text(doc("aaa"), doc("bbb")), "a.yaml"), load_file(text(doc("ccc")), "b.yaml")])
    assert list(s.models) == ["aaa", "bbb", "ccc"]
    assert s.origins["ccc"] == Origin("b.yaml", 0)
    assert (s.errors, s.stale, s.version) == ((), frozenset(), 1)


def test_invalid_document_keeps_last_good_and_others_unaffected() -> None:
    good = doc("aaa", routing={"profiles": {"default": {"requestsPerSecond": 5}}})
    s1 = build_desired_state([load_file(text(good, doc("bbb")), "a.yaml")])
    s2 = build_desired_state([load_file(text(invalid("aaa"), doc("bbb", environment="staging")), "a.yaml")], s1)
    assert rps(s2, "aaa") == 5 and s2.stale == {"aaa"}
    assert s2.models["bbb"].spec.environment == "staging"
    assert [str(e) for e in s2.errors_for_model("aaa")] == [
        "a.yaml[0] spec.routing.profiles.default.requestsPerSecond: must be >= 0"]
    assert s2.version == 2


def test_invalid_document_without_model_name_keeps_model_at_same_index() -> None:
    s1 = build_desired_state([load_file(text(doc("aaa")), "a.yaml")])
    broken = doc("aaa")
    broken["spec"]["model"] = 42
    s2 = build_desired_state([load_file(text(broken), "a.yaml")], s1)
    assert "aaa" in s2.models and s2.stale == {"aaa"}


def test_yaml_syntax_error_keeps_every_model_of_the_file() -> None:
    s1 = build_desired_state([load_file(text(doc("aaa"), doc("bbb")), "a.yaml"), load_file(text(doc("ccc")), "b.yaml")])
    s2 = build_desired_state([load_file(b"spec: [", "a.yaml"), load_file(text(doc("ccc")), "b.yaml")], s1)
    assert set(s2.models) == {"aaa", "bbb", "ccc"} and s2.stale == {"aaa", "bbb"}
    assert [e.file for e in s2.errors] == ["a.yaml"]


def test_new_invalid_model_is_not_served() -> None:
    s = build_desired_state([load_file(text(invalid("aaa")), "a.yaml")])
    assert dict(s.models) == {} and len(s.errors) == 1


def test_deleted_file_removes_its_models() -> None:
    s1 = build_desired_state([load_file(text(doc("aaa")), "a.yaml"), load_file(text(doc("bbb")), "b.yaml")])
    s2 = build_desired_state([load_file(text(doc("bbb")), "b.yaml")], s1)
    assert list(s2.models) == ["bbb"]


def test_invalid_doc_in_another_file_does_not_resurrect_a_deleted_model() -> None:
    s1 = build_desired_state([load_file(text(doc("aaa")), "a.yaml")])
    s2 = build_desired_state([load_file(text(invalid("aaa")), "b.yaml")], s1)
    assert dict(s2.models) == {}


def test_incumbent_wins_a_duplicate_and_the_newcomer_is_named() -> None:
    s1 = build_desired_state([load_file(text(doc("aaa")), "z.yaml")])
    s2 = build_desired_state([load_file(text(doc("aaa", name="other")), "a.yaml"), load_file(text(doc("aaa")), "z.yaml")], s1)
    assert s2.origins["aaa"] == Origin("z.yaml", 0)
    assert [str(e) for e in s2.errors] == ['a.yaml[0] spec.model: duplicate model "aaa" (also defined in z.yaml[0])']


def test_unchanged_input_returns_the_same_state() -> None:
    s1 = build_desired_state([load_file(text(doc("aaa")), "a.yaml")])
    assert build_desired_state([load_file(text(doc("aaa")), "a.yaml")], s1) is s1


def test_state_is_immutable() -> None:
    s = build_desired_state([load_file(text(doc("aaa")), "a.yaml")])
    with pytest.raises(TypeError):
        s.models["x"] = s.models["aaa"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        s.version = 3  # type: ignore[misc]


# --- a real directory ------------------------------------------------------------------------


def poll_until(src: DirectorySource, cond: Callable[[DesiredState], bool], timeout: float = 5.0) -> DesiredState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        src.poll()
        if cond(src.state):
            return src.state
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s; state: {src.state}")


def write(path: Path, data: bytes) -> None:
    # Atomic replace, as editors and kubectl-style tools do.
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_directory_add_modify_invalid_delete(tmp_path: Path) -> None:
    src = DirectorySource(tmp_path)
    s = src.poll()
    assert s is not None and dict(s.models) == {}

    write(tmp_path / "a.yaml", text(doc("aaa", routing={"profiles": {"default": {"requestsPerSecond": 1}}})))
    (tmp_path / "notes.txt").write_text("ignored")
    poll_until(src, lambda s: "aaa" in s.models)

    write(tmp_path / "b.yml", text(doc("bbb")))
    poll_until(src, lambda s: set(s.models) == {"aaa", "bbb"})

    write(tmp_path / "a.yaml", text(doc("aaa", routing={"profiles": {"default": {"requestsPerSecond": 2}}})))
    poll_until(src, lambda s: rps(s, "aaa") == 2)

    write(tmp_path / "a.yaml", text(invalid("aaa")))
    s = poll_until(src, lambda s: bool(s.errors))
    assert rps(s, "aaa") == 2 and s.stale == {"aaa"} and "bbb" in s.models

    write(tmp_path / "a.yaml", text(doc("aaa", routing={"profiles": {"default": {"requestsPerSecond": 3}}})))
    s = poll_until(src, lambda s: not s.errors)
    assert rps(s, "aaa") == 3 and not s.stale

    (tmp_path / "a.yaml").unlink()
    poll_until(src, lambda s: set(s.models) == {"bbb"})


def test_an_error_is_logged_once_while_it_lasts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "spillover.policy")
    write(tmp_path / "a.yaml", text(doc("aaa")))
    src = DirectorySource(tmp_path)
    src.poll()
    write(tmp_path / "a.yaml", text(invalid("aaa")))
    poll_until(src, lambda s: bool(s.errors))
    write(tmp_path / "b.yaml", text(doc("bbb")))  # a rebuild while the error lasts
    poll_until(src, lambda s: "bbb" in s.models)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("invalid policy: ")]) == 1
    assert messages[-1].endswith("2 model(s), 1 error(s), kept last good config of aaa"), messages


def test_same_size_rewrite_within_the_same_mtime_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    write(path, text(doc("aaa", environment="one")))
    st = path.stat()
    src = DirectorySource(tmp_path)
    src.poll()
    path.write_bytes(text(doc("aaa", environment="two")))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # coarse clock: mtime unchanged
    assert path.stat().st_size == st.st_size
    poll_until(src, lambda s: s.models["aaa"].spec.environment == "two")


def test_partially_written_file_is_fixed_by_a_later_poll(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    full = text(doc("aaa"), doc("bbb"))
    path.write_bytes(full)
    src = DirectorySource(tmp_path)
    src.poll()
    with path.open("wb") as f:  # in-place write caught halfway
        f.write(full[: len(full) // 2])
        f.flush()
        src.poll()
        f.write(full[len(full) // 2 :])
    poll_until(src, lambda s: set(s.models) == {"aaa", "bbb"} and not s.errors)


def test_missing_directory_keeps_models_then_recovers(tmp_path: Path) -> None:
    d = tmp_path / "policies"
    d.mkdir()
    write(d / "a.yaml", text(doc("aaa")))
    src = DirectorySource(d)
    src.poll()
    os.rename(d, tmp_path / "gone")
    s = poll_until(src, lambda s: bool(s.errors))
    assert "aaa" in s.models and s.stale == {"aaa"}
    os.rename(tmp_path / "gone", d)
    poll_until(src, lambda s: not s.errors and not s.stale)


async def test_watch_yields_changes_within_a_second(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", text(doc("aaa")))
    src = DirectorySource(tmp_path, poll_interval=0.05)
    seen: list[DesiredState] = []

    async def consume() -> None:
        async for state in src.watch():
            seen.append(state)
            if "bbb" in state.models:
                return

    task = asyncio.create_task(consume())
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert seen and list(seen[0].models) == ["aaa"]
    started = time.monotonic()
    write(tmp_path / "b.yaml", text(doc("bbb")))
    await asyncio.wait_for(task, timeout=5)
    assert time.monotonic() - started < 1.0
    assert [s.version for s in seen] == sorted({s.version for s in seen})


async def test_run_calls_async_callback(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", text(doc("aaa")))
    src = DirectorySource(tmp_path, poll_interval=0.02)
    got: asyncio.Queue[DesiredState] = asyncio.Queue()

    async def cb(state: DesiredState) -> None:
        await got.put(state)

    task = asyncio.create_task(src.run(cb))
    try:
        first = await asyncio.wait_for(got.get(), timeout=5)
        assert list(first.models) == ["aaa"]
    finally:
        task.cancel()
