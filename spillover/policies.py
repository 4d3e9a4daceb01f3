"""The policy-driven provider: ModelDeployments from a directory -> Envoy resources per node group.

Sources (the policy directory, OAuth tokens, the connected replicas) feed a pure chain:
plan (policy -> IR) then translate (IR -> protos). Nothing here talks to Envoy.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Gauge

from spillover.app import GroupView
from spillover.oauth import ClientCredentials, TokenManager
from spillover.plan import Decision, needs_token, plan_gateway, static_decision
from spillover.policy import DesiredState, DirectorySource, ModelDeployment
from spillover.policy.secrets import resolve_client_secret
from spillover.translate import ir, translate

log = logging.getLogger(__name__)


def credentials_of(md: ModelDeployment) -> ClientCredentials | None:
    offloading = md.spec.offloading_config
    remote = offloading.remote_backend if offloading else None
    oauth = remote.auth_config.oauth_config if remote and remote.auth_config else None
    if oauth is None:
        return None

    def secret() -> str:
        value = resolve_client_secret(oauth)
        if value is None:
            raise LookupError(f"model {md.model}: the client secret is a Kubernetes Secret reference")
        return value.get_secret_value()

    ref = oauth.client_secret_ref
    if ref is not None and ref.file:
        secret_ref = f"file:{ref.file}"
    elif oauth.client_secret is not None:
        # Identifies the inline value without keeping it: a changed secret means new credentials.
        digest = hashlib.blake2b(oauth.client_secret.get_secret_value().encode(), digest_size=8).hexdigest()
        secret_ref = f"inline:{digest}"
    else:
        secret_ref = f"secret:{ref.namespace or md.metadata.namespace}/{ref.name}/{ref.key}" if ref else ""
    return ClientCredentials(
        token_url=oauth.token_url,
        client_id=oauth.client_id,
        client_secret=secret,
        secret_ref=secret_ref,
        scope=" ".join(oauth.scopes),
    )


def resource_messages(resources: Any) -> list[Message]:
    out: list[Message] = []
    for kind in ("clusters", "endpoints", "secrets", "listeners", "routes"):
        out.extend(getattr(resources, kind).values())
    return out


class PolicyProvider:
    def __init__(
        self,
        directory: Path,
        listener: ir.Listener,
        registry: CollectorRegistry | None = None,
        poll_interval: float = 0.25,
    ) -> None:
        self.source = DirectorySource(directory, poll_interval=poll_interval)
        self.listener = listener
        self.changed: Callable[[], None] = lambda: None
        self.tokens = TokenManager(changed=self._inputs_changed)
        self.state: DesiredState = self.source.poll() or self.source.state
        self._decisions: dict[str, Decision] = {}
        self._since: dict[str, float] = {}
        self.registry = registry or CollectorRegistry()
        self._errors = Gauge(
            "spillover_policy_errors", "Current policy errors by file", ["file"], registry=self.registry
        )
        self._state_gauge = Gauge(
            "spillover_model_state", "1 for the state each model is in", ["model", "state"], registry=self.registry
        )
        self._share = Gauge(
            "spillover_model_remote_share_percent", "Share of a model's traffic sent remote", ["model"],
            registry=self.registry,
        )
        self._report(self.state)
        # Decisions are state of their own: reported even while no Envoy is connected.
        self.decisions()

    def _inputs_changed(self) -> None:
        self.decisions()
        self.changed()

    def _credentials(self) -> dict[str, ClientCredentials]:
        return {name: c for name, md in self.state.models.items() if (c := credentials_of(md)) is not None}

    def decisions(self) -> dict[str, Decision]:
        decisions = {}
        credentials = self._credentials()
        for name, md in self.state.models.items():
            creds = credentials.get(name)
            usable = not needs_token(md) or (creds is not None and self.tokens.token(creds) is not None)
            decisions[name] = static_decision(md, remote_usable=usable)
        for name, decision in decisions.items():
            previous = self._decisions.get(name)
            if previous is None or previous.state != decision.state:
                self._since[name] = time.time()
        self._decisions = decisions
        self._publish_decisions()
        return decisions

    def _publish_decisions(self) -> None:
        self._state_gauge.clear()
        self._share.clear()
        for name, decision in self._decisions.items():
            self._state_gauge.labels(name, decision.state.value).set(1)
            self._share.labels(name).set(decision.remote_share)

    def resources(self, group: GroupView) -> Iterable[Message]:
        credentials = self._credentials()
        tokens = {name: self.tokens.token(creds) for name, creds in credentials.items()}
        gateway = plan_gateway(
            group.name, self.listener, self.state.models.values(), self.decisions(), group.replicas, tokens
        )
        return resource_messages(translate(gateway))

    async def run(self) -> None:
        self.tokens.want(list(self._credentials().values()))
        try:
            await self.source.run(self._on_state)
        finally:
            await self.tokens.close()

    def _on_state(self, state: DesiredState) -> None:
        if state.same_content(self.state):
            return
        self.state = state
        self._report(state)
        self.tokens.want(list(self._credentials().values()))
        self._inputs_changed()

    def _report(self, state: DesiredState) -> None:
        self._errors.clear()
        by_file: dict[str, int] = {}
        for error in state.errors:
            by_file[error.file] = by_file.get(error.file, 0) + 1
            log.error("invalid policy: %s", error)
        for file, count in by_file.items():
            self._errors.labels(file).set(count)

    def models_json(self) -> dict[str, Any]:
        credentials = self._credentials()
        models = {}
        for name, md in sorted(self.state.models.items()):
            decision = self._decisions.get(name)
            origin = self.state.origins.get(name)
            creds = credentials.get(name)
            models[name] = {
                "name": md.name,
                "state": decision.state.value if decision else "UNKNOWN",
                "remote_share": decision.remote_share if decision else 0,
                "reason": decision.reason if decision else "",
                "since": self._since.get(name),
                "origin": str(origin) if origin else "",
                "stale": name in self.state.stale,
                "errors": [str(e) for e in self.state.errors_for_model(name)],
                "token_error": self.tokens.error(creds) if creds else "",
            }
        return {"models": models, "errors": [str(e) for e in self.state.errors]}
