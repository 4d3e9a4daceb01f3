"""A translated gateway on a real Envoy: the translator's resources inlined into a static bootstrap
(tests/harness/static_bootstrap.py), for the tests of what Envoy makes of them (tests/translate)."""

from __future__ import annotations

from collections.abc import Callable

from spillover.ir import Endpoint, Gateway, Listener, Model
from spillover.translate import translate
from tests.harness.client import Response, request
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.static_bootstrap import to_static_bootstrap
from tests.harness.upstream import HttpUpstream

CHAT = "/v1/chat/completions"


class Gw:
    """A started Envoy serving one translated gateway."""

    def __init__(self, envoy: Envoy, port: int) -> None:
        self.envoy = envoy
        self.port = port

    def post(
        self, body: dict | str | None, headers: dict[str, str] | None = None, path: str = CHAT
    ) -> Response:
        hdrs = {"content-type": "application/json", **(headers or {})}
        return request("POST", f"http://127.0.0.1:{self.port}{path}", body=body, headers=hdrs, timeout=10)

    def counter(self, name: str) -> int:
        return self.envoy.stats().get(name, 0)


def start_gateway(envoy_factory: Callable[..., Envoy], *models: Model) -> Gw:
    port = free_port()
    resources = translate(Gateway("test", Listener("127.0.0.1", port), models))
    envoy = envoy_factory(to_static_bootstrap(resources), name="translate")
    wait_until(envoy.is_ready, timeout=15, message="envoy never became ready")
    gw = Gw(envoy, port)
    # The listener accepts once workers start; any HTTP answer proves it.
    wait_until(lambda: gw.post({"model": "__probe__"}).status == 404, timeout=15, message="listener")
    return gw


def ep(upstream: HttpUpstream, weight: int = 1) -> Endpoint:
    return Endpoint("127.0.0.1", upstream.port, weight)


def served_by(response: Response) -> str:
    assert response.status == 200, (response.status, response.text)
    return response.headers["x-upstream-name"]
