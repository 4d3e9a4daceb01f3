"""`spillover serve --kubernetes` end to end: objects applied to a real API server -> the control plane
(a subprocess, with the admin kubeconfig) -> a real Envoy -> real upstreams.

No test traffic may leave 127.0.0.0/8. The API server refuses loopback addresses in EndpointSlices, so
the pods' addresses written there are documentation-range data (198.51.100.0/24) that nothing listens
on and nothing is sent to: what EndpointSlices, CR edits and rate limits do to the local side is checked
in Envoy's configuration (`/config_dump?include_eds`, `/clusters?format=json`) and in spillover's
`/debug/config`, and no request is ever sent for a model that has such endpoints (the listener probe
asks for an unknown model, which Envoy answers itself with a direct 404). Real requests only go to
models without local endpoints, whose remote backend (and OAuth token endpoint) is on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness.envoy import Envoy, dicts_in
from tests.harness.kube import KubeCluster
from tests.harness.kube_fixtures import Crds
from tests.harness.kube_objects import endpoint_slice, model_deployment, secret, service
from tests.harness.load import post_model, served_by
from tests.harness.polling import wait_until
from tests.harness.serve import Spillover, start_edge
from tests.harness.token_endpoint import TokenEndpoint
from tests.harness.upstream import HttpUpstream


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    """Both ModelDeployment CRDs: spillover.dev, and the same schema under Beamlit's group."""
    return Crds.MODELDEPLOYMENT_AND_BEAMLIT


# Pods' addresses: data in the API server only (RFC 5737 TEST-NET-2, never routed anywhere).
POD_A, POD_B = "198.51.100.10", "198.51.100.11"
PORT_A, PORT_B = 8001, 8002
LOCAL_RATE_LIMIT = "envoy.filters.http.local_ratelimit"
RATE_LIMIT_HEADER = "x-error-model-rps-exceeded"


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return ipaddress.ip_address(host).is_loopback


def edge(envoy_factory: Callable[..., Envoy], server: Spillover, node_id: str = "edge-1") -> Envoy:
    # Its listener probe asks for an unknown model: Envoy's own direct 404, never forwarded anywhere.
    return start_edge(envoy_factory, server, node_id, advertise_admin=False)


# -- Envoy's view (admin API on 127.0.0.1) ----------------------------------------------------------------


def dynamic(envoy: Envoy, section: str, include_eds: bool = False) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for config in envoy.config_dump(include_eds=include_eds).get("configs", []):
        found.extend(config.get(section, []))
    return found


def local_clusters(envoy: Envoy, model: str) -> dict[str, dict[str, Any]]:
    """The model's local clusters (one per routing strategy in use) as Envoy holds them."""
    return {
        entry["cluster"]["name"]: entry["cluster"]
        for entry in dynamic(envoy, "dynamic_active_clusters")
        if entry["cluster"]["name"].startswith(f"{model}/local/")
    }


def local_hosts(envoy: Envoy, model: str) -> set[str]:
    """The endpoints Envoy has in the model's local clusters (`/clusters?format=json`)."""
    clusters = [name for name in envoy.cluster_names() if name.startswith(f"{model}/local/")]
    assert clusters, envoy.cluster_names()
    return {host for name in clusters for host in envoy.cluster_endpoint_hosts(name)}


def lb_endpoints(assignment: dict[str, Any]) -> set[str]:
    hosts = set()
    for locality in assignment.get("endpoints", []):
        for lb in locality.get("lb_endpoints", []):
            sock = lb["endpoint"]["address"]["socket_address"]
            hosts.add(f"{sock['address']}:{sock['port_value']}")
    return hosts


def eds_hosts(envoy: Envoy, model: str) -> set[str]:
    """The endpoints of the model's local clusters in `/config_dump?include_eds` (what EDS delivered)."""
    hosts: set[str] = set()
    for entry in dynamic(envoy, "dynamic_endpoint_configs", include_eds=True):
        assignment = entry["endpoint_config"]
        if assignment["cluster_name"].startswith(f"{model}/local/"):
            hosts |= lb_endpoints(assignment)
    return hosts


def route(envoy: Envoy, name: str) -> dict[str, Any]:
    # Wherever the table keeps it (the routes sit in the actions of its `x-model` matcher).
    for entry in dynamic(envoy, "dynamic_route_configs"):
        for candidate in dicts_in(entry["route_config"]):
            if candidate.get("name") == name and "match" in candidate:
                return dict(candidate)
    raise AssertionError(f"no route {name!r} in Envoy")


def token_bucket(envoy: Envoy, route_name: str) -> dict[str, Any] | None:
    """The local rate limit's token bucket on a route (None: not limited)."""
    limit = route(envoy, route_name).get("typed_per_filter_config", {}).get(LOCAL_RATE_LIMIT)
    if limit is None:
        return None
    assert [h["header"] for h in limit["response_headers_to_add"]] == [{"key": RATE_LIMIT_HEADER, "value": "true"}]
    return dict(limit["token_bucket"])


