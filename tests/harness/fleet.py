"""Several `spillover serve --kubernetes` replicas as one fleet, and what their Envoys hold: the pieces of
the fleet tests (tests/e2e/test_fleet.py) and of the fleet benchmark (benchmarks/fleet.py)."""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from spillover.translate.bootstrap import build_bootstrap
from tests.harness.envoy import Envoy, dicts_in
from tests.harness.forwarder import TcpForwarder
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.serve import Spillover

__all__ = [
    "TIMING",
    "bucket_rate",
    "fleet_replica",
    "kubeconfig_via",
    "place_envoy",
    "route_split",
    "token_file",
]

# Short Leases so that takeovers take seconds: lease 8 s, renew deadline 4 s, the leader Lease tried every
# 0.5 s, membership renewed every second.
LEASE_S, RENEW_S = 8.0, 4.0
TIMING = ["--lease-duration", f"{LEASE_S:g}", "--renew-deadline", f"{RENEW_S:g}", "--retry-period", "0.5",
          "--fleet-heartbeat", "1"]


def token_file(directory: Path) -> Path:
    path = directory / "fleet-token"
    path.write_text(secrets.token_hex(24) + "\n")
    path.chmod(0o600)
    return path


def fleet_replica(
    workdir: Path, name: str, kubeconfig: Path, namespace: str, token: Path, *,
    listen_port: int | None = None, extra: Sequence[str] = (), **options: Any,
) -> Spillover:
    """One replica (POD_NAME `name`) with the peer channel on a free port; not started."""
    server = Spillover(
        workdir, name=name, kubeconfig=kubeconfig, namespaces=[namespace], env={"POD_NAME": name},
        extra_args=["--fleet-address", f"127.0.0.1:{free_port()}", "--fleet-token-file", str(token), *TIMING, *extra],
        **options,
    )
    if listen_port is not None:
        server.listen_port = listen_port
    return server


def kubeconfig_via(source: Path, proxy: TcpForwarder, path: Path) -> Path:
    """`source` (a kubeconfig) with its server reached through `proxy` (which forwards to it)."""
    config = yaml.safe_load(source.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = re.sub(r"//[^/]+", f"//{proxy.address}", cluster["cluster"]["server"], count=1)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def place_envoy(
    envoy_factory: Callable[..., Envoy], node_id: str, home: int, proxies: Sequence[TcpForwarder],
    replicas: Sequence[Spillover], group: str = "edge",
) -> Envoy:
    """A real Envoy whose bootstrap lists every replica (through its forwarder) and whose first stream
    goes to `replicas[home]`: the other forwarders refuse new connections while it connects."""
    others = [p for i, p in enumerate(proxies) if i != home]
    for proxy in others:
        proxy.pause()
    try:
        envoy = envoy_factory(
            build_bootstrap(node_id, group, [p.address for p in proxies], admin_port=free_port()), name=node_id
        )
        wait_until(envoy.is_ready, timeout=20, message=f"envoy {node_id} never became ready")
        wait_until(lambda: node_id in serving(replicas[home]), timeout=10,
                   message=f"{node_id} never connected to {replicas[home].name}")
    finally:
        for proxy in others:
            proxy.start()
    return envoy


def serving(server: Spillover) -> set[str]:
    """The node ids connected to this replica."""
    try:
        return {p["node_id"] for p in server.proxies()}
    except (OSError, AssertionError):
        return set()


def _route(envoy: Envoy, route_name: str) -> dict[str, Any] | None:
    for node in dicts_in(envoy.config_dump(resource="dynamic_route_configs")):
        if node.get("name") == route_name and "match" in node:
            return node
    return None


def route_split(envoy: Envoy, model: str, profile: str = "default") -> dict[str, int]:
    """The clusters of a model's route and their weights, as the Envoy holds them ({} when it has none)."""
    route = _route(envoy, f"{model}/{profile}")
    if route is None:
        return {}
    action = route.get("route") or {}
    weighted = action.get("weighted_clusters")
    if weighted:
        return {c["name"]: int(c.get("weight", 0)) for c in weighted.get("clusters", [])}
    return {action["cluster"]: 100} if "cluster" in action else {}


def remote_weight(split: dict[str, int]) -> int:
    return sum(weight for name, weight in split.items() if "remote-first" in name or name.endswith("/remote"))


def _seconds(duration: str) -> float:
    return float(duration.rstrip("s"))


def bucket_rate(envoy: Envoy, model: str, profile: str = "default") -> float | None:
    """Requests per second the model's local rate limit lets through this Envoy (None: not limited)."""
    route = _route(envoy, f"{model}/{profile}")
    limit = (route or {}).get("typed_per_filter_config", {}).get("envoy.filters.http.local_ratelimit")
    if limit is None:
        return None
    bucket = limit["token_bucket"]
    return int(bucket.get("tokens_per_fill", 1)) / _seconds(bucket["fill_interval"])


def close(a: float | None, b: float, tolerance: float = 1e-6) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=tolerance)
