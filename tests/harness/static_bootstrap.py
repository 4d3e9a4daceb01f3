"""Test-only: turn translated xDS resources into a static Envoy bootstrap.

The xDS server is a separate stage; to prove the translator's output on a real Envoy without it,
RDS is replaced by the inline route_config it names, EDS by the inline load_assignment, and SDS
references by static secrets of the same name. Everything else is passed through untouched, so what
Envoy runs is exactly what ADS would deliver.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.credential_injector.v3 import credential_injector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.injected_credentials.generic.v3 import generic_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message

from spillover.translate import Resources
from spillover.translate.bootstrap import static_bootstrap

_HCM = "envoy.filters.network.http_connection_manager"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _dict(message: Message) -> dict[str, Any]:
    # Through JSON text: MessageToDict leaves OrderedDicts inside Any fields, which YAML refuses.
    return json.loads(MessageToJson(message, preserving_proto_field_name=True))


def _inline_routes(resources: Resources, listener: Message) -> Message:
    listener = type(listener).FromString(listener.SerializeToString())
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            if network_filter.name != _HCM:
                continue
            manager = hcm_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(manager)
            if manager.HasField("rds"):
                manager.route_config.CopyFrom(resources.routes[manager.rds.route_config_name])
                manager.ClearField("rds")
            _static_credentials(manager.http_filters)
            network_filter.typed_config.Pack(manager)
    return listener


def _static_secret_refs(cluster: cluster_pb2.Cluster) -> None:
    packed = cluster.typed_extension_protocol_options.get(_HTTP_OPTIONS)
    if packed is None:
        return
    options = http_protocol_options_pb2.HttpProtocolOptions()
    packed.Unpack(options)
    _static_credentials(options.http_filters)
    cluster.typed_extension_protocol_options[_HTTP_OPTIONS].Pack(options)


def _static_credentials(http_filters: Iterable[hcm_pb2.HttpFilter]) -> None:
    for http_filter in http_filters:
        if http_filter.name != "envoy.filters.http.credential_injector":
            continue
        injector = credential_injector_pb2.CredentialInjector()
        http_filter.typed_config.Unpack(injector)
        generic = generic_pb2.Generic()
        injector.credential.typed_config.Unpack(generic)
        # Without a config source the name refers to static_resources.secrets.
        generic.credential.ClearField("sds_config")
        injector.credential.typed_config.Pack(generic)
        http_filter.typed_config.Pack(injector)


def _inline_endpoints(resources: Resources, cluster: cluster_pb2.Cluster) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster.FromString(cluster.SerializeToString())
    if cluster.type == cluster_pb2.Cluster.EDS:
        service = cluster.eds_cluster_config.service_name or cluster.name
        cluster.type = cluster_pb2.Cluster.STATIC
        cluster.ClearField("eds_cluster_config")
        cluster.load_assignment.CopyFrom(resources.endpoints[service])
    _static_secret_refs(cluster)
    return cluster


def static_resources(resources: Resources) -> dict[str, Any]:
    return {
        "listeners": [_dict(_inline_routes(resources, lis)) for lis in resources.listeners.values()],
        "clusters": [_dict(_inline_endpoints(resources, c)) for c in resources.clusters.values()],
        "secrets": [_dict(s) for s in resources.secrets.values()],
    }


def to_static_bootstrap(
    resources: Resources, node_id: str = "translate-test", admin_port: int = 0
) -> dict[str, Any]:
    return static_bootstrap(node_id, "translate-test", admin_port, static_resources(resources))
