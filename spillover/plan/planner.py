"""Planning: validated policies + decisions + what the sources know -> the translation IR of one gateway.

Pure functions. The inputs are the desired state (ModelDeployments), the decision per model (state and
remote share, from the overflow engine in spillover.decide), the number of Envoy replicas of the node group (rate limits are
model-wide, so each replica enforces its share), the OAuth tokens fetched for remote backends, and where the
copy of a model with a destination cluster is reached (its Service's address: the remote backend).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping

from spillover import ir, names
from spillover.decide import Decision
from spillover.decide.copies import CopyRoute
from spillover.policy import HealthCheck as PolicyHealthCheck
from spillover.policy import ModelDeployment, OAuthConfig, OverflowState
from spillover.policy import OutlierDetection as PolicyOutlier
from spillover.policy.types import split_host_port


def bearer_secret_name(md: ModelDeployment) -> str:
    oauth = _oauth(md)
    return names.bearer_secret_name(md.name, oauth.token_url if oauth else "", oauth.client_id if oauth else "")


def _oauth(md: ModelDeployment) -> OAuthConfig | None:
    offloading = md.spec.offloading_config
    remote = offloading.remote_backend if offloading else None
    auth = remote.auth_config if remote else None
    return auth.oauth_config if auth else None


def needs_token(md: ModelDeployment) -> bool:
    return _oauth(md) is not None


def _health_check(policy: PolicyHealthCheck | None) -> ir.HealthCheck | None:
    if policy is None:
        return None
    return ir.HealthCheck(
        path=policy.path,
        interval_s=policy.effective_interval,
        timeout_s=policy.effective_timeout,
        healthy_threshold=policy.healthy_threshold,
        unhealthy_threshold=policy.unhealthy_threshold,
        port=policy.port,
    )


def _outlier(policy: PolicyOutlier | None) -> ir.OutlierDetection | None:
    if policy is None or not policy.enabled:
        return None
    return ir.OutlierDetection(
        consecutive_5xx=policy.consecutive_5xx,
        interval_s=policy.interval,
        base_ejection_time_s=policy.base_ejection_time,
        max_ejection_percent=int(policy.max_ejection_percent),
    )


def _copy_remote(md: ModelDeployment, route: CopyRoute | None) -> ir.RemoteBackend | None:
    """The remote backend of a model with a destination: its copy's address (none before it has one)."""
    offloading = md.spec.offloading_config
    destination = offloading.destination if offloading else None
    if destination is None or route is None:
        return None
    return ir.RemoteBackend(
        host=route.host,
        port=route.port,
        scheme="http",
        health_check=_health_check(destination.health_check),
        # As for any remote backend by default (remoteBackend.outlierDetection's defaults).
        outlier_detection=_outlier(PolicyOutlier()),
    )


def _remote(md: ModelDeployment, token: str | None, route: CopyRoute | None = None) -> ir.RemoteBackend | None:
    offloading = md.spec.offloading_config
    remote = offloading.remote_backend if offloading else None
    if offloading is not None and offloading.destination is not None:
        return _copy_remote(md, route)
    if remote is None:
        return None
    ca = remote.effective_ca
    return ir.RemoteBackend(
        host=remote.host_name,
        port=remote.effective_port,
        scheme=remote.scheme,
        sni=remote.effective_sni,
        ca_file=None if ca in (None, "system") else ca,
        host_rewrite=remote.effective_host_rewrite,
        path_prefix=remote.render_path_prefix(md.model, md.workspace),
        headers=tuple(sorted(remote.headers_to_add.items())),
        # A secret Envoy can't get stalls its whole initialization (15 s fetch timeout), so the
        # secret is referenced only once a token exists; until then the remote gets no traffic.
        bearer_token_secret_name=bearer_secret_name(md) if needs_token(md) and token else None,
        bearer_token=token,
        health_check=_health_check(remote.health_check),
        outlier_detection=_outlier(remote.outlier_detection),
    )


_DEFAULT_PARAMS = ir.StrategyParams()


