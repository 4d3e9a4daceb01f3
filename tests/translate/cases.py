"""IR inputs pinned by the golden files (one file per case under golden/)."""

from __future__ import annotations

from spillover.translate import (
    Endpoint,
    Gateway,
    HealthCheck,
    Listener,
    Model,
    OutlierDetection,
    Profile,
    RemoteBackend,
    Retries,
    StrategyParams,
    Timeouts,
    TrafficSplit,
)


def minimal() -> Gateway:
    return Gateway(
        "edge",
        Listener("0.0.0.0", 10000),
        (Model("llama-3.1-8b", (Endpoint("10.0.0.1", 8000), Endpoint("10.0.0.2", 8000))),),
    )


def strategies() -> Gateway:
    """Every strategy once, profiles, a locked strategy and a rate limit."""
    endpoints = (Endpoint("10.0.1.2", 8000, 3), Endpoint("10.0.1.1", 8000, 1))
    profiles = (
        Profile("default", "least-latency", requests_per_second=16.5, total_requests_per_second=33),
        Profile("batch", "throughput", requests_per_second=5, total_requests_per_second=10),
        Profile("chat", "session-affinity", params=StrategyParams(session_header="X-Session-Id")),
        Profile("rag", "prefix-cache", params=StrategyParams(prefix_chars=512, consistent_hash="maglev")),
        Profile("rr", "round-robin"),
        Profile("lr", "least-request"),
        Profile("inherit"),  # no strategy: the default profile's
    )
    return Gateway(
        "edge",
        Listener("127.0.0.1", 18080),
        (
            Model("mistral", endpoints, profiles=profiles),
            Model(
                "locked",
                endpoints,
                profiles=(Profile("default", "random"), Profile("fast", "least-request", 50, 100)),
                locked_strategy="round-robin",
                retries=Retries(num_retries=0),
            ),
        ),
    )


def remote() -> Gateway:
    """Overflow to an https remote with OAuth, health checks and outlier detection."""
    beamlit = RemoteBackend(
        host="run.beamlit.dev",
        port=443,
        scheme="https",
        host_rewrite="run.beamlit.dev",
        path_prefix="/my-workspace/models/qwen/",
        headers=(("x-beamlit-workspace", "my-workspace"),),
        bearer_token_secret_name="beamlit-oauth",
        bearer_token="token-value",
        health_check=HealthCheck(path="/health", interval_s=5, timeout_s=2),
        outlier_detection=OutlierDetection(consecutive_5xx=3),
    )
    cluster_b = RemoteBackend(host="10.20.0.5", port=8080, scheme="http")
    return Gateway(
        "edge",
        Listener("0.0.0.0", 10000),
        (
            Model(
                "qwen",
                (Endpoint("10.0.2.1", 8000),),
                profiles=(Profile("default", "session-affinity"),),
                remote=beamlit,
                split=TrafficSplit(60, 40),
                timeouts=Timeouts(request_s=0, per_try_s=0, per_try_idle_s=30, connect_s=2),
            ),
            Model("all-remote", (), remote=cluster_b, split=TrafficSplit(0, 100)),
            Model("drained", (Endpoint("10.0.3.1", 8000),), split=TrafficSplit(0, 0)),
        ),
    )


CASES = {"minimal": minimal, "strategies": strategies, "remote": remote}
