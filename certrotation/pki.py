"""Certificates and keys: issue CAs and leaves, parse PEM, check chains. Pure but for the OS's random numbers.

Time is an argument (`now`); nothing here reads a clock, the environment or the network. Nothing here logs: the
values handled are key material.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcdstorage.spec import KeyAlgorithm
from etcdstorage.times import rfc3339

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
# A second of backdating absorbs clock skew between the issuer and the first verifier.
BACKDATE: Final = timedelta(seconds=1)
_RSA_SIZES: Final = {KeyAlgorithm.RSA_2048: 2048, KeyAlgorithm.RSA_3072: 3072, KeyAlgorithm.RSA_4096: 4096}


class PEMError(ValueError):
    """PEM data that does not hold what it should."""


@dataclasses.dataclass(frozen=True)
class KeyPair:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return encode_key(self.key)


def new_key(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_SIZES[algorithm])


def key_algorithm(key: object) -> KeyAlgorithm | None:
    """The algorithm of a public or private key, or None for one we never issue."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return KeyAlgorithm.ECDSA_P256 if isinstance(key.curve, ec.SECP256R1) else None
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return {2048: KeyAlgorithm.RSA_2048, 3072: KeyAlgorithm.RSA_3072, 4096: KeyAlgorithm.RSA_4096}.get(key.key_size)
    return None


def new_ca(
    common_name: str, *, now: datetime, validity: timedelta, algorithm: KeyAlgorithm, key: PrivateKey | None = None
) -> KeyPair:
    """A self-signed CA that may sign leaves only (path length 0), with `key` or a new key of `algorithm`."""
    key = key if key is not None else new_key(algorithm)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _whole_seconds(now)
    builder = (
        _base(subject, key, start=start, not_after=start + issued_validity(validity))
        .issuer_name(subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    )
    return KeyPair(builder.sign(key, _hash(key)), key)


def new_server_cert(
    ca: KeyPair,
    hosts: list[str],
    *,
    now: datetime,
    validity: timedelta,
    algorithm: KeyAlgorithm,
    key: PrivateKey | None = None,
) -> KeyPair:
    """A serving certificate for `hosts` (DNS names or IP addresses); it never outlives its CA."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name")
    key = key if key is not None else new_key(algorithm)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    builder = (
        _leaf(ca, subject, key, now=now, validity=validity)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_general_name(host) for host in hosts]), critical=False)
    )
    return KeyPair(builder.sign(ca.key, _hash(ca.key)), key)


def new_client_cert(
    ca: KeyPair,
    common_name: str | None,
    *,
    now: datetime,
    validity: timedelta,
    algorithm: KeyAlgorithm,
    organization: str | None = None,
    key: PrivateKey | None = None,
) -> KeyPair:
    """A client certificate; `common_name=None` gives an empty subject Common Name."""
    key = key if key is not None else new_key(algorithm)
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = _leaf(ca, x509.Name(attributes), key, now=now, validity=validity).add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )
    return KeyPair(builder.sign(ca.key, _hash(ca.key)), key)


# --- Encoding -----------------------------------------------------------------------------------------------------


def encode_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def encode_certs(certs: list[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def parse_certs(data: bytes | str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; raises `PEMError` for anything else or nothing at all."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError:
        raise PEMError("not a PEM certificate bundle") from None
    return certs


def parse_key(data: bytes | str) -> PrivateKey:
    raw = data.encode() if isinstance(data, str) else data
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        raise PEMError("not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PEMError("not an ECDSA or RSA private key")
    return key


def parse_pair(cert_pem: bytes, key_pem: bytes) -> KeyPair:
    """The first certificate of `cert_pem` with its private key; `PEMError` when either is unreadable or they differ."""
    cert = parse_certs(cert_pem)[0]
    key = parse_key(key_pem)
    if not same_public_key(cert, key):
        raise PEMError("the private key does not belong to the certificate")
    return KeyPair(cert, key)


# --- Facts about certificates -------------------------------------------------------------------------------------


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name) for name in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else None


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    der = serialization.Encoding.DER
    info = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, info) == key.public_key().public_bytes(der, info)


def is_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def lifetime(cert: x509.Certificate) -> timedelta:
    """How long the certificate was issued for, as asked of `new_*` (the backdating second left out)."""
    return cert.not_valid_after_utc - cert.not_valid_before_utc - BACKDATE


def client_chain_problems(chain: list[x509.Certificate], roots: list[x509.Certificate], now: datetime) -> list[str]:
    """Why a TLS client presenting `chain` (leaf first) would be refused by a server trusting `roots`; empty if not.

    Checks what Go's TLS stack checks for a client certificate: validity times, the clientAuth extended key usage and
    a signature path to one of `roots` through the intermediates in `chain`.
    """
    leaf = chain[0]
    problems = []
    if now >= leaf.not_valid_after_utc:
        problems.append(f"expired at {rfc3339(leaf.not_valid_after_utc)}")
    elif now < leaf.not_valid_before_utc:
        problems.append(f"not valid before {rfc3339(leaf.not_valid_before_utc)}")
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        pass  # no EKU extension: any use is allowed
    else:
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
            problems.append("its extended key usage does not include clientAuth")
    if not _chains_to(leaf, chain[1:], roots, now):
        problems.append("it is not signed by a valid CA of the trusted bundle")
    return problems


def _chains_to(
    cert: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate], now: datetime
) -> bool:
    def valid(ca: x509.Certificate) -> bool:
        return ca.not_valid_before_utc <= now < ca.not_valid_after_utc

    if any(valid(root) and is_signed_by(cert, root) for root in roots):
        return True
    for index, middle in enumerate(intermediates):
        rest = intermediates[:index] + intermediates[index + 1 :]  # each intermediate once: no loops
        if valid(middle) and is_signed_by(cert, middle) and _chains_to(middle, rest, roots, now):
            return True
    return False


# --- Building -----------------------------------------------------------------------------------------------------


def _whole_seconds(moment: datetime) -> datetime:
    """X.509 times have whole seconds; issuing from whole seconds keeps computed and encoded times equal."""
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return moment.astimezone(UTC).replace(microsecond=0)


def issued_validity(span: timedelta) -> timedelta:
    """A validity as issued: whole seconds. The rotation policy expects a certificate's end by the same rule."""
    return timedelta(seconds=int(span.total_seconds()))


def _base(subject: x509.Name, key: PrivateKey, *, start: datetime, not_after: datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())  # 159 bits of entropy
        .not_valid_before(start - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _leaf(
    ca: KeyPair, subject: x509.Name, key: PrivateKey, *, now: datetime, validity: timedelta
) -> x509.CertificateBuilder:
    start = _whole_seconds(now)
    not_after = min(start + issued_validity(validity), ca.cert.not_valid_after_utc)  # a leaf never outlives its CA
    if not_after <= start:
        raise ValueError("the CA has expired: it cannot issue a valid certificate")
    return (
        _base(subject, key, start=start, not_after=not_after)
        .issuer_name(ca.cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False, rsa=isinstance(key, rsa.RSAPrivateKey)), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )


def _key_usage(*, cert_sign: bool, rsa: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=rsa,  # RSA key exchange only; meaningless for ECDSA
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _hash(_key: PrivateKey) -> hashes.SHA256:
    return hashes.SHA256()  # for both algorithms: P-256 pairs with SHA-256, and Go and OpenSSL accept it with RSA


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
