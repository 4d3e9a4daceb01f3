"""IR → Envoy v3 resources. Pure: same Gateway in, byte-identical resources out; no I/O, no clock.

One module per resource kind: `listener` (the filter chain that picks model and profile), `routes`
(a route per model and profile, rate limits, retries, the 404s), `clusters` (local and remote
clusters, load assignments, health, TLS, the bearer-token secrets), with `strategies` mapping each
routing strategy to its Envoy load-balancing policy. This module walks the gateway once and collects
the results; the naming contract they share is `spillover.names`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from spillover.ir import Gateway, Model, Profile
from spillover.names import (
    FAILOVER_REMOTE,
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    SPLIT_RUNTIME_LAYER,
    SPLIT_WEIGHTS,
    local_cluster_name,
    remote_cluster_name,
)
from spillover.translate.clusters import (
    SYSTEM_CA_BUNDLE,
    add_bearer_secret,
    load_assignment,
    local_cluster,
    remote_cluster,
)
from spillover.translate.failover import aggregate_clusters, failover_targets
from spillover.translate.listener import build_listener
from spillover.translate.remote_listener import remote_side
from spillover.translate.route_table import route_configuration
from spillover.translate.routes import model_route, runtime_split
from spillover.translate.strategies import effective_strategy, serving_for

__all__ = ["SYSTEM_CA_BUNDLE", "Resources", "split_layer", "translate"]

TYPE_PREFIX = "type.googleapis.com/"

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Resources:
    """Name → message per xDS type, names sorted. Treat the messages as read-only."""

    listeners: Mapping[str, listener_pb2.Listener]
    routes: Mapping[str, route_pb2.RouteConfiguration]
    clusters: Mapping[str, cluster_pb2.Cluster]
    endpoints: Mapping[str, endpoint_pb2.ClusterLoadAssignment]
    secrets: Mapping[str, secret_pb2.Secret]
    # The split weights' layer (`split_weights: runtime`); none with the weights in the routes.
    runtimes: Mapping[str, rtds_pb2.Runtime] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    def by_type_url(self) -> dict[str, Mapping[str, Message]]:
        """Per type URL, in push order: CDS, EDS, SDS, RTDS (when there is a layer), LDS, RDS
        (make-before-break)."""
        types: dict[str, Mapping[str, Message]] = {
            TYPE_PREFIX + cluster_pb2.Cluster.DESCRIPTOR.full_name: self.clusters,
            TYPE_PREFIX + endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR.full_name: self.endpoints,
            TYPE_PREFIX + secret_pb2.Secret.DESCRIPTOR.full_name: self.secrets,
        }
        if self.runtimes:
            types[TYPE_PREFIX + rtds_pb2.Runtime.DESCRIPTOR.full_name] = self.runtimes
        return types | {
            TYPE_PREFIX + listener_pb2.Listener.DESCRIPTOR.full_name: self.listeners,
            TYPE_PREFIX + route_pb2.RouteConfiguration.DESCRIPTOR.full_name: self.routes,
        }

    def messages(self) -> list[Message]:
        """Every resource in push order: CDS, EDS, SDS, RTDS, LDS, RDS; by name within a type."""
        return [message for items in self.by_type_url().values() for message in items.values()]

    def serialized(self) -> dict[str, dict[str, bytes]]:
        """Deterministic wire bytes per type URL and name: what 'byte-identical' is measured on."""
        return {
            type_url: {name: msg.SerializeToString(deterministic=True) for name, msg in items.items()}
            for type_url, items in self.by_type_url().items()
        }


def _frozen(items: dict[str, M]) -> Mapping[str, M]:
    return MappingProxyType({name: items[name] for name in sorted(items)})


def _check_model(model: Model) -> dict[str, Profile]:
    if not model.name:
        raise ValueError("a model needs a name")
    profiles: dict[str, Profile] = {}
    for profile in model.profiles:
        if not profile.name:
            raise ValueError(f"model {model.name!r}: a profile needs a name")
        if profile.name in profiles:
            raise ValueError(f"model {model.name!r}: profile {profile.name!r} defined twice")
        profiles[profile.name] = profile
    if model.default_profile not in profiles:
        raise ValueError(f"model {model.name!r}: default profile {model.default_profile!r} is not defined")
    split = model.split
    if split.local < 0 or split.remote < 0 or (split.local + split.remote) not in (0, 100):
        raise ValueError(
            f"model {model.name!r}: split must be two non-negative integers summing to 100 (or 0/0), "
            f"got {split.local}/{split.remote}"
        )
    if split.remote > 0 and model.remote is None:
        raise ValueError(f"model {model.name!r}: remote weight {split.remote} but no remote backend")
    if model.failover and model.remote is None:
        raise ValueError(f"model {model.name!r}: failover needs a remote backend")
    return profiles


@dataclass
class ModelResources:
    """What one model contributes: its routes (in table order), its clusters, endpoints and secrets, and
    the internal listener of its remote with failover."""

    routes: list[route_components_pb2.Route]
    clusters: dict[str, cluster_pb2.Cluster]
    endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment]
    secrets: dict[str, secret_pb2.Secret]
    listeners: dict[str, listener_pb2.Listener] = dataclasses.field(default_factory=dict)
    # Its entries in the split weights' runtime layer (with `runtime_weights`): runtime key -> weight.
    weights: dict[str, int] = dataclasses.field(default_factory=dict)


def translate_model(
    model: Model, runtime_weights: bool = False, failover_remote: str = "internal-listener"
) -> ModelResources:
    """One model's resources; they depend on nothing but the model (names are prefixed by its name) and the
    gateway's two settings, which is what lets spillover.translate.encoded translate only the models that
    changed. `runtime_weights`: the split goes to runtime entries (`weights`), the routes do not depend on
    it. `failover_remote`: how a failover model's local-first aggregates reach the remote
    (`Gateway.failover_remote`)."""
    if failover_remote not in FAILOVER_REMOTE:
        raise ValueError(f"failover_remote must be one of {', '.join(FAILOVER_REMOTE)}, got {failover_remote!r}")
    through_listener = failover_remote == "internal-listener"
    profiles = _check_model(model)
    result = ModelResources([], {}, {}, {})
    clusters, endpoints = result.clusters, result.endpoints
    default = profiles[model.default_profile]
    # Named profiles first (most specific match wins in route order), the default last.
    ordered = [profiles[n] for n in sorted(profiles) if n != default.name] + [default]
    for profile in ordered:
        serving = serving_for(effective_strategy(model, profile, default), profile.params)
        cluster_name = local_cluster_name(model.name, serving.lb.tag)
        if cluster_name not in clusters:
            clusters[cluster_name] = local_cluster(cluster_name, serving.lb, model)
            endpoints[cluster_name] = load_assignment(cluster_name, model, serving.lb)
            if model.failover:
                clusters.update(aggregate_clusters(model, cluster_name, serving.lb.tag, through_listener))
        targets = failover_targets(model.name, serving.lb.tag) if model.failover else None
        result.routes.append(
            model_route(
                model, profile, serving, cluster_name, profile is not default, targets, runtime_weights,
                through_listener,
            )
        )
        if runtime_weights:
            result.weights.update(runtime_split(model, targets or (cluster_name, remote_cluster_name(model.name))))
    if model.remote is not None:
        clusters[remote_cluster_name(model.name)] = remote_cluster(model, model.remote)
        if model.failover and through_listener:
            member, listener = remote_side(model)
            clusters[member.name] = member
            result.listeners[listener.name] = listener
        add_bearer_secret(result.secrets, model.remote)
    return result


def check_gateway(gateway: Gateway) -> None:
    if not gateway.name:
        raise ValueError("a gateway needs a name")
    names = [m.name for m in gateway.models]
    if len(set(names)) != len(names):
        raise ValueError(f"gateway {gateway.name!r}: model names must be unique, got {sorted(names)}")
    if gateway.split_weights not in SPLIT_WEIGHTS:
        raise ValueError(
            f"gateway {gateway.name!r}: split_weights must be one of {', '.join(SPLIT_WEIGHTS)}, "
            f"got {gateway.split_weights!r}"
        )
    if gateway.failover_remote not in FAILOVER_REMOTE:
        raise ValueError(
            f"gateway {gateway.name!r}: failover_remote must be one of {', '.join(FAILOVER_REMOTE)}, "
            f"got {gateway.failover_remote!r}"
        )


def split_layer(weights: Mapping[str, int]) -> rtds_pb2.Runtime:
    """The Runtime resource of the split weights: every spilling model's entries (the layer is one Struct;
    Envoy sees each key as it is, dots and all)."""
    layer = struct_pb2.Struct()
    for key in sorted(weights):
        layer.fields[key].number_value = weights[key]
    return rtds_pb2.Runtime(name=SPLIT_RUNTIME_LAYER, layer=layer)


def translate(gateway: Gateway) -> Resources:
    """Translate one gateway's IR into Envoy resources; raises ValueError on what it can't render."""
    check_gateway(gateway)
    routes: list[tuple[str, list[route_components_pb2.Route]]] = []
    clusters: dict[str, cluster_pb2.Cluster] = {}
    endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    secrets: dict[str, secret_pb2.Secret] = {}
    listeners = {LISTENER_NAME: build_listener(gateway)}
    runtime_weights = gateway.split_weights == "runtime"
    weights: dict[str, int] = {}
    for model in sorted(gateway.models, key=lambda m: m.name):
        own = translate_model(model, runtime_weights, gateway.failover_remote)
        weights.update(own.weights)
        routes.append((model.name, own.routes))
        clusters.update(own.clusters)
        endpoints.update(own.endpoints)
        listeners.update(own.listeners)
        for name, secret in own.secrets.items():
            existing = secrets.get(name)
            if existing is not None and existing != secret:
                raise ValueError(f"secret {name!r} is given two different token values")
            secrets[name] = secret

    return Resources(
        listeners=_frozen(listeners),
        routes=_frozen({ROUTE_CONFIG_NAME: route_configuration(routes)}),
        clusters=_frozen(clusters),
        endpoints=_frozen(endpoints),
        secrets=_frozen(secrets),
        # Always there in runtime mode, empty or not: Envoy waits for its layer before it initializes.
        runtimes=_frozen({SPLIT_RUNTIME_LAYER: split_layer(weights)}) if runtime_weights else MappingProxyType({}),
    )
