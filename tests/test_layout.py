"""The shape of the code: imports run one way through the pipeline, and no module imports itself back.

Read from the source (the `ast` of every module), not from what happens to be imported at run time, so
an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spillover"

# Which rooms each room may import (besides itself). The pipeline:
#   sources -> policy (desired state) -> decide -> plan -> ir -> translate;  server knows no model (it
#   takes only the names of the series it writes and the dashboards read from the naming contract, which
#   imports nothing);
#   controller chains them; app composes; cli and demo start it; dashboards only read Prometheus.
ALLOWED: dict[str, frozenset[str]] = {
    "names": frozenset(),
    # Protocol-buffer wire encoding written by hand (varints), shared by translate and server.
    "wire": frozenset(),
    "ir": frozenset(),
    "server": frozenset({"names", "wire"}),
    "policy": frozenset({"names"}),
    "sources": frozenset({"policy", "names"}),
    "decide": frozenset({"policy", "sources", "names"}),
    "plan": frozenset({"policy", "decide", "ir", "names"}),
    "translate": frozenset({"ir", "names", "wire"}),
    "controller": frozenset({"policy", "sources", "decide", "plan", "ir", "translate", "server", "names", "wire"}),
    "app": frozenset({"controller", "policy", "sources", "decide", "plan", "ir", "translate", "server", "names", "wire"}),
    "demo": frozenset({"app", "translate", "names"}),
    # Grafana dashboards and `spillover report`: they read Prometheus, never a stage.
    "dashboards": frozenset({"policy", "names"}),
    # `spillover status` and `spillover report`: they read spillover's admin endpoint and Prometheus.
    "observe": frozenset({"dashboards", "names"}),
    "cli": frozenset({"app", "demo", "observe", "translate", "policy", "server", "names", "__init__"}),
    "__main__": frozenset({"cli"}),
    "__init__": frozenset(),
}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(module: str, path: Path) -> set[str]:
    """Every spillover module `module` imports, resolved to dotted names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "spillover")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "spillover":
                continue
            for alias in node.names:
                # `from spillover import ir` names a module; `from spillover.x import f` names a symbol.
                found.add(f"{target}.{alias.name}" if _is_module(f"{target}.{alias.name}") else target)
    return found


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {module: _imports(module, path) for module, path in _modules()}


def test_the_top_level_holds_only_packages_the_entry_points_and_the_contracts() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "app.py", "ir.py", "names.py", "wire.py"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_with_the_pipeline(module: str) -> None:
    room = _room(module)
    assert room in ALLOWED, f"{module}: room {room!r} is not in the layout (tests/test_layout.py ALLOWED)"
    wrong = sorted(i for i in GRAPH[module] if _room(i) != room and _room(i) not in ALLOWED[room])
    assert not wrong, f"{module} imports against the pipeline's direction: {wrong}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH:
                continue
            if state.get(target) == 1:
                cycle = [*path[path.index(target):], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    # The test above can fail: a translate module importing policy is caught.
    source = tmp_path / "bad.py"
    source.write_text("from spillover.policy import ModelDeployment\nfrom spillover import ir\n")
    imports = _imports("spillover.translate.bad", source)
    assert imports == {"spillover.policy", "spillover.ir"}
    assert sorted(i for i in imports if _room(i) not in ALLOWED["translate"]) == ["spillover.policy"]


def test_no_asyncio_wait_for_in_long_running_code() -> None:
    """Python 3.11's `asyncio.wait_for` returns the result when the task is cancelled just as the awaited
    call completes (CPython gh-86296, fixed in 3.12): the cancellation is lost, and a loop written as
    `while True: await wait_for(...)` never ends, so shutdown hung until killed. `asyncio.timeout` keeps
    the cancellation."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "asyncio.wait_for(" in line
    ]
    assert offenders == [], offenders
