"""Who is on the other end of a stream: the names of a verified client certificate, from gRPC's auth
context (filled in by the TLS handshake; nothing here parses certificates)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ANONYMOUS", "PeerIdentity", "identity_from_auth_context"]

# What gRPC's TLS handshake puts in the auth context (src/core/tsi/ssl_transport_security and the
# security connectors): the SPIFFE ID is only set when the certificate carries exactly one valid one.
_SPIFFE = "peer_spiffe_id"
_URIS = "peer_uri"
_DNS = "peer_dns"
_TRANSPORT = "transport_security_type"
# Certificates come from the client CA, but their names are still shown in logs and status; a SAN far
# longer than any real one is cut rather than kept.
_MAX_NAME = 512
_MAX_NAMES = 32


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """`names`: URI SANs (the SPIFFE ID among them) then DNS SANs of a verified client certificate;
    empty for a plain-text peer. `principal` is the one name that stands for the peer in counts, logs
    and /debug/proxies: the SPIFFE ID, else the first URI, else the first DNS name."""

    authenticated: bool
    principal: str
    uris: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.uris, *self.dns_names)

    def describe(self) -> str:
        return self.principal if self.authenticated else "(unauthenticated)"


ANONYMOUS = PeerIdentity(authenticated=False, principal="")


def _values(context: Mapping[str, Sequence[bytes]], key: str) -> tuple[str, ...]:
    out = []
    for raw in list(context.get(key, ()))[:_MAX_NAMES]:
        text = raw.decode("utf-8", errors="replace")
        if text and len(text) <= _MAX_NAME:
            out.append(text)
    return tuple(out)


def identity_from_auth_context(context: Mapping[str, Sequence[bytes]] | None) -> PeerIdentity:
    """The identity of a peer from `ServicerContext.auth_context()`; ANONYMOUS without a verified
    client certificate."""
    if not context or b"ssl" not in context.get(_TRANSPORT, ()):
        return ANONYMOUS
    spiffe = _values(context, _SPIFFE)
    uris = _values(context, _URIS)
    dns_names = _values(context, _DNS)
    if not (spiffe or uris or dns_names):
        # A certificate without SANs names nobody: it can be admitted by no rule.
        return PeerIdentity(authenticated=True, principal="")
    principal = spiffe[0] if spiffe else (uris[0] if uris else dns_names[0])
    return PeerIdentity(authenticated=True, principal=principal, uris=uris, dns_names=dns_names)
