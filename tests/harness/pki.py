"""Throwaway certificates for tests (cryptography, a dev dependency): a CA that issues server and client
certificates (DNS, IP and URI SANs, SPIFFE IDs among them), one-call CA + server or client certificate
files (an HTTPS upstream, the API server's front-proxy client), and a directory written the way the kubelet
writes a Secret volume (files behind a `..data` symlink swapped atomically), for rotation tests."""

from __future__ import annotations

import datetime
import ipaddress
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Issued", "Pki", "serial_of", "write_ca_and_client_cert", "write_ca_and_server_cert", "write_secret_volume"
]


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes
    serial: int

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)


class Pki:
    """A CA held in memory; `issue` signs leaf certificates with it."""

    def __init__(self, name: str = "spillover-test-ca") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)
        # Backdated so that small clock differences never make a fresh certificate "not yet valid".
        self._not_before, self._not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = dict.fromkeys(
            ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only",
             "decipher_only"),
            False,
        )
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem: bytes = self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        uris: Iterable[str] = (),
        *,
        server: bool = False,
        client: bool = False,
    ) -> Issued:
        """A leaf certificate with these SANs, for TLS servers and/or clients (both when neither is said)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[Any] = [x509.DNSName(name) for name in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans += [x509.UniformResourceIdentifier(uri) for uri in uris]
        usages = []
        if server or not client:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client or not server:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pem = serialization.Encoding.PEM
        return Issued(
            cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            serial,
        )

    def tls_secret(self, issued: Issued) -> dict[str, bytes]:
        """The files of a Kubernetes TLS Secret as cert-manager writes it."""
        return {"tls.crt": issued.cert_pem, "tls.key": issued.key_pem, "ca.crt": self.ca_pem}


def serial_of(cert_pem: bytes) -> int:
    from cryptography import x509

    return int(x509.load_pem_x509_certificate(cert_pem).serial_number)


def write_secret_volume(directory: Path, files: Mapping[str, bytes]) -> None:
    """Writes `files` into `directory` as the kubelet updates a Secret volume: a new timestamped directory,
    then one atomic rename of the `..data` symlink; each file is a symlink through `..data`."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    version.mkdir()
    for name, content in files.items():
        (version / name).write_bytes(content)
        (version / name).chmod(0o644 if not name.endswith(".key") else 0o600)
    staging = directory / "..data_tmp"
    staging.unlink(missing_ok=True)
    os.symlink(version.name, staging)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.replace(staging, directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            os.symlink(f"..data/{name}", link)
    if old is not None:
        for leftover in (directory / old).iterdir():
            leftover.unlink()
        (directory / old).rmdir()


def write_ca_and_server_cert(
    ca_path: Path, cert_path: Path, key_path: Path, names: Iterable[str], common_name: str, ca_name: str
) -> None:
    """Writes a CA certificate, and a server certificate + key for `names` (IP or DNS SANs) signed by it."""
    pki = Pki(ca_name)
    names = list(names)
    issued = pki.issue(
        common_name, dns=[n for n in names if not _is_ip(n)], ips=[n for n in names if _is_ip(n)], server=True
    )
    ca_path.write_bytes(pki.ca_pem)
    issued.write(cert_path, key_path)


def write_ca_and_client_cert(
    ca_path: Path, cert_path: Path, key_path: Path, common_name: str, ca_name: str
) -> None:
    """Writes a CA certificate, and a client certificate + key (TLS client auth) for `common_name` signed by
    it: the front-proxy client certificate of an API server's aggregation layer, say."""
    pki = Pki(ca_name)
    ca_path.write_bytes(pki.ca_pem)
    pki.issue(common_name, client=True).write(cert_path, key_path)