def traffic_to(envoy: Envoy, model: str) -> dict[str, int]:
    """Per local endpoint of the model: connections Envoy ever opened or tried, plus requests sent
    (the host stats of `/clusters?format=json`)."""
    totals: dict[str, int] = {}
    for name in local_clusters(envoy, model):
        for host in envoy.cluster_endpoints(name):
            stats = {s["name"]: int(s.get("value", 0)) for s in host["stats"]}
            sock = host["address"]["socket_address"]
            key = f"{sock['address']}:{sock['port_value']}"
            totals[key] = totals.get(key, 0) + stats["cx_total"] + stats["cx_connect_fail"] + stats["rq_total"]
    return totals


# -- spillover's view ----------------------------------------------------------------------------------------


def sent_endpoints(server: Spillover, node: str, model: str) -> set[str]:
    """The local endpoints spillover sent to this proxy (`/debug/config?node=...`)."""
    resources = server.get_json(f"/debug/config?node={node}")["resources"]
    hosts: set[str] = set()
    for item in resources.get("EDS", []):
        if item["name"].startswith(f"{model}/local/"):
            hosts |= lb_endpoints(item["resource"])
    return hosts


def acked_versions(server: Spillover) -> dict[str, str]:
    (proxy,) = server.proxies()
    return {state["type"]: state["acked_version"] for state in proxy["types"].values()}


