"""A `kubernetes` ApiClient for the Kubernetes mode: from a kubeconfig file, or in-cluster."""

from __future__ import annotations

from kubernetes.client import ApiClient

__all__ = ["ApiClient", "api_client"]


def api_client(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """An ApiClient from a kubeconfig file, or the in-cluster service account when none is given."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 64)
    return client.ApiClient(configuration)
