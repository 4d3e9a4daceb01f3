"""The real Kubernetes tools of the tests, built from their Go modules by ``tests/apiserver/build.sh``:
kube-apiserver and etcd (the test cluster of :mod:`tests.harness.kube`), kubectl and helm (the clients
the manifests and the chart are checked with). Each is pinned by a go.mod + go.sum under tests/apiserver/ and
lands in ``.cache/k8s/bin`` (``SPILLOVER_K8S_CACHE`` moves it)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "BUILD_SCRIPT",
    "TOOLS",
    "ensure_binaries",
    "ensure_helm",
    "ensure_kubectl",
    "ensure_tools",
    "k8s_bin_dir",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "apiserver" / "build.sh"

# What tests/apiserver/build.sh builds, and the variable that points at a prebuilt binary instead (no build).
TOOLS = {
    "kube-apiserver": "SPILLOVER_KUBE_APISERVER",
    "etcd": "SPILLOVER_ETCD",
    "kubectl": "SPILLOVER_KUBECTL",
    "helm": "SPILLOVER_HELM",
}

# Tools this process has seen built and runnable: build.sh is not asked again (it would say "up to date").
_ready: dict[str, Path] = {}


def k8s_bin_dir() -> Path:
    cache = os.environ.get("SPILLOVER_K8S_CACHE") or str(REPO_ROOT / ".cache" / "k8s")
    return Path(cache) / "bin"


def _tool_path(name: str) -> tuple[Path, bool]:
    """(path, overridden by its environment variable)."""
    override = os.environ.get(TOOLS[name])
    return (Path(override), True) if override else (k8s_bin_dir() / name, False)


def _run_build(names: list[str], timeout: float, log: Callable[[str], None] | None) -> None:
    output: list[str] = []
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT), *names],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
    )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line.rstrip("\n"))
            if log is not None:
                log(output[-1])
        code = proc.wait()
    finally:
        timer.cancel()
    if code != 0:
        text = "\n".join(output[-60:])
        raise RuntimeError(f"{BUILD_SCRIPT} {' '.join(names)} failed with exit code {code} (limit {timeout:g}s):\n{text}")


def ensure_tools(
    names: Iterable[str], build: bool = True, timeout: float = 3600.0, log: Callable[[str], None] | None = None
) -> dict[str, Path]:
    """Paths of the named tools (kube-apiserver, etcd, kubectl, helm). When ``build``, runs
    tests/apiserver/build.sh for those not yet seen by this process (it returns at once when the pinned
    binaries are built already), passing each output line to ``log``. A tool whose variable in
    :data:`TOOLS` is set (e.g. SPILLOVER_HELM=/usr/local/bin/helm) is taken from there, never built.
    Raises RuntimeError with the build's output on failure, or when a binary is missing."""
    names = list(names)
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise ValueError(f"unknown tools {unknown}: expected some of {sorted(TOOLS)}")
    paths = {name: _tool_path(name) for name in names}
    to_build = [n for n, (_, overridden) in paths.items() if not overridden and n not in _ready]
    if build and to_build:
        _run_build(to_build, timeout, log)
    for name, (binary, _) in paths.items():
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise RuntimeError(
                f"no executable {binary}: run {BUILD_SCRIPT.relative_to(REPO_ROOT)} {name} (or `make k8s-deps`)"
            )
        if build:
            _ready[name] = binary
    return {name: binary for name, (binary, _) in paths.items()}


def ensure_binaries(
    build: bool = True, timeout: float = 3600.0, log: Callable[[str], None] | None = None
) -> tuple[Path, Path]:
    """Paths of (kube-apiserver, etcd), building all four tools first (one build for the session:
    kubectl and helm come from the same run)."""
    tools = ensure_tools(TOOLS, build=build, timeout=timeout, log=log)
    return tools["kube-apiserver"], tools["etcd"]


def ensure_kubectl(timeout: float = 3600.0, log: Callable[[str], None] | None = None) -> Path:
    """The real kubectl of the pinned k8s.io/kubernetes (same release as the test API server), built
    when needed. Not whatever `kubectl` is on PATH: that one may be any version, or absent (CI)."""
    return ensure_tools(["kubectl"], timeout=timeout, log=log)["kubectl"]


def ensure_helm(timeout: float = 3600.0, log: Callable[[str], None] | None = None) -> Path:
    """The real helm of the pinned helm.sh/helm/v3 (tests/apiserver/helm/go.mod), built when needed."""
    return ensure_tools(["helm"], timeout=timeout, log=log)["helm"]
