"""A model that starts using prefix-cache in a running fleet: a real Envoy on spillover's xDS server.

The slow-path routes, where a body-routed request's filter chain is built, put spillover.prefix_hash in
the chain only while some model uses it (routes.py `_slow_path`). So the first prefix-cache model of a
fleet changes them too: after that RDS update its body-routed requests must get their hash, and after
the last one goes back none must (a client's own header removed, as before).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from spillover.ir import Endpoint, Gateway, Listener, Model, Profile, StrategyParams
from spillover.names import PREFIX_HASH_HEADER, ROUTE_CONFIG_NAME
from spillover.server.resources import ROUTE
from spillover.translate import translate
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.client import request as http_request
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.upstream import HttpUpstream
from tests.harness.xds import XdsThread

GROUP, NODE = "edge", "edge-1"
PLAIN = (Profile("default", "random"),)
HASHED = (Profile("default", "prefix-cache", params=StrategyParams(prefix_chars=40)),)


def _messages(port: int, models: tuple[Model, ...]) -> list:
    resources = translate(Gateway(GROUP, Listener("127.0.0.1", port), models))
    return [m for items in resources.by_type_url().values() for m in items.values()]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_the_first_prefix_cache_model_of_a_fleet_gets_its_hash_on_body_routed_requests(
    delta: bool,
    xds_server: XdsThread,
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    port = free_port()
    ups = {name: upstream_factory(name) for name in ("a", "m")}

    def fleet(m_profiles: tuple[Profile, ...]) -> tuple[Model, ...]:
        return tuple(
            Model(name, (Endpoint("127.0.0.1", up.port),), profiles=PLAIN if name == "a" else m_profiles)
            for name, up in ups.items()
        )

    def publish(models: tuple[Model, ...]) -> None:
        snapshot = xds_server.set_snapshot(GROUP, _messages(port, models))
        # Envoy's config_dump shows the type's version in SotW, the resource's own in Delta.
        running = snapshot.get(ROUTE)[ROUTE_CONFIG_NAME].version if delta else snapshot.version(ROUTE)

        def runs() -> bool:
            configs = envoy.config_dump(resource="dynamic_route_configs").get("configs", [])
            return any(c.get("version_info") == running for c in configs)

        wait_until(runs, timeout=15, message=f"Envoy never ran RDS {running}")

    def hash_of(model: str) -> str | None:
        """What the upstream of `model` sees of the hash header for a body-routed request to it."""
        ups[model].reset()
        body = {"model": model, "messages": [{"role": "user", "content": "The same long prompt prefix. " * 4}]}
        response = http_request(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", body=body,
            headers={PREFIX_HASH_HEADER: "forged"}, timeout=5,
        )  # fmt: skip
        assert response.status == 200, response
        (seen,) = ups[model].requests
        return seen["headers"].get(PREFIX_HASH_HEADER)

    xds_server.set_snapshot(GROUP, _messages(port, fleet(PLAIN)))
    bootstrap = build_bootstrap(NODE, GROUP, xds_server.xds_address, admin_port=0, delta=delta)
    envoy = envoy_factory(bootstrap, name=NODE)
    wait_until(envoy.is_ready, timeout=15, message="envoy never became ready over ADS")
    wait_until(lambda: hash_of("m") is None, timeout=10, message="m never served")
    assert hash_of("a") is None

    publish(fleet(HASHED))  # m is the fleet's first prefix-cache model
    hashed = hash_of("m")
    assert hashed is not None and hashed != "forged"
    assert hash_of("m") == hashed  # the same prefix, the same hash
    assert hash_of("a") is None

    publish(fleet(PLAIN))  # and its last
    assert hash_of("m") is None
    assert hash_of("a") is None