def _profiles(md: ModelDeployment, replicas: int) -> tuple[ir.Profile, ...]:
    routing = md.spec.routing
    if routing is None:
        return (ir.Profile("default", "least-request"),)
    profiles = []
    for name, profile in sorted(routing.effective_profiles().items()):
        total = float(profile.requests_per_second or 0.0)
        # Each replica enforces its share; the 429 body quotes the model-wide figure users configured.
        share = total / replicas if total else 0.0
        params = ir.StrategyParams(
            session_header=profile.effective_session_header,
            prefix_chars=profile.effective_prefix_length,
            hash_balance_factor=profile.hash_balance_factor or _DEFAULT_PARAMS.hash_balance_factor,
        )
        profiles.append(
            ir.Profile(
                name=name,
                strategy=routing.strategy_for(name),
                requests_per_second=share,
                total_requests_per_second=total,
                burst=float(profile.burst) / replicas if profile.burst else 0.0,
                params=params,
            )
        )
    return tuple(profiles)


def _endpoints(md: ModelDeployment, latency_weights: Mapping[str, int]) -> tuple[ir.Endpoint, ...]:
    local = md.spec.local_backend
    endpoints = []
    for text in local.endpoints if local else []:
        host, port = split_host_port(text)
        endpoints.append(ir.Endpoint(host=host, port=int(port or 0), latency_weight=latency_weights.get(text, 1)))
    return tuple(endpoints)


def uses_least_latency(md: ModelDeployment) -> bool:
    routing = md.spec.routing
    if routing is None:
        return False
    return any(routing.strategy_for(name) == "least-latency" for name in routing.effective_profiles())


def model_ir(
    md: ModelDeployment,
    decision: Decision,
    replicas: int,
    token: str | None,
    latency_weights: Mapping[str, int] | None = None,
    copy_route: CopyRoute | None = None,
) -> ir.Model:
    remote = _remote(md, token, copy_route)
    usable = remote is not None and (token is not None or not needs_token(md))
    remote_share = decision.remote_share if usable else 0
    # The two sides back each other up in Envoy only when the remote can serve (a remote still waiting
    # for its token, or a destination's copy with no ready replica, would fail every request it took) and
    # offloading is on (DISABLED: local only).
    failover = usable and decision.remote != "unusable" and decision.state != OverflowState.DISABLED
    timeouts = md.spec.timeouts
    retries = md.spec.retries
    routing = md.spec.routing
    return ir.Model(
        name=md.model,
        endpoints=_endpoints(md, latency_weights or {}),
        profiles=_profiles(md, replicas),
        default_profile=routing.effective_default_profile if routing else "default",
        locked_strategy=routing.locked_routing_strategy if routing else None,
        remote=remote,
        split=ir.TrafficSplit(local=100 - remote_share, remote=remote_share),
        timeouts=ir.Timeouts(
            request_s=timeouts.request,
            per_try_s=retries.per_try_timeout or 0.0,
            per_try_idle_s=timeouts.idle or 0.0,
            connect_s=timeouts.connect,
        ),
        # `retryOn: []` names no condition to retry on: no retries (Envoy would refuse the policy).
        retries=ir.Retries(num_retries=retries.attempts if retries.retry_on else 0, retry_on=tuple(retries.retry_on)),
        health_check=_health_check(md.spec.local_backend.health_check) if md.spec.local_backend else None,
        outlier_detection=_outlier(md.spec.local_backend.outlier_detection) if md.spec.local_backend else None,
        failover=failover,
    )


