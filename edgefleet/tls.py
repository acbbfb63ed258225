"""Self-signed TLS certificates for trying the gRPC front (``edgefleet auth cert``) and for tests.

A production fleet uses certificates from its own CA; this makes a short-lived one for the hosts
named, so the TLS path can be exercised with no CA at all. The client trusts it by passing the
certificate as ``root_certificates``.

Example:
    >>> cert, key = self_signed(["localhost", "127.0.0.1"], days=1)
    >>> cert.startswith(b"-----BEGIN CERTIFICATE-----")
    True
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence


def self_signed(hosts: Sequence[str], *, days: int = 30) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for ``hosts`` (DNS names or IP addresses), EC P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if not hosts:
        raise ValueError("name at least one host the certificate is for")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)  # self-signed: it is its own issuer, and the client's only root
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