def test_model_deployment_and_endpoint_slices_drive_envoy(
    cluster: KubeCluster, namespace: str, kube_spillover: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
) -> None:
    """Configuration only: nothing listens on the pods' addresses and no request is sent for this model."""
    a, b = f"{POD_A}:{PORT_A}", f"{POD_B}:{PORT_B}"
    cluster.apply([
        service("llama", namespace),
        # One slice per pod port: the named port resolves per slice. No localBackend.healthCheck, so
        # Envoy never probes these addresses by itself.
        endpoint_slice("llama-a", namespace, "llama", PORT_A, [(POD_A, True)]),
        endpoint_slice("llama-b", namespace, "llama", PORT_B, [(POD_B, True)]),
        model_deployment("llama", "llama-3-8b", namespace, serviceRef={"name": "llama"},
                         routing={"profiles": {"default": {"routingStrategy": "round-robin"}}}),
    ])
    server = kube_spillover([namespace])
    envoy = edge(envoy_factory, server)
    model = server.models()["models"]["llama-3-8b"]
    assert model["origin"] == f"ModelDeployment {namespace}/llama" and model["state"] == "STANDBY", model
    assert local_hosts(envoy, "llama-3-8b") == {a, b}
    assert eds_hosts(envoy, "llama-3-8b") == {a, b}
    assert sent_endpoints(server, "edge-1", "llama-3-8b") == {a, b}
    clusters = local_clusters(envoy, "llama-3-8b")
    # Both pods in one round-robin cluster (what "both pods served" used to show with traffic), and no
    # active health check that would make Envoy connect to them.
    assert [c.get("lb_policy", "ROUND_ROBIN") for c in clusters.values()] == ["ROUND_ROBIN"], clusters
    assert all("health_checks" not in c for c in clusters.values()), clusters
    # STANDBY: the model's route sends everything to the local cluster.
    default = route(envoy, "llama-3-8b/default")["route"]
    targets = [w["name"] for w in default["weighted_clusters"]["clusters"] if w.get("weight", 0)] \
        if "weighted_clusters" in default else [default["cluster"]]
    assert targets == list(clusters), default
    assert token_bucket(envoy, "llama-3-8b/default") is None
    assert traffic_to(envoy, "llama-3-8b") == {a: 0, b: 0}

    # pod-b stops being ready: its endpoint leaves EDS (in Envoy and in what spillover sends).
    cluster.apply(endpoint_slice("llama-b", namespace, "llama", PORT_B, [(POD_B, False)]))
    wait_until(lambda: local_hosts(envoy, "llama-3-8b") == {a}, timeout=15, message="EDS still has pod-b")
    assert eds_hosts(envoy, "llama-3-8b") == {a}
    assert sent_endpoints(server, "edge-1", "llama-3-8b") == {a}

    # Edit the CR: a model-wide rate limit appears in Envoy (a token bucket of 1 request per second on the
    # model's route, answered with 429 and the AIBrix header; the 429 itself is checked with traffic in
    # the remote-only test below, where nothing can be forwarded off loopback).
    cluster.apply(model_deployment("llama", "llama-3-8b", namespace, serviceRef={"name": "llama"}, routing={
        "profiles": {"default": {"routingStrategy": "round-robin", "requestsPerSecond": 1}}}))
    bucket = wait_until(lambda: token_bucket(envoy, "llama-3-8b/default"), timeout=15,
                        message="the edited rate limit never reached Envoy")
    assert bucket == {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1s"}, bucket

    # An invalid edit: reported, and Envoy's configuration does not change.
    versions = acked_versions(server)
    # (valid for the CRD's schema; spillover needs a "default" profile or defaultProfile)
    cluster.apply(model_deployment("llama", "llama-3-8b", namespace, serviceRef={"name": "llama"}, routing={
        "profiles": {"batch": {"routingStrategy": "random"}}}))

    def reported() -> dict[str, Any] | None:
        models = server.models()
        return models if models["errors"] else None

    models = wait_until(reported, timeout=15, message="the invalid edit was never reported")
    assert any(e.startswith(f"{namespace}/llama spec.routing") for e in models["errors"]), models["errors"]
    assert models["models"]["llama-3-8b"]["stale"] is True
    time.sleep(1.0)  # several evaluation rounds and debounce periods: nothing may be pushed
    assert acked_versions(server) == versions
    # Envoy never opened (or attempted) a connection to the pods' addresses.
    assert traffic_to(envoy, "llama-3-8b") == {a: 0}
    assert server.stop() == 0, server.log()


def test_secret_rotation_reaches_the_remote_backend(
    cluster: KubeCluster, namespace: str, kube_spillover: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream],
) -> None:
    """Real traffic, all on 127.0.0.1: no local endpoint, so FAILOVER sends everything to the remote."""
    remote = upstream_factory("remote")
    assert is_loopback(remote.address), remote.address
    tokens = TokenEndpoint("spillover", "first-s3cret").start()
    assert tokens.url.startswith("http://127.0.0.1:"), tokens.url

    def gpt(**routing: Any) -> dict[str, Any]:
        return model_deployment("gpt", "gpt-x", namespace, serviceRef={"name": "nothing", "targetPort": 8000},
                                offloadingConfig={"remoteBackend": {
                                    "host": remote.address,
                                    "authConfig": {"type": "oauth", "oauthConfig": {
                                        "clientId": "spillover", "tokenUrl": tokens.url,
                                        "clientSecretRef": {"name": "oauth", "key": "client-secret"}}},
                                }}, **routing)

    try:
        cluster.apply([
            secret("oauth", namespace, {"client-secret": "first-s3cret"}),
            # No local endpoint (the Service has none): FAILOVER, everything goes remote with a bearer token.
            gpt(),
        ])
        server = kube_spillover([namespace])
        envoy = edge(envoy_factory, server)
        port = server.listen_port
        assert not eds_hosts(envoy, "gpt-x") and not sent_endpoints(server, "edge-1", "gpt-x")
        # Every host Envoy knows (so every place a request could go) is on loopback.
        all_hosts = {h for name in envoy.cluster_names() for h in envoy.cluster_endpoint_hosts(name)}
        assert remote.address in all_hosts and all(is_loopback(h) for h in all_hosts), all_hosts

        wait_until(lambda: served_by(post_model(port, "gpt-x")) == "remote", timeout=20,
                   message="the remote never served")
        assert server.models()["models"]["gpt-x"]["state"] == "FAILOVER"
        first = tokens.tokens[-1]
        assert remote.requests[-1]["headers"]["authorization"] == f"Bearer {first}"

        # Rotation: the token endpoint only accepts the new secret from now on, and the Secret changes.
        tokens.client_secret = "second-s3cret"
        cluster.apply(secret("oauth", namespace, {"client-secret": "second-s3cret"}))

        def new_token_used() -> bool:
            response = post_model(port, "gpt-x")
            return served_by(response) == "remote" and remote.requests[-1]["headers"]["authorization"] != f"Bearer {first}"

        wait_until(new_token_used, timeout=20, message="no token fetched with the rotated secret")
        assert remote.requests[-1]["headers"]["authorization"] == f"Bearer {tokens.tokens[-1]}"

        # Edit the CR: the model-wide rate limit reaches Envoy and answers 429 with the AIBrix header
        # (requests that get through go to the loopback remote).
        cluster.apply(gpt(routing={"profiles": {"default": {"requestsPerSecond": 1}}}))

        def limited() -> bool:
            answers = [post_model(port, "gpt-x") for _ in range(4)]
            return any(r.status == 429 and r.headers.get(RATE_LIMIT_HEADER) == "true" for r in answers)

        wait_until(limited, timeout=15, message="the edited rate limit never reached Envoy")
        log = server.log()
        assert "first-s3cret" not in log and "second-s3cret" not in log
        assert server.stop() == 0, log
    finally:
        tokens.stop()
