"""A destination cluster's kubeconfig, read from a Secret: only what can be trusted from a Secret.

A kubeconfig can make its reader run programs (`exec`, `auth-provider`) and read files (`tokenFile`,
`certificate-authority`, `client-key`, ...): from a Secret that whoever may create Secrets in a model's
namespace writes, that would let them run commands in spillover's pod or send its own files (its service
account token) to a server of their choosing. So a kubeconfig from a Secret may only carry inline data:

- the cluster: `server` (https), `certificate-authority-data`, `tls-server-name`;
- the user: `token`, or `client-certificate-data` with `client-key-data`.

Everything else a kubeconfig may say about the cluster and the user is refused with the field's path
(`insecure-skip-tls-verify`, proxies, files, plugins, basic auth). Errors name the place in the
kubeconfig and the rule, never a value; the input is bounded.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import yaml  # type: ignore[import-untyped]
from kubernetes.client import ApiClient, Configuration
from pydantic import SecretStr

__all__ = ["MAX_KUBECONFIG_BYTES", "ClusterCredentials", "KubeconfigError", "api_client", "parse_kubeconfig"]

MAX_KUBECONFIG_BYTES = 256 * 1024

_CLUSTER_KEYS = {"server", "certificate-authority-data", "tls-server-name", "extensions"}
_USER_KEYS = {"token", "client-certificate-data", "client-key-data", "extensions"}
_WHY = {
    "certificate-authority": "a file on spillover's host: give certificate-authority-data",
    "insecure-skip-tls-verify": "the API server must be verified: give certificate-authority-data",
    "proxy-url": "proxies are not supported",
    "disable-compression": "not supported",
    "tokenFile": "a file on spillover's host: give token",
    "client-certificate": "a file on spillover's host: give client-certificate-data",
    "client-key": "a file on spillover's host: give client-key-data",
    "exec": "a kubeconfig from a Secret may not run programs: give token or client-certificate-data",
    "auth-provider": "a kubeconfig from a Secret may not run plugins: give token or client-certificate-data",
    "username": "basic authentication is not supported: give token or client-certificate-data",
    "password": "basic authentication is not supported: give token or client-certificate-data",
    "as": "impersonation is not supported",
    "as-uid": "impersonation is not supported",
    "as-groups": "impersonation is not supported",
    "as-user-extra": "impersonation is not supported",
}


class KubeconfigError(ValueError):
    """Why a kubeconfig cannot be used; the message names a path in it, never its content."""


@dataclass(frozen=True)
class ClusterCredentials:
    server: str
    ca_pem: str | None = None
    tls_server_name: str | None = None
    token: SecretStr | None = None
    client_cert_pem: SecretStr | None = None
    client_key_pem: SecretStr | None = None
    # A digest of the kubeconfig: the same one is one connection; shows nothing of it.
    fingerprint: str = field(default="", compare=False)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise KubeconfigError(f"{where}: must be a mapping")
    return value


def _named(document: dict[str, Any], section: str, name: Any, inner: str) -> tuple[str, dict[str, Any]]:
    items = document.get(section)
    if not isinstance(items, list):
        raise KubeconfigError(f"{section}: must be a list")
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == name:
            where = f"{section}[{index}]"
            return f"{where}.{inner}", _mapping(item.get(inner), f"{where}.{inner}")
    raise KubeconfigError(f"{section}: has no entry named by the current context")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise KubeconfigError(f"{where}: must be a non-empty string")
    return value.strip()


def _pem(value: Any, where: str) -> str:
    try:
        decoded = base64.b64decode(_text(value, where), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise KubeconfigError(f"{where}: must be base64 of a PEM block") from None
    if "-----BEGIN " not in decoded:
        raise KubeconfigError(f"{where}: must be base64 of a PEM block")
    return decoded


def _refuse_unknown(section: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in sorted(section):
        if key in allowed:
            continue
        why = _WHY.get(key, "not supported in a kubeconfig from a Secret")
        raise KubeconfigError(f"{where}.{key}: {why}")


def parse_kubeconfig(text: SecretStr) -> ClusterCredentials:
    """The cluster and credentials of the kubeconfig's current context (or its only context)."""
    raw = text.get_secret_value()
    if len(raw.encode()) > MAX_KUBECONFIG_BYTES:
        raise KubeconfigError(f"is larger than {MAX_KUBECONFIG_BYTES // 1024} KiB")
    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise KubeconfigError("is not valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from None
    except (RecursionError, ValueError, OverflowError):
        raise KubeconfigError("is not valid YAML") from None
    document = _mapping(document, "the kubeconfig")
    contexts = document.get("contexts")
    if not isinstance(contexts, list) or not contexts:
        raise KubeconfigError("contexts: must be a non-empty list")
    current = document.get("current-context")
    if current in (None, ""):
        if len(contexts) != 1:
            raise KubeconfigError("current-context: is required with more than one context")
        current = contexts[0].get("name") if isinstance(contexts[0], dict) else None
    _, context = _named(document, "contexts", current, "context")
    cluster_where, cluster = _named(document, "clusters", context.get("cluster"), "cluster")
    user_where, user = _named(document, "users", context.get("user"), "user")
    _refuse_unknown(cluster, _CLUSTER_KEYS, cluster_where)
    _refuse_unknown(user, _USER_KEYS, user_where)
    server = _text(cluster.get("server"), f"{cluster_where}.server").rstrip("/")
    if not server.startswith("https://") or len(server) <= len("https://") or any(c.isspace() for c in server):
        raise KubeconfigError(f"{cluster_where}.server: must be an https:// URL")
    ca = cluster.get("certificate-authority-data")
    token = user.get("token")
    cert, key = user.get("client-certificate-data"), user.get("client-key-data")
    if token is None and cert is None and key is None:
        raise KubeconfigError(f"{user_where}: needs token, or client-certificate-data and client-key-data")
    if (cert is None) != (key is None):
        missing = "client-key-data" if key is None else "client-certificate-data"
        raise KubeconfigError(f"{user_where}.{missing}: is required with "
                              f"{'client-certificate-data' if key is None else 'client-key-data'}")
    name = cluster.get("tls-server-name")
    return ClusterCredentials(
        server=server,
        ca_pem=_pem(ca, f"{cluster_where}.certificate-authority-data") if ca is not None else None,
        tls_server_name=_text(name, f"{cluster_where}.tls-server-name") if name is not None else None,
        token=SecretStr(_text(token, f"{user_where}.token")) if token is not None else None,
        client_cert_pem=SecretStr(_pem(cert, f"{user_where}.client-certificate-data")) if cert is not None else None,
        client_key_pem=SecretStr(_pem(key, f"{user_where}.client-key-data")) if key is not None else None,
        fingerprint=hashlib.sha256(raw.encode()).hexdigest()[:16],
    )


class _Files:
    """The client certificate and key, which the HTTP client only reads from files: in a private
    directory (0700, files 0600), removed on close."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="spillover-destination-")
        os.chmod(self.directory, 0o700)

    def write(self, name: str, content: str) -> str:
        path = os.path.join(self.directory, name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(content)
        return path

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class DestinationApiClient(ApiClient):  # type: ignore[misc]
    """An ApiClient that removes its private files when closed."""

    files: _Files | None = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            super().close()
        if self.files is not None:
            self.files.close()
            self.files = None


def api_client(credentials: ClusterCredentials, pool_size: int = 8) -> ApiClient:
    configuration = Configuration(host=credentials.server)
    if credentials.ca_pem is not None:
        configuration.ca_cert_data = credentials.ca_pem
    if credentials.tls_server_name is not None:
        configuration.tls_server_name = credentials.tls_server_name
    if credentials.token is not None:
        configuration.api_key = {"authorization": credentials.token.get_secret_value()}
        configuration.api_key_prefix = {"authorization": "Bearer"}
    configuration.connection_pool_maxsize = pool_size
    # One try per call: the callers bound their time and retry with backoff themselves (urllib3's default of
    # 3 retries would quadruple every timeout, and log the server's URL at each retry).
    configuration.retries = 0
    files = None
    if credentials.client_cert_pem is not None and credentials.client_key_pem is not None:
        files = _Files()
        configuration.cert_file = files.write("client.crt", credentials.client_cert_pem.get_secret_value())
        configuration.key_file = files.write("client.key", credentials.client_key_pem.get_secret_value())
    client = DestinationApiClient(configuration)
    client.files = files
    return client
