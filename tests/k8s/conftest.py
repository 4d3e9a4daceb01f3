"""Fixtures for tests against a real Kubernetes API server (etcd + kube-apiserver built from their Go
modules by tests/k8s/build.sh, see tests/harness/kube.py).

The build runs once per session right after collection (``pytest_collection_finish``), outside any
test's timeout: a cold build takes many minutes, a warm one returns at once. ``make test`` runs the
script before pytest as well. A failed build fails the tests that need the cluster, with its output.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.kube import KubeCluster, ensure_binaries

HERE = Path(__file__).resolve().parent

_build: dict[str, object] = {}


def _needs_cluster(item: pytest.Item) -> bool:
    return "kube_cluster" in getattr(item, "fixturenames", ())


def pytest_collection_finish(session: pytest.Session) -> None:
    # Other conftests re-export this hook with the fixtures: it then runs more than once.
    if "binaries" in _build or "error" in _build:
        return
    if session.config.option.collectonly or not any(_needs_cluster(i) for i in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def log(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[k8s build] {line}")

    try:
        _build["binaries"] = ensure_binaries(build=True, log=log)
    except RuntimeError as exc:
        _build["error"] = str(exc)
        log(f"FAILED: {exc}")


@pytest.fixture(scope="session")
def kube_binaries() -> tuple[Path, Path]:
    """(kube-apiserver, etcd) built by tests/k8s/build.sh."""
    if "error" in _build:
        pytest.fail(f"building the k8s binaries failed:\n{_build['error']}", pytrace=False)
    if "binaries" not in _build:  # collected without the hook (e.g. a plugin re-ran collection)
        try:
            _build["binaries"] = ensure_binaries(build=True)
        except RuntimeError as exc:
            _build["error"] = str(exc)
            pytest.fail(f"building the k8s binaries failed:\n{exc}", pytrace=False)
    binaries = _build["binaries"]
    assert isinstance(binaries, tuple)
    return binaries


# Other directories' conftests import ``kube_cluster``: pytest then registers one session fixture per
# conftest, so each of those directories gets its own API server (about 3 s to start). That keeps
# them apart on purpose: tests/kube, for one, installs a second CRD with the same plural
# (modeldeployments.deployment.beamlit.com), which would make `kubectl get modeldeployments` ambiguous
# for the others.
@pytest.fixture(scope="session")
def kube_cluster(
    kube_binaries: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeCluster]:
    """One real API server (etcd + kube-apiserver on 127.0.0.1) for the session.

    ``server_url``, ``ca_path``, ``admin_token``, ``admin_kubeconfig``; ``kubeconfig_for_token(token,
    path)``, ``service_account_token(namespace, name, expiration_s=3600)``, ``apply(yaml_or_docs,
    namespace=None, token=None)``, ``api_client(token=None)`` (a ``kubernetes.client.ApiClient``),
    ``request(method, path, body=None, token=None)``. Tests share it: each uses its own namespace.
    """
    apiserver, etcd = kube_binaries
    cluster = KubeCluster(tmp_path_factory.mktemp("kube"), apiserver_binary=apiserver, etcd_binary=etcd)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        # Shown by pytest only when something failed: the server side of the story.
        print(cluster.log_tail(40))
