"""Fixtures for tests against a real Kubernetes API server (etcd + kube-apiserver built from their Go
modules by tests/apiserver/build.sh, see tests/harness/kube.py), and for the real kubectl and helm built
by the same script (tests/harness/k8s_tools.py). A plugin: tests/conftest.py registers it.

The build (all four tools at once) runs once per session right after collection
(``pytest_collection_finish``) when a collected test needs one of them, outside any test's timeout: a
cold build takes many minutes, a warm one returns at once. ``make test`` runs the script before pytest
as well. A failed build fails the tests that need the tools, with its output.

Tests that install different CRDs get different API servers (about 3 s each to start, kept for the
session): tests/sources/kube, for one, installs a second CRD with the same plural
(modeldeployments.deployment.beamlit.com), which would make `kubectl get modeldeployments` ambiguous for
the tests of the CRD that manifests/ ships. A directory's conftest.py (or a module) says which CRDs its
tests need by overriding the module-scoped ``kube_crds`` fixture; every directory naming the same CRDs
shares their API server.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.kube import KubeCluster, ensure_binaries, ensure_helm, ensure_kubectl

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "manifests" / "crd-modeldeployment.yaml"
BEAMLIT_CRD_PATH = Path(__file__).with_name("beamlit-crd.yaml")

_build: dict[str, object] = {}


class Crds(enum.Enum):
    """What an API server has installed before its first test runs."""

    NONE = "none"  # the tests install what they test
    MODELDEPLOYMENT = "modeldeployment"  # manifests/crd-modeldeployment.yaml exactly as shipped
    # ...and the same schema under Beamlit's group (deployment.beamlit.com), for `--beamlit`
    MODELDEPLOYMENT_AND_BEAMLIT = "modeldeployment+beamlit"
    # Beamlit's own CRD only (tests/harness/beamlit-crd.yaml, its published schema): a Beamlit cluster
    BEAMLIT = "beamlit"


def crd_documents(crds: Crds) -> list[dict[str, Any]]:
    if crds is Crds.NONE:
        return []
    if crds is Crds.BEAMLIT:
        return [yaml.safe_load(BEAMLIT_CRD_PATH.read_text())]
    ours = yaml.safe_load(CRD_PATH.read_text())
    if crds is Crds.MODELDEPLOYMENT:
        return [ours]
    beamlit = yaml.safe_load(CRD_PATH.read_text())
    beamlit["metadata"]["name"] = "modeldeployments.deployment.beamlit.com"
    beamlit["spec"]["group"] = "deployment.beamlit.com"
    return [ours, beamlit]


# The CRDs installed, whether the aggregation layer is configured, and a name telling apart servers that are
# otherwise alike (a second cluster: the destination of tests/e2e/destination/).
Key = tuple[Crds, bool, str]


class ApiServers:
    """The session's API servers, one per set of CRDs (and aggregation layer or not), each started (and
    its CRDs installed and Established) when a test first needs it; all stopped by pid at the end."""

    def __init__(self, binaries: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
        self._binaries = binaries
        self._tmp_path_factory = tmp_path_factory
        self._clusters: dict[Key, KubeCluster] = {}
        self._installed: dict[Key, list[dict[str, Any]]] = {}
        self._failed: dict[Key, str] = {}

    @staticmethod
    def _name(key: Key) -> str:
        return f"{key[0].value}{'+aggregation' if key[1] else ''}{'+' + key[2] if key[2] else ''}"

    def get(self, crds: Crds, aggregation: bool = False, name: str = "") -> KubeCluster:
        key = (crds, aggregation, name)
        if key in self._failed:
            pytest.fail(self._failed[key], pytrace=False)
        cluster = self._clusters.get(key)
        if cluster is None:
            apiserver, etcd = self._binaries
            workdir = self._tmp_path_factory.mktemp(f"kube-{self._name(key)}")
            cluster = KubeCluster(workdir, apiserver_binary=apiserver, etcd_binary=etcd, aggregation=aggregation)
            self._clusters[key] = cluster  # stopped at the end even if it fails to start
            try:
                cluster.start()
                documents = crd_documents(crds)
                self._installed[key] = cluster.apply(documents) if documents else []
            except Exception as error:
                self._failed[key] = f"the API server ({self._name(key)}) did not start: {error}\n{cluster.log_tail(60)}"
                raise
        if not cluster.is_running():
            pytest.fail(f"the API server ({self._name(key)}) is not running any more:\n{cluster.log_tail(60)}")
        return cluster

    def installed(self, crds: Crds, aggregation: bool = False) -> list[dict[str, Any]]:
        """The CRDs of ``crds`` as its API server stored them."""
        self.get(crds, aggregation)
        return self._installed[(crds, aggregation, "")]

    def stop(self) -> None:
        for key, cluster in self._clusters.items():
            cluster.stop()
            # Shown by pytest only when something failed: the server side of the story.
            print(f"--- API server ({self._name(key)}) ---\n{cluster.log_tail(40)}")


# Fixtures whose tests need a tool of build.sh (``cluster`` and ``namespace`` depend on
# ``kube_binaries``): with any of them collected, everything is built up front.
_TOOL_FIXTURES = frozenset({"kube_binaries", "kubectl_binary", "helm_binary"})


def _needs_tools(item: pytest.Item) -> bool:
    return not _TOOL_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def pytest_collection_finish(session: pytest.Session) -> None:
    if "binaries" in _build or "error" in _build:
        return
    if session.config.option.collectonly or not any(_needs_tools(i) for i in session.items):
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
    """(kube-apiserver, etcd) built by tests/apiserver/build.sh."""
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


def _tool(ensure: Callable[[], Path]) -> Path:
    if "error" in _build:
        pytest.fail(f"building the k8s tools failed:\n{_build['error']}", pytrace=False)
    try:
        return ensure()
    except RuntimeError as exc:
        pytest.fail(f"building the k8s tools failed:\n{exc}", pytrace=False)


@pytest.fixture(scope="session")
def kubectl_binary() -> Path:
    """The real kubectl of the pinned Kubernetes release (the test API server's), never one from PATH."""
    return _tool(ensure_kubectl)


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    """The real helm of tests/apiserver/helm/go.mod."""
    return _tool(ensure_helm)


@pytest.fixture(scope="session")
def kube_api_servers(
    kube_binaries: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServers]:
    servers = ApiServers(kube_binaries, tmp_path_factory)
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    """The CRDs this module's API server has: override it (module-scoped) in a directory's conftest.py
    or in a module."""
    return Crds.NONE


@pytest.fixture(scope="module")
def kube_aggregation() -> bool:
    """Whether this module's API server has the aggregation layer configured (KubeCluster(aggregation=True)):
    override it (module-scoped) like ``kube_crds``. Tests that register APIServices use their own server."""
    return False


@pytest.fixture(scope="module")
def cluster(kube_api_servers: ApiServers, kube_crds: Crds, kube_aggregation: bool) -> KubeCluster:
    """A real API server (etcd + kube-apiserver on 127.0.0.1) with the ``kube_crds`` installed.

    ``server_url``, ``ca_path``, ``admin_token``, ``admin_kubeconfig``; ``kubeconfig_for_token(token,
    path)``, ``service_account_token(namespace, name, expiration_s=3600)``, ``apply(yaml_or_docs,
    namespace=None, token=None)``, ``api_client(token=None)`` (a ``kubernetes.client.ApiClient``),
    ``request(method, path, body=None, token=None)``. Tests share it: each uses its own namespace.
    """
    return kube_api_servers.get(kube_crds, kube_aggregation)


@pytest.fixture(scope="module")
def destination_cluster(kube_api_servers: ApiServers) -> KubeCluster:
    """A second real API server, cluster B of the destination tests: no CRDs, nothing of spillover's
    installed, its own etcd and CA."""
    return kube_api_servers.get(Crds.NONE, name="destination")


@pytest.fixture
def namespace(cluster: KubeCluster) -> Iterator[str]:
    """A fresh namespace for one test."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    # No namespace controller runs: the namespace stays Terminating, which is harmless.
    cluster.request("DELETE", f"/api/v1/namespaces/{name}")
