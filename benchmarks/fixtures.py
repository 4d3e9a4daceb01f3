"""Realistic Envoy resources for the benchmarks: EDS clusters with the usual production settings."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.type.v3 import range_pb2
from google.protobuf import duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from tests.harness.envoyconfig import eds_cluster, socket_address

ENDPOINTS_PER_CLUSTER = 3


def _ms(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value // 1000, nanos=(value % 1000) * 1_000_000)


def cluster_name(i: int) -> str:
    return f"model-{i:05d}-local"


def cluster(i: int) -> cluster_pb2.Cluster:
    """An EDS cluster with connect timeout, circuit breakers, an HTTP health check and outlier detection."""
    c = eds_cluster(cluster_name(i), connect_timeout_s=2.5)
    c.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST
    c.circuit_breakers.CopyFrom(
        circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    priority=base_pb2.DEFAULT,
                    max_connections=wrappers_pb2.UInt32Value(value=4096),
                    max_pending_requests=wrappers_pb2.UInt32Value(value=1024),
                    max_requests=wrappers_pb2.UInt32Value(value=8192),
                    max_retries=wrappers_pb2.UInt32Value(value=3),
                ),
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    priority=base_pb2.HIGH,
                    max_connections=wrappers_pb2.UInt32Value(value=8192),
                    max_requests=wrappers_pb2.UInt32Value(value=16384),
                ),
            ]
        )
    )
    c.health_checks.append(
        health_check_pb2.HealthCheck(
            timeout=_ms(1000),
            interval=_ms(5000),
            interval_jitter=_ms(500),
            unhealthy_threshold=wrappers_pb2.UInt32Value(value=3),
            healthy_threshold=wrappers_pb2.UInt32Value(value=2),
            http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(
                path="/health",
                expected_statuses=[range_pb2.Int64Range(start=200, end=300)],
            ),
        )
    )
    c.outlier_detection.CopyFrom(
        outlier_detection_pb2.OutlierDetection(
            consecutive_5xx=wrappers_pb2.UInt32Value(value=5),
            consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=3),
            interval=_ms(10_000),
            base_ejection_time=_ms(30_000),
            max_ejection_percent=wrappers_pb2.UInt32Value(value=50),
            enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=100),
        )
    )
    return c


def load_assignment(i: int, generation: int = 0) -> endpoint_pb2.ClusterLoadAssignment:
    """The cluster's endpoints; `generation` changes the weights (a typical EDS update)."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name(i),
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(region="eu-west-1", zone=f"eu-west-1{'abc'[i % 3]}"),
                load_balancing_weight=wrappers_pb2.UInt32Value(value=100),
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=socket_address(f"10.{(i >> 8) & 255}.{i & 255}.{10 + e}", 8000)
                        ),
                        health_status=health_check_pb2.HEALTHY,
                        load_balancing_weight=wrappers_pb2.UInt32Value(value=1 + (generation + e) % 100),
                    )
                    for e in range(ENDPOINTS_PER_CLUSTER)
                ],
            )
        ],
    )


def messages(n: int) -> list[Message]:
    """n clusters and their n ClusterLoadAssignments."""
    out: list[Message] = []
    for i in range(n):
        out.append(cluster(i))
        out.append(load_assignment(i))
    return out
