"""Test harness: real processes (Envoy, `spillover serve`, Prometheus, a Kubernetes API server), real HTTP
upstreams, free ports, deadline-bound polling, and the builders the tests share. Test modules and conftests
import from here, never from one another."""

from tests.harness.client import Response, request
from tests.harness.envoy import AdminError, Envoy, envoy_binary
from tests.harness.polling import async_wait_until, wait_until
from tests.harness.ports import free_port
from tests.harness.upstream import HttpsUpstream, HttpUpstream, make_self_signed_ca_and_cert

__all__ = [
    "AdminError",
    "Envoy",
    "HttpUpstream",
    "HttpsUpstream",
    "Response",
    "async_wait_until",
    "envoy_binary",
    "free_port",
    "make_self_signed_ca_and_cert",
    "request",
    "wait_until",
]
