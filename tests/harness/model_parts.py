"""Typed access to the optional parts of a ModelDeployment that a test's document has: each fails the
test, naming the part, when the model does not have it."""

from __future__ import annotations

from spillover.policy import (
    HealthCheck,
    LocalBackend,
    ModelDeployment,
    OAuthConfig,
    OffloadingConfig,
    RemoteBackend,
    SecretRef,
    ServiceReference,
)


def offloading(model: ModelDeployment) -> OffloadingConfig:
    config = model.spec.offloading_config
    assert config is not None, f"{model.name} has no offloadingConfig"
    return config


def remote_backend(model: ModelDeployment) -> RemoteBackend:
    remote = offloading(model).remote_backend
    assert remote is not None, f"{model.name} has no offloadingConfig.remoteBackend"
    return remote


def oauth_config(model: ModelDeployment) -> OAuthConfig:
    auth = remote_backend(model).auth_config
    assert auth is not None and auth.oauth_config is not None, f"{model.name} has no remote oauthConfig"
    return auth.oauth_config


def client_secret_ref(model: ModelDeployment) -> SecretRef:
    ref = oauth_config(model).client_secret_ref
    assert ref is not None, f"{model.name} has no clientSecretRef"
    return ref


def local_backend(model: ModelDeployment) -> LocalBackend:
    local = model.spec.local_backend
    assert local is not None, f"{model.name} has no localBackend"
    return local


def local_health_check(model: ModelDeployment) -> HealthCheck:
    check = local_backend(model).health_check
    assert check is not None, f"{model.name} has no localBackend.healthCheck"
    return check


def service_ref(model: ModelDeployment) -> ServiceReference:
    ref = model.spec.service_ref
    assert ref is not None, f"{model.name} has no serviceRef"
    return ref
