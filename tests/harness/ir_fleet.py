"""Gateways of many models in IR, of the kinds a fleet has, and the one-model changes made to them.

Model `i` is a mix by `i % 10`: local only, with rate-limited profiles, a remote with a bearer token,
failover, a prefix-cache profile; so every resource kind and route shape is in any fleet of 10 or more.
Every other failover model (`i % 20 == 15`) has a token too: its aggregates carry the credential
placeholder filters, a variant of the failover chain that the tokenless ones don't have.
"""

from __future__ import annotations

import dataclasses

from spillover.ir import (
    Endpoint,
    Gateway,
    HealthCheck,
    Listener,
    Model,
    OutlierDetection,
    Profile,
    RemoteBackend,
    StrategyParams,
    TrafficSplit,
)

__all__ = ["CHANGES", "change", "fleet", "fleet_model"]


def fleet_model(i: int, replicas: int = 1, name: str | None = None) -> Model:
    kind = i % 10
    name = name or f"model-{i:05d}"
    endpoints = tuple(Endpoint(f"10.{i // 250 % 250}.{i % 250}.{n + 1}", 8000, weight=10 + n) for n in range(3))
    rps = 100.0 + i % 7
    profiles: tuple[Profile, ...] = (
        Profile("default", "least-request", requests_per_second=rps / replicas, total_requests_per_second=rps),
    )
    if kind in (1, 4, 7):
        profiles += (
            Profile("batch", "throughput", requests_per_second=10.0 / replicas, total_requests_per_second=10.0),
            Profile("chat", "prefix-cache", params=StrategyParams(prefix_chars=128)),
        )
    remote = None
    split = TrafficSplit()
    failover = False
    if kind in (2, 3, 5, 8):
        token = kind in (2, 8) or i % 20 == 15
        remote = RemoteBackend(
            host=f"api-{i}.example.com",
            port=443,
            path_prefix="/v1" if kind == 3 else "",
            headers=(("x-team", "ml"),),
            bearer_token_secret_name=f"spillover-token-{name}-1234abcd" if token else None,
            bearer_token=f"token-{i}-0" if token else None,
            health_check=HealthCheck(path="/ready") if kind == 5 else None,
            outlier_detection=OutlierDetection(),
        )
        split = TrafficSplit(local=70, remote=30) if kind in (3, 8) else TrafficSplit()
        failover = kind == 5
    return Model(
        name=name,
        endpoints=endpoints,
        profiles=profiles,
        remote=remote,
        split=split,
        health_check=HealthCheck() if kind % 2 else None,
        outlier_detection=OutlierDetection() if kind == 4 else None,
        failover=failover,
    )


def fleet(count: int, name: str = "fleet", replicas: int = 1) -> Gateway:
    return Gateway(name, Listener("127.0.0.1", 10080), tuple(fleet_model(i, replicas) for i in range(count)))


def _replace_model(gateway: Gateway, index: int, model: Model | None) -> Gateway:
    models = list(gateway.models)
    if model is None:
        del models[index]
    else:
        models[index] = model
    return dataclasses.replace(gateway, models=tuple(models))


def change(gateway: Gateway, kind: str, index: int, generation: int = 1) -> Gateway:
    """`gateway` with model `index` changed by `kind` (one of CHANGES); `generation` makes it a new value."""
    model = gateway.models[index]
    if kind == "weights":
        endpoints = tuple(dataclasses.replace(e, weight=e.weight + generation) for e in model.endpoints)
        return _replace_model(gateway, index, dataclasses.replace(model, endpoints=endpoints))
    if kind == "endpoint":
        extra = Endpoint(f"10.250.{generation % 250}.{index % 250 + 1}", 8001)
        return _replace_model(gateway, index, dataclasses.replace(model, endpoints=(*model.endpoints, extra)))
    if kind == "token":
        remote = model.remote or RemoteBackend(host=f"api-{index}.example.com", port=443)
        secret = remote.bearer_token_secret_name or f"spillover-token-{model.name}-5678"
        remote = dataclasses.replace(remote, bearer_token_secret_name=secret, bearer_token=f"rotated-{generation}")
        return _replace_model(gateway, index, dataclasses.replace(model, remote=remote))
    if kind == "decision":
        # Overflow: a share of the traffic goes remote (or back), which only the routes carry.
        remote = model.remote or RemoteBackend(host=f"api-{index}.example.com", port=443)
        share = 0 if model.split.remote else 10 + generation % 80
        split = TrafficSplit(local=100 - share, remote=share)
        return _replace_model(gateway, index, dataclasses.replace(model, remote=remote, split=split))
    if kind == "remove":
        return _replace_model(gateway, index, None)
    if kind == "add":
        added = fleet_model(index + 7, name=f"added-{generation:05d}-{index}")
        return dataclasses.replace(gateway, models=(*gateway.models, added))
    raise ValueError(f"unknown change {kind!r}")


CHANGES = ("weights", "endpoint", "token", "decision", "remove", "add")
