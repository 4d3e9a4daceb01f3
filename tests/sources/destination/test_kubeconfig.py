"""A kubeconfig from a Secret: inline credentials only, each refusal naming the field, nothing of it shown."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from spillover.sources.destination.kubeconfig import (
    MAX_KUBECONFIG_BYTES,
    KubeconfigError,
    api_client,
    parse_kubeconfig,
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.destination-secret-token"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANkey\n-----END PRIVATE KEY-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubeconfig(cluster: dict[str, Any] | None = None, user: dict[str, Any] | None = None, **top: Any) -> SecretStr:
    document = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "b", "cluster": cluster if cluster is not None else {
            "server": "https://b.example.com:6443", "certificate-authority-data": b64(PEM)}}],
        "users": [{"name": "me", "user": user if user is not None else {"token": TOKEN}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "b", "user": "me", "namespace": "ignored"}}],
        "current-context": "ctx",
        **top,
    }
    return SecretStr(yaml.safe_dump(document))


def refusal(text: SecretStr) -> str:
    with pytest.raises(KubeconfigError) as caught:
        parse_kubeconfig(text)
    message = str(caught.value)
    assert TOKEN not in message and "example.com" not in message and "MIIB" not in message
    return message


def test_a_token_and_a_ca() -> None:
    credentials = parse_kubeconfig(kubeconfig())
    assert credentials.server == "https://b.example.com:6443"
    assert credentials.ca_pem == PEM
    assert credentials.token is not None and credentials.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(credentials) and len(credentials.fingerprint) == 16
    # The same kubeconfig is the same fingerprint; another one another.
    assert parse_kubeconfig(kubeconfig()).fingerprint == credentials.fingerprint
    assert parse_kubeconfig(kubeconfig(user={"token": "other"})).fingerprint != credentials.fingerprint


def test_a_client_certificate_is_written_privately_and_removed(tmp_path: Path) -> None:
    credentials = parse_kubeconfig(kubeconfig(user={"client-certificate-data": b64(PEM), "client-key-data": b64(KEY)}))
    client = api_client(credentials)
    key_file = client.configuration.key_file
    assert key_file and Path(key_file).read_text() == KEY
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(key_file)).st_mode & 0o777 == 0o700
    client.close()
    assert not Path(key_file).exists()


def test_only_context_without_current_context() -> None:
    document = yaml.safe_load(kubeconfig().get_secret_value())
    document["current-context"] = ""
    text = SecretStr(yaml.safe_dump(document))
    assert parse_kubeconfig(text).server == "https://b.example.com:6443"


@pytest.mark.parametrize(("cluster", "user", "expected"), [
    ({"server": "https://b:6443", "certificate-authority": "/etc/kubernetes/ca.crt"}, None,
     "clusters[0].cluster.certificate-authority: a file on spillover's host: give certificate-authority-data"),
    ({"server": "https://b:6443", "insecure-skip-tls-verify": True}, None,
     "clusters[0].cluster.insecure-skip-tls-verify: the API server must be verified: give certificate-authority-data"),
    ({"server": "https://b:6443", "proxy-url": "http://proxy:3128"}, None,
     "clusters[0].cluster.proxy-url: proxies are not supported"),
    ({"server": "http://b.example.com:8080"}, None, "clusters[0].cluster.server: must be an https:// URL"),
    ({"certificate-authority-data": b64(PEM)}, None, "clusters[0].cluster.server: must be a non-empty string"),
    ({"server": "https://b:6443", "certificate-authority-data": "not base64!"}, None,
     "clusters[0].cluster.certificate-authority-data: must be base64 of a PEM block"),
    (None, {"exec": {"command": "/bin/sh", "args": ["-c", "touch /tmp/pwned"], "apiVersion": "v1"}},
     "users[0].user.exec: a kubeconfig from a Secret may not run programs: give token or client-certificate-data"),
    (None, {"auth-provider": {"name": "gcp"}},
     "users[0].user.auth-provider: a kubeconfig from a Secret may not run plugins: give token or "
     "client-certificate-data"),
    (None, {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"},
     "users[0].user.tokenFile: a file on spillover's host: give token"),
    (None, {"client-certificate": "/tmp/c.crt", "client-key": "/tmp/c.key"},
     "users[0].user.client-certificate: a file on spillover's host: give client-certificate-data"),
    (None, {"username": "admin", "password": "hunter2"},
     "users[0].user.password: basic authentication is not supported: give token or client-certificate-data"),
    (None, {"token": TOKEN, "as": "system:admin"}, "users[0].user.as: impersonation is not supported"),
    (None, {}, "users[0].user: needs token, or client-certificate-data and client-key-data"),
    (None, {"client-certificate-data": b64(PEM)},
     "users[0].user.client-key-data: is required with client-certificate-data"),
])
def test_refusals(cluster: dict[str, Any] | None, user: dict[str, Any] | None, expected: str) -> None:
    assert refusal(kubeconfig(cluster, user)) == expected


def test_documents_that_are_not_kubeconfigs() -> None:
    assert refusal(SecretStr(f"token: {TOKEN}\n  bad: [")) == "is not valid YAML (line 2)"
    assert refusal(SecretStr(f"- {TOKEN}")) == "the kubeconfig: must be a mapping"
    assert refusal(SecretStr("apiVersion: v1\n")) == "contexts: must be a non-empty list"
    two = yaml.safe_load(kubeconfig().get_secret_value())
    two["contexts"].append({"name": "other", "context": {"cluster": "b", "user": "me"}})
    two["current-context"] = ""
    assert refusal(SecretStr(yaml.safe_dump(two))) == "current-context: is required with more than one context"
    two["current-context"] = "missing"
    assert refusal(SecretStr(yaml.safe_dump(two))) == "contexts: has no entry named by the current context"
    big = SecretStr("x" * (MAX_KUBECONFIG_BYTES + 1))
    assert refusal(big) == "is larger than 256 KiB"


def test_the_client_carries_the_token_and_the_ca_and_does_not_retry() -> None:
    client = api_client(parse_kubeconfig(kubeconfig()))
    try:
        configuration = client.configuration
        assert configuration.host == "https://b.example.com:6443"
        assert configuration.ca_cert_data == PEM and configuration.verify_ssl
        assert configuration.auth_settings()["BearerToken"]["value"] == f"Bearer {TOKEN}"
        assert configuration.retries == 0
    finally:
        client.close()
