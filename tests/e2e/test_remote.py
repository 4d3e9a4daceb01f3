"""Remote backends through the real control plane: https with a private CA and SNI, the path prefix
template, added headers and an OAuth2 client-credentials token fetched once by spillover (from a real
token endpoint) and injected by Envoy; secrets never shown. And a model that has local endpoints keeps
all of its traffic local (STANDBY) while its remote gets nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness.envoy import Envoy
from tests.harness.load import CHAT, post_model, served_by
from tests.harness.policy_files import model_deployment, write
from tests.harness.polling import wait_until
from tests.harness.serve import Spillover
from tests.harness.token_endpoint import TokenEndpoint
from tests.harness.upstream import HttpUpstream, make_self_signed_ca_and_cert

MODEL = "Qwen/Qwen2.5-7B-Instruct"
SNI = "models.remote.test"
CLIENT_ID = "spillover-edge-1"
CLIENT_SECRET = "s3cret-client-value-do-not-log"


def _remote(tmp_path: Path, upstream: HttpUpstream, ca: Path, token_url: str) -> dict[str, Any]:
    secret_file = tmp_path / "oauth-client-secret"
    secret_file.write_text(CLIENT_SECRET + "\n")
    secret_file.chmod(0o600)
    return {
        "host": "127.0.0.1",
        "port": upstream.port,
        "scheme": "https",
        "ca": str(ca),
        "sni": SNI,
        "hostRewrite": SNI,
        "pathPrefix": "/$workspace/models/$model",
        "headersToAdd": {"x-origin-cluster": "edge-1", "x-api-version": "2026-01"},
        "authConfig": {
            "type": "oauth",
            "oauthConfig": {
                "clientId": CLIENT_ID,
                "clientSecretRef": {"file": str(secret_file)},
                "tokenUrl": token_url,
            },
        },
    }


def test_failover_to_https_remote_with_oauth_token_reused_and_never_shown(
    tmp_path: Path,
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    token_endpoint: Callable[..., TokenEndpoint],
) -> None:
    ca, cert, key = make_self_signed_ca_and_cert(tmp_path / "pki", SNI)
    remote = upstream_factory("remote-tls", cert_path=cert, key_path=key)
    oauth = token_endpoint(CLIENT_ID, CLIENT_SECRET)
    document = model_deployment(
        "qwen", model=MODEL, namespace="team-ai", remote=_remote(tmp_path, remote, ca, oauth.url)
    )
    write(policy_dir / "qwen.yaml", document)
    # DEBUG: the strictest setting for "secrets never appear in logs".
    server = spillover_factory(policy_dir, log_level="DEBUG")
    edge_factory(server, "edge-1")
    port = server.listen_port

    # No local endpoint: once spillover holds a token, 100% of the traffic goes remote.
    wait_until(lambda: post_model(port, MODEL).status == 200, timeout=10, message="remote never served")
    state = server.models()["models"][MODEL]
    assert (state["state"], state["remote_share"], state["token_error"]) == ("FAILOVER", 100, "")
    assert oauth.requests == 1 and oauth.rejected == 0, (oauth.requests, oauth.rejected)
    assert oauth.grant_types == ["client_credentials"]
    (token,) = oauth.tokens

    for i in range(30):
        response = post_model(port, MODEL, {"x-request-n": str(i)})
        assert served_by(response) == "remote-tls", (response.status, response.text)
    traffic = [r for r in remote.requests if r["headers"].get("x-request-n") is not None]
    assert len(traffic) == 30
    for record in traffic:
        assert record["method"] == "POST"
        assert record["path"] == f"/team-ai/models/{MODEL}{CHAT}", record["path"]
        assert record["sni"] == SNI
        assert record["headers"]["host"] == SNI
        assert record["headers"]["x-origin-cluster"] == "edge-1"
        assert record["headers"]["x-api-version"] == "2026-01"
        assert record["headers"]["authorization"] == f"Bearer {token}"
    # Many model requests, one token request: the token is cached by spillover and reused by Envoy.
    assert oauth.requests == 1

    # Secrets redacted: neither the token nor the client secret leave spillover in clear.
    config = server.get("/debug/config?node=edge-1")
    assert config.status == 200
    assert config.json()["resources"].get("SDS"), "the token secret should be listed (redacted)"
    assert "[redacted]" in config.text
    for view in (config.text, server.get("/debug/models").text, server.get("/metrics").text):
        assert token not in view
        assert CLIENT_SECRET not in view
    assert server.stop() == 0, server.log()
    log = server.log()
    assert "DEBUG" in log, "the server did not log at DEBUG: the log check proves little"
    assert token not in log and token.removeprefix("tok-") not in log
    assert CLIENT_SECRET not in log


def test_standby_model_with_local_endpoints_sends_nothing_to_its_remote(
    tmp_path: Path,
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    token_endpoint: Callable[..., TokenEndpoint],
) -> None:
    ca, cert, key = make_self_signed_ca_and_cert(tmp_path / "pki", SNI)
    remote = upstream_factory("remote-tls", cert_path=cert, key_path=key)
    local = [upstream_factory("local-0"), upstream_factory("local-1")]
    oauth = token_endpoint(CLIENT_ID, CLIENT_SECRET)
    document = model_deployment(
        "qwen",
        [u.address for u in local],
        model=MODEL,
        namespace="team-ai",
        remote=_remote(tmp_path, remote, ca, oauth.url),
    )
    write(policy_dir / "qwen.yaml", document)
    server = spillover_factory(policy_dir)
    edge_factory(server, "edge-1")
    port = server.listen_port

    # The remote is usable (a token was fetched), and still gets nothing while the model is in STANDBY.
    wait_until(lambda: oauth.tokens, timeout=10, message="no token was fetched")
    wait_until(lambda: server.models()["models"][MODEL]["state"] == "STANDBY", timeout=5)
    state = server.models()["models"][MODEL]
    assert (state["remote_share"], state["token_error"]) == (0, "")
    served = [served_by(post_model(port, MODEL)) for _ in range(40)]
    assert set(served) == {"local-0", "local-1"}, served
    for upstream in local:
        for record in upstream.requests:
            assert record["path"] == CHAT
            assert "authorization" not in record["headers"]
            assert "x-origin-cluster" not in record["headers"]
    assert remote.request_count == 0
    assert server.stop() == 0, server.log()