def plan_gateway(
    group: str,
    listener: ir.Listener,
    models: Iterable[ModelDeployment],
    decisions: Mapping[str, Decision],
    replicas: int,
    tokens: Mapping[str, str | None],
    latency_weights: Mapping[str, Mapping[str, int]] | None = None,
    copy_routes: Mapping[str, CopyRoute] | None = None,
    split_weights: str = "route",
    failover_remote: str = "internal-listener",
) -> ir.Gateway:
    """`decisions`, `tokens`, `latency_weights` (endpoint "host:port" -> weight) and `copy_routes` (where
    the copy on a model's destination cluster is reached) are keyed by model name (spec.model).
    `split_weights`: where the translation puts the splits (`ir.Gateway.split_weights`); `failover_remote`:
    how failover models' local-first aggregates reach the remote (`ir.Gateway.failover_remote`)."""
    replicas = max(1, replicas)
    planned = []
    for md in sorted(models, key=lambda m: m.model):
        decision = decisions.get(md.model) or Decision(OverflowState.STANDBY, 0)
        weights = (latency_weights or {}).get(md.model)
        route = (copy_routes or {}).get(md.model)
        planned.append(model_ir(md, decision, replicas, tokens.get(md.model), weights, route))
    return ir.Gateway(
        name=group, listener=listener, models=tuple(planned), split_weights=split_weights,
        failover_remote=failover_remote,
    )


class Planner:
    """`plan_gateway` that gives the same IR object for a model whose inputs did not change.

    Later stages compare a model's IR with what they rendered last time by identity first (one check
    instead of a walk through the value), so an unchanged model costs them nothing. One planner serves
    every group: entries are per Envoy count (groups of the same size share them) and model; the counts
    planned least recently are dropped beyond `counts`, and a count's entries for models gone are dropped when
    they outnumber the models planned."""

    def __init__(self, counts: int = 8) -> None:
        self.counts = counts
        self._memo: dict[int, dict[str, tuple[tuple[object, ...], ir.Model]]] = {}
        self._order: tuple[list[ModelDeployment], list[ModelDeployment]] = ([], [])

    def _sorted(self, models: Iterable[ModelDeployment]) -> list[ModelDeployment]:
        given = list(models)
        last, ordered = self._order
        if len(given) != len(last) or not all(map(operator.is_, given, last)):
            ordered = sorted(given, key=lambda m: m.model)
            self._order = (given, ordered)
        return ordered

    def plan(
        self,
        group: str,
        listener: ir.Listener,
        models: Iterable[ModelDeployment],
        decisions: Mapping[str, Decision],
        replicas: int,
        tokens: Mapping[str, str | None],
        latency_weights: Mapping[str, Mapping[str, int]] | None = None,
        copy_routes: Mapping[str, CopyRoute] | None = None,
        split_weights: str = "route",
        failover_remote: str = "internal-listener",
    ) -> ir.Gateway:
        replicas = max(1, replicas)
        ordered = self._sorted(models)
        memo = self._memo.pop(replicas, None)
        if memo is None:
            memo = {}
        elif len(memo) > 2 * len(ordered) + 64:
            planned_names = {md.model for md in ordered}
            memo = {name: entry for name, entry in memo.items() if name in planned_names}
        self._memo[replicas] = memo  # the most recent count last
        while len(self._memo) > self.counts:
            del self._memo[next(iter(self._memo))]
        weights_of = latency_weights or {}
        routes = copy_routes or {}
        planned = []
        for md in ordered:
            name = md.model
            decision, token = decisions.get(name), tokens.get(name)
            weights, route = weights_of.get(name), routes.get(name)
            known = memo.get(name)
            if known is not None:
                inputs = known[0]
                # Identity first: the evaluator keeps a Decision that did not change, the provider its maps.
                if (
                    inputs[0] is md
                    and (inputs[1] is decision or inputs[1] == decision)
                    and inputs[2] == token
                    and (inputs[3] is weights or inputs[3] == weights)
                    and (inputs[4] is route or inputs[4] == route)
                ):
                    planned.append(known[1])
                    continue
            model = model_ir(md, decision or Decision(OverflowState.STANDBY, 0), replicas, token, weights, route)
            if known is not None and known[1] == model:
                model = known[1]  # the same value: the same object, for the stages after
            memo[name] = ((md, decision, token, weights, route), model)
            planned.append(model)
        return ir.Gateway(
            name=group, listener=listener, models=tuple(planned), split_weights=split_weights,
            failover_remote=failover_remote,
        )
