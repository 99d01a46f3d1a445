"""certrotation.pki: what the certificates contain, checked field by field and by real TLS handshakes (OpenSSL's)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certrotation import pki
from etcdstorage import names
from etcdstorage.spec import KeyAlgorithm
from tests.support.handshake import Identity, handshake

ECDSA = KeyAlgorithm.ECDSA_P256
HOSTS = names.service_hosts("sample", names.DEFAULT_CONTROLLER_NAMESPACE, "cluster.local")
DAY = timedelta(days=1)
UNSIGNED = "it is not signed by a valid CA of the trusted bundle"


def real_now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.new_ca("sample-serving-ca", now=real_now(), validity=30 * DAY, algorithm=ECDSA)


@pytest.fixture(scope="module")
def client_ca() -> pki.KeyPair:
    return pki.new_ca("sample-client-ca", now=real_now(), validity=30 * DAY, algorithm=ECDSA)


def extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


# --- Contents --------------------------------------------------------------------------------------------------------


def test_a_ca_may_sign_leaves_only(ca: pki.KeyPair) -> None:
    constraints = extension(ca.cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = extension(ca.cert, x509.KeyUsage)
    assert usage.critical
    assert isinstance(usage.value, x509.KeyUsage)
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert ca.cert.issuer == ca.cert.subject
    assert pki.is_signed_by(ca.cert, ca.cert)
    assert pki.is_ca(ca.cert)


def test_a_serving_certificate_names_every_service_host_and_serves_only(ca: pki.KeyPair) -> None:
    leaf = pki.new_server_cert(ca, HOSTS, now=real_now(), validity=DAY, algorithm=ECDSA).cert
    assert pki.dns_names(leaf) == HOSTS
    assert extension(leaf, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert extension(leaf, x509.BasicConstraints).value == x509.BasicConstraints(ca=False, path_length=None)
    assert extension(leaf, x509.BasicConstraints).critical
    usage = extension(leaf, x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage)
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert not usage.key_encipherment  # ECDSA keys do not encipher
    assert pki.is_signed_by(leaf, ca.cert)
    assert not pki.is_ca(leaf)


def test_a_client_certificate_is_for_clients_and_may_have_no_common_name(ca: pki.KeyPair) -> None:
    leaf = pki.new_client_cert(ca, None, now=real_now(), validity=DAY, algorithm=ECDSA, organization="etcdstorage").cert
    assert extension(leaf, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert pki.common_name(leaf.subject) is None
    named = pki.new_client_cert(ca, "client-ns-secret", now=real_now(), validity=DAY, algorithm=ECDSA).cert
    assert pki.common_name(named.subject) == "client-ns-secret"


@pytest.mark.parametrize(
    ("algorithm", "key_type", "size"),
    [
        pytest.param(KeyAlgorithm.ECDSA_P256, ec.EllipticCurvePublicKey, 256, id="ECDSA P-256 is the default"),
        pytest.param(KeyAlgorithm.RSA_2048, rsa.RSAPublicKey, 2048, id="RSA 2048 on request"),
        pytest.param(KeyAlgorithm.RSA_3072, rsa.RSAPublicKey, 3072, id="RSA 3072 on request"),
    ],
)
def test_the_key_algorithm_is_the_one_asked_for(algorithm: KeyAlgorithm, key_type: type, size: int) -> None:
    issuer = pki.new_ca("ca", now=real_now(), validity=DAY, algorithm=algorithm)
    leaf = pki.new_client_cert(issuer, "c", now=real_now(), validity=DAY, algorithm=algorithm).cert
    for cert in (issuer.cert, leaf):
        public = cert.public_key()
        assert isinstance(public, key_type)
        assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        assert public.key_size == size
        assert pki.key_algorithm(public) is algorithm
    usage = extension(leaf, x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage)
    assert usage.key_encipherment is (algorithm is not KeyAlgorithm.ECDSA_P256)


def test_serial_numbers_have_full_entropy(ca: pki.KeyPair) -> None:
    serials = [
        pki.new_client_cert(ca, None, now=real_now(), validity=DAY, algorithm=ECDSA).cert.serial_number
        for _ in range(20)
    ]
    assert len(set(serials)) == len(serials)
    assert all(0 < serial < 2**159 for serial in serials)
    assert max(serial.bit_length() for serial in serials) > 150  # the original drew from 0..99999


def test_times_are_whole_seconds_backdated_by_one() -> None:
    now = datetime(2030, 5, 1, 12, 0, 0, 750_000, tzinfo=UTC)
    issuer = pki.new_ca("ca", now=now, validity=timedelta(hours=10, microseconds=5), algorithm=ECDSA)
    assert issuer.cert.not_valid_before_utc == datetime(2030, 5, 1, 11, 59, 59, tzinfo=UTC)
    assert issuer.cert.not_valid_after_utc == datetime(2030, 5, 1, 22, 0, 0, tzinfo=UTC)
    assert pki.lifetime(issuer.cert) == timedelta(hours=10)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        pki.new_ca("ca", now=datetime(2030, 1, 1), validity=DAY, algorithm=ECDSA)


def test_an_expired_ca_issues_nothing() -> None:
    old = pki.new_ca("ca", now=datetime(2020, 1, 1, tzinfo=UTC), validity=DAY, algorithm=ECDSA)
    with pytest.raises(ValueError, match="expired"):
        pki.new_client_cert(old, None, now=datetime(2020, 1, 3, tzinfo=UTC), validity=DAY, algorithm=ECDSA)


@settings(max_examples=40, deadline=None)
@given(
    ca_hours=st.integers(min_value=1, max_value=24 * 365),
    leaf_hours=st.integers(min_value=1, max_value=24 * 365 * 2),
    issued_after_hours=st.integers(min_value=0, max_value=24 * 365),
)
def test_a_leaf_never_outlives_its_ca(ca_hours: int, leaf_hours: int, issued_after_hours: int) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    issuer = pki.new_ca("ca", now=start, validity=timedelta(hours=ca_hours), algorithm=ECDSA)
    issued = start + timedelta(hours=issued_after_hours)
    if issued >= issuer.cert.not_valid_after_utc:
        with pytest.raises(ValueError, match="expired"):
            pki.new_server_cert(issuer, HOSTS, now=issued, validity=timedelta(hours=leaf_hours), algorithm=ECDSA)
        return
    leaf = pki.new_server_cert(issuer, HOSTS, now=issued, validity=timedelta(hours=leaf_hours), algorithm=ECDSA).cert
    assert leaf.not_valid_after_utc <= issuer.cert.not_valid_after_utc
    assert leaf.not_valid_after_utc == min(issued + timedelta(hours=leaf_hours), issuer.cert.not_valid_after_utc)


# --- Parsing ---------------------------------------------------------------------------------------------------------


def test_a_pair_whose_key_belongs_to_another_certificate_is_refused(ca: pki.KeyPair) -> None:
    one = pki.new_client_cert(ca, None, now=real_now(), validity=DAY, algorithm=ECDSA)
    other = pki.new_client_cert(ca, None, now=real_now(), validity=DAY, algorithm=ECDSA)
    assert pki.parse_pair(one.cert_pem, one.key_pem).cert == one.cert
    with pytest.raises(pki.PEMError, match="does not belong"):
        pki.parse_pair(one.cert_pem, other.key_pem)


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_unreadable_pem_is_a_pem_error(data: bytes) -> None:
    with pytest.raises(pki.PEMError):
        pki.parse_certs(data)
    with pytest.raises(pki.PEMError):
        pki.parse_key(data)


# --- Chains for client certificates (the core etcd's) ----------------------------------------------------------------


def test_a_client_chain_problem_is_named() -> None:
    now = datetime(2030, 1, 10, tzinfo=UTC)
    root = pki.new_ca("root", now=now - DAY, validity=30 * DAY, algorithm=ECDSA)
    other = pki.new_ca("other", now=now - DAY, validity=30 * DAY, algorithm=ECDSA)
    good = pki.new_client_cert(root, None, now=now - DAY, validity=DAY * 7, algorithm=ECDSA).cert
    expired = pki.new_client_cert(root, None, now=now - 3 * DAY, validity=DAY, algorithm=ECDSA).cert
    foreign = pki.new_client_cert(other, None, now=now - DAY, validity=DAY * 7, algorithm=ECDSA).cert
    server_only = pki.new_server_cert(root, ["etcd"], now=now - DAY, validity=DAY * 7, algorithm=ECDSA).cert
    assert pki.client_chain_problems([good], [root.cert], now) == []
    assert pki.client_chain_problems([expired], [root.cert], now) == ["expired at 2030-01-08T00:00:00Z"]
    assert pki.client_chain_problems([foreign], [root.cert], now) == [
        "it is not signed by a valid CA of the trusted bundle"
    ]
    assert pki.client_chain_problems([server_only], [root.cert], now) == [
        "its extended key usage does not include clientAuth"
    ]
    assert pki.client_chain_problems([foreign], [root.cert, other.cert], now) == []


def test_a_client_chain_may_pass_through_an_intermediate_it_carries() -> None:
    now = datetime(2030, 1, 10, tzinfo=UTC)
    root = pki.new_ca("root", now=now - DAY, validity=30 * DAY, algorithm=ECDSA)
    middle_key = pki.new_key(ECDSA)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")])
    middle_cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.cert.subject)
        .public_key(middle_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    middle = pki.KeyPair(middle_cert, middle_key)
    leaf = pki.new_client_cert(middle, None, now=now - DAY, validity=2 * DAY, algorithm=ECDSA).cert
    assert pki.client_chain_problems([leaf, middle_cert], [root.cert], now) == []
    assert pki.client_chain_problems([leaf], [root.cert], now) == [
        "it is not signed by a valid CA of the trusted bundle"
    ]


# --- Real handshakes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.ECDSA_P256, KeyAlgorithm.RSA_2048], ids=["ECDSA", "RSA"])
def test_issued_certificates_pass_a_real_mutual_tls_handshake_under_every_service_name(algorithm: KeyAlgorithm) -> None:
    serving_ca = pki.new_ca("serving", now=real_now(), validity=DAY, algorithm=algorithm)
    client_ca = pki.new_ca("client", now=real_now(), validity=DAY, algorithm=algorithm)
    server = pki.new_server_cert(serving_ca, HOSTS, now=real_now(), validity=DAY, algorithm=algorithm)
    client = pki.new_client_cert(client_ca, "client-ns-name", now=real_now(), validity=DAY, algorithm=algorithm)
    server_side = Identity(server.cert_pem, server.key_pem, client_ca.cert_pem)
    client_side = Identity(client.cert_pem, client.key_pem, serving_ca.cert_pem)
    for host in HOSTS:
        assert handshake(server_side, client_side, hostname=host) is None, host


def test_a_real_handshake_refuses_what_it_must(ca: pki.KeyPair, client_ca: pki.KeyPair) -> None:
    server = pki.new_server_cert(ca, HOSTS, now=real_now(), validity=DAY, algorithm=ECDSA)
    client = pki.new_client_cert(client_ca, None, now=real_now(), validity=DAY, algorithm=ECDSA)
    stranger_ca = pki.new_ca("stranger", now=real_now(), validity=DAY, algorithm=ECDSA)
    stranger = pki.new_client_cert(stranger_ca, None, now=real_now(), validity=DAY, algorithm=ECDSA)
    server_side = Identity(server.cert_pem, server.key_pem, client_ca.cert_pem)
    trusting = Identity(client.cert_pem, client.key_pem, ca.cert_pem)

    assert handshake(server_side, trusting, hostname=HOSTS[2]) is None
    assert handshake(server_side, trusting, hostname="etcd-other.kube-apiserver-storage.svc") is not None
    assert handshake(server_side, Identity(client.cert_pem, client.key_pem, stranger_ca.cert_pem), hostname=HOSTS[2])
    assert handshake(server_side, Identity(stranger.cert_pem, stranger.key_pem, ca.cert_pem), hostname=HOSTS[2])
    assert handshake(server_side, Identity(None, None, ca.cert_pem), hostname=HOSTS[2])


def test_a_bundle_of_two_cas_trusts_certificates_of_both(ca: pki.KeyPair, client_ca: pki.KeyPair) -> None:
    newer = pki.new_ca("sample-client-ca-2", now=real_now(), validity=30 * DAY, algorithm=ECDSA)
    server = pki.new_server_cert(ca, HOSTS, now=real_now(), validity=DAY, algorithm=ECDSA)
    bundle = pki.encode_certs([newer.cert, client_ca.cert])
    server_side = Identity(server.cert_pem, server.key_pem, bundle)
    for issuer in (client_ca, newer):
        client = pki.new_client_cert(issuer, None, now=real_now(), validity=DAY, algorithm=ECDSA)
        assert handshake(server_side, Identity(client.cert_pem, client.key_pem, ca.cert_pem), hostname=HOSTS[0]) is None
