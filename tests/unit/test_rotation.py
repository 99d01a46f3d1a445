"""certrotation.rotation: the reasons to (re)issue, the renewal time, and CA rotation with overlap, at set times."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from certrotation import pki, rotation
from certrotation.rotation import Reason, Role
from etcdstorage import names
from etcdstorage.spec import KeyAlgorithm

ECDSA = KeyAlgorithm.ECDSA_P256
T0 = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
HOSTS = tuple(names.service_hosts("sample", names.DEFAULT_CONTROLLER_NAMESPACE, "cluster.local"))
CA_WANT = rotation.Want(validity=30 * DAY, algorithm=ECDSA)
LEAF_WANT = rotation.Want(validity=9 * DAY, algorithm=ECDSA, hosts=HOSTS)


def new_ca(at: datetime = T0, validity: timedelta = 30 * DAY, algorithm: KeyAlgorithm = ECDSA) -> pki.KeyPair:
    return pki.new_ca(f"ca-{at.timestamp()}", now=at, validity=validity, algorithm=algorithm)


def server(
    ca: pki.KeyPair, at: datetime = T0, validity: timedelta = 9 * DAY, hosts: tuple[str, ...] = HOSTS
) -> pki.KeyPair:
    return pki.new_server_cert(ca, list(hosts), now=at, validity=validity, algorithm=ECDSA)


# --- Renewal time ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "renew_before", "expected"),
    [
        pytest.param(30 * DAY, None, 20 * DAY, id="by default after two thirds of the lifetime"),
        pytest.param(30 * DAY, 5 * DAY, 25 * DAY, id="renewBefore ahead of expiry"),
        pytest.param(30 * DAY, 30 * DAY, 20 * DAY, id="a renewBefore as long as the lifetime falls back to two thirds"),
        pytest.param(30 * DAY, 40 * DAY, 20 * DAY, id="a renewBefore longer than a cut-short leaf falls back too"),
        pytest.param(timedelta(seconds=10), None, timedelta(seconds=6), id="truncated to whole seconds"),
    ],
)
def test_renewal_time(lifetime: timedelta, renew_before: timedelta | None, expected: timedelta) -> None:
    assert rotation.renewal_time(T0, T0 + lifetime, renew_before) == T0 + expected


@given(
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    lifetime=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)),
    renew_before=st.none() | st.timedeltas(min_value=timedelta(-1), max_value=timedelta(days=4000)),
)
def test_a_renewal_time_always_lies_inside_the_validity_window(
    start: datetime, lifetime: timedelta, renew_before: timedelta | None
) -> None:
    start = start.replace(microsecond=0)
    renewal = rotation.renewal_time(start, start + lifetime, renew_before)
    assert start <= renewal <= start + lifetime
    assert renewal.microsecond == 0


# --- Reasons -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return new_ca()


def test_a_fresh_ca_needs_nothing(ca: pki.KeyPair) -> None:
    assert rotation.assess_ca(ca.cert_pem, ca.key_pem, CA_WANT, T0 + DAY).reasons == ()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        pytest.param(lambda ca: (None, ca.key_pem, CA_WANT, T0), [Reason.MISSING], id="no certificate is missing"),
        pytest.param(lambda ca: (ca.cert_pem, b"", CA_WANT, T0), [Reason.MISSING], id="an empty key is missing"),
        pytest.param(lambda ca: (b"junk", ca.key_pem, CA_WANT, T0), [Reason.UNPARSABLE], id="junk is unparsable"),
        pytest.param(
            lambda ca: (ca.cert_pem, new_ca().key_pem, CA_WANT, T0), [Reason.KEY_MISMATCH], id="another key mismatches"
        ),
        pytest.param(
            lambda ca: (ca.cert_pem, ca.key_pem, rotation.Want(30 * DAY, KeyAlgorithm.RSA_2048), T0),
            [Reason.ALGORITHM_CHANGED],
            id="a changed keyAlgorithm",
        ),
        pytest.param(
            lambda ca: (ca.cert_pem, ca.key_pem, rotation.Want(60 * DAY, ECDSA), T0),
            [Reason.VALIDITY_CHANGED],
            id="a changed signingCertificateValidity",
        ),
        pytest.param(lambda ca: (ca.cert_pem, ca.key_pem, CA_WANT, T0 + 20 * DAY), [Reason.RENEWAL_DUE], id="due"),
        pytest.param(lambda ca: (ca.cert_pem, ca.key_pem, CA_WANT, T0 + 30 * DAY), [Reason.EXPIRED], id="expired"),
        pytest.param(
            lambda ca: (ca.cert_pem, ca.key_pem, rotation.Want(30 * DAY, ECDSA, renew_before=DAY), T0 + 20 * DAY),
            [],
            id="renewBefore postpones renewal",
        ),
    ],
)
def test_why_a_ca_is_replaced(
    ca: pki.KeyPair,
    case: Callable[[pki.KeyPair], tuple[bytes | None, bytes | None, rotation.Want, datetime]],
    expected: list[Reason],
) -> None:
    cert_pem, key_pem, want, now = case(ca)
    assert list(rotation.assess_ca(cert_pem, key_pem, want, now).reasons) == expected


def test_a_leaf_is_not_a_ca(ca: pki.KeyPair) -> None:
    leaf = server(ca)
    assert Reason.NOT_A_CA in rotation.assess_ca(leaf.cert_pem, leaf.key_pem, rotation.Want(9 * DAY, ECDSA), T0).reasons


def test_a_fresh_leaf_needs_nothing(ca: pki.KeyPair) -> None:
    leaf = server(ca)
    assert rotation.assess_leaf(leaf.cert_pem, leaf.key_pem, LEAF_WANT, issuer=ca.cert, now=T0 + DAY).reasons == ()


def test_host_order_does_not_matter(ca: pki.KeyPair) -> None:
    leaf = server(ca, hosts=tuple(reversed(HOSTS)))
    assert rotation.assess_leaf(leaf.cert_pem, leaf.key_pem, LEAF_WANT, issuer=ca.cert, now=T0).reasons == ()


@pytest.mark.parametrize(
    ("make", "want", "now", "expected"),
    [
        pytest.param(lambda _ca: server(new_ca()), LEAF_WANT, T0, [Reason.NOT_SIGNED_BY_CURRENT_CA], id="another CA's"),
        pytest.param(
            lambda ca: server(ca, hosts=HOSTS[:3]),
            LEAF_WANT,
            T0,
            [Reason.HOSTS_CHANGED],
            id="a SAN missing (cluster domain)",
        ),
        pytest.param(
            server,
            rotation.Want(9 * DAY, KeyAlgorithm.RSA_2048, hosts=HOSTS),
            T0,
            [Reason.ALGORITHM_CHANGED],
            id="a changed keyAlgorithm",
        ),
        pytest.param(
            server,
            rotation.Want(3 * DAY, ECDSA, hosts=HOSTS),
            T0,
            [Reason.VALIDITY_CHANGED],
            id="shorter",
        ),
        pytest.param(
            lambda ca: server(ca, at=T0 + 25 * DAY),
            LEAF_WANT,
            T0 + 25 * DAY,
            [],
            id="cut short by its CA's expiry is no change of validity",
        ),
        pytest.param(server, LEAF_WANT, T0 + 6 * DAY, [Reason.RENEWAL_DUE], id="two thirds through"),
        pytest.param(server, LEAF_WANT, T0 + 9 * DAY, [Reason.EXPIRED], id="expired"),
    ],
)
def test_why_a_leaf_is_reissued(
    ca: pki.KeyPair,
    make: Callable[[pki.KeyPair], pki.KeyPair],
    want: rotation.Want,
    now: datetime,
    expected: list[Reason],
) -> None:
    leaf = make(ca)
    assert list(rotation.assess_leaf(leaf.cert_pem, leaf.key_pem, want, issuer=ca.cert, now=now).reasons) == expected


def test_several_reasons_are_all_named(ca: pki.KeyPair) -> None:
    leaf = server(ca, hosts=HOSTS[:1])
    want = rotation.Want(3 * DAY, KeyAlgorithm.RSA_2048, hosts=HOSTS)
    reasons = rotation.assess_leaf(leaf.cert_pem, leaf.key_pem, want, issuer=ca.cert, now=T0 + 9 * DAY).reasons
    assert reasons == (Reason.HOSTS_CHANGED, Reason.ALGORITHM_CHANGED, Reason.VALIDITY_CHANGED, Reason.EXPIRED)


# --- Propagation delay ---------------------------------------------------------------------------------------------


def test_the_delay_is_a_tenth_of_the_validity_or_the_minimum() -> None:
    current, staged = new_ca(T0, 365 * DAY), new_ca(T0 + 243 * DAY, 365 * DAY)
    delay = rotation.propagation_delay(staged.cert, current.cert, T0 + 243 * DAY, timedelta(minutes=10))
    assert delay == timedelta(days=36, hours=12)
    short = new_ca(T0, timedelta(hours=2))
    assert rotation.propagation_delay(short.cert, current.cert, T0, timedelta(minutes=30)) == timedelta(minutes=30)


def test_the_delay_leaves_half_the_overlap_for_the_leaves() -> None:
    current, staged = new_ca(T0, timedelta(minutes=10)), new_ca(T0 + timedelta(minutes=7), timedelta(minutes=10))
    published = T0 + timedelta(minutes=7)
    delay = rotation.propagation_delay(staged.cert, current.cert, published, timedelta(minutes=10))
    assert published + delay == published + (current.cert.not_valid_after_utc - published) / 2


@given(
    validity_minutes=st.integers(min_value=10, max_value=60 * 24 * 365),
    published_fraction=st.floats(min_value=0, max_value=1.2),
    minimum_minutes=st.integers(min_value=0, max_value=60 * 24 * 30),
)
@settings(max_examples=60, deadline=None)
def test_a_staged_ca_is_promoted_before_the_current_one_expires(
    validity_minutes: int, published_fraction: float, minimum_minutes: int
) -> None:
    validity = timedelta(minutes=validity_minutes)
    current = new_ca(T0, validity)
    published = T0 + validity * published_fraction
    staged = new_ca(published, validity)
    delay = rotation.propagation_delay(staged.cert, current.cert, published, timedelta(minutes=minimum_minutes))
    assert delay >= timedelta(0)
    if published < current.cert.not_valid_after_utc:
        assert published + delay <= current.cert.not_valid_after_utc
        room = (current.cert.not_valid_after_utc - published) / 2
        assert delay == min(max(timedelta(minutes=minimum_minutes), pki.lifetime(staged.cert) / 10), room)


# --- Signer planning -------------------------------------------------------------------------------------------------


class Factory:
    """New CAs at the planning time, counted."""

    def __init__(self, now: datetime, validity: timedelta = 30 * DAY, algorithm: KeyAlgorithm = ECDSA) -> None:
        self.now, self.validity, self.algorithm, self.made = now, validity, algorithm, 0

    def __call__(self) -> pki.KeyPair:
        self.made += 1
        return new_ca(self.now, self.validity, self.algorithm)


def plan(
    data: dict[str, bytes], now: datetime, want: rotation.Want = CA_WANT, minimum: timedelta = HOUR
) -> tuple[rotation.SignerPlan, dict[str, bytes]]:
    result = rotation.plan_signer(
        data, Role.CLIENT, want, now=now, minimum_delay=minimum, new_ca=Factory(now, want.validity, want.algorithm)
    )
    return result, rotation.encode_signer(Role.CLIENT, result.signer)


def actions(result: rotation.SignerPlan) -> list[str]:
    return [step.action for step in result.steps]


def test_a_missing_signer_is_issued_at_once() -> None:
    result, _ = plan({}, T0)
    assert actions(result) == ["issued"]
    assert result.steps[0].reasons == (Reason.MISSING,)
    assert result.signer.next is None


def test_a_sound_signer_is_kept_byte_for_byte(ca: pki.KeyPair) -> None:
    data = rotation.encode_signer(Role.CLIENT, rotation.Signer(ca))
    result, encoded = plan(data, T0 + DAY)
    assert actions(result) == []
    assert encoded == data


def test_the_data_keys_of_the_roles_do_not_collide() -> None:
    serving, client = rotation.signer_keys(Role.SERVING), rotation.signer_keys(Role.CLIENT)
    all_keys = [*vars(serving).values(), *vars(client).values()]
    assert len(set(all_keys)) == len(all_keys) == 14


def test_a_ca_due_for_renewal_is_staged_then_promoted_after_the_delay_then_retired_until_it_expires(
    ca: pki.KeyPair,
) -> None:
    data = rotation.encode_signer(Role.CLIENT, rotation.Signer(ca))
    due = T0 + 20 * DAY
    staged, data = plan(data, due)
    assert actions(staged) == ["staged"]
    assert staged.signer.signing.cert == ca.cert
    assert staged.signer.next is not None
    assert [c.serial_number for c in staged.signer.bundle(due)] == [
        staged.signer.next.cert.serial_number,
        ca.cert.serial_number,
    ]

    waiting, same = plan(data, due + 9 * DAY)  # never published: not promoted while the current CA is valid
    assert actions(waiting) == []
    assert same == data

    published = rotation.encode_signer(Role.CLIENT, staged.signer.published(due))
    delay = rotation.propagation_delay(staged.signer.next.cert, ca.cert, due, HOUR)
    assert delay == 3 * DAY  # a tenth of 30 days
    not_yet, _ = plan(published, due + delay - timedelta(seconds=1))
    assert not_yet.signer.signing.cert == ca.cert

    promoted, data = plan(published, due + delay)
    assert actions(promoted) == ["promoted"]
    assert promoted.signer.signing.cert == staged.signer.next.cert
    assert promoted.signer.retired == (ca.cert,)
    assert ca.cert in promoted.signer.bundle(due + delay)

    expired, data = plan(data, ca.cert.not_valid_after_utc)
    assert expired.signer.retired == ()
    assert expired.signer.bundle(ca.cert.not_valid_after_utc) == [promoted.signer.signing.cert]
    assert rotation.signer_keys(Role.CLIENT).retired not in data


def test_an_expired_ca_is_replaced_at_once_by_the_staged_one_if_there_is_one(ca: pki.KeyPair) -> None:
    staged = new_ca(T0 + 20 * DAY)
    data = rotation.encode_signer(Role.CLIENT, rotation.Signer(ca, staged))
    result, _ = plan(data, T0 + 31 * DAY)
    assert actions(result) == ["promoted"]
    assert result.steps[0].reasons == (Reason.EXPIRED,)
    assert result.signer.signing.cert == staged.cert


def test_an_expired_ca_without_a_staged_one_is_replaced_by_a_new_one(ca: pki.KeyPair) -> None:
    data = rotation.encode_signer(Role.CLIENT, rotation.Signer(ca))
    result, _ = plan(data, T0 + 31 * DAY)
    assert actions(result) == ["issued"]
    assert result.signer.signing.cert != ca.cert
    assert result.signer.retired == ()  # expired: trusted by nobody


def test_a_lost_key_replaces_the_ca_at_once_and_keeps_trusting_its_certificate(ca: pki.KeyPair) -> None:
    data = rotation.encode_signer(Role.CLIENT, rotation.Signer(ca))
    data[rotation.signer_keys(Role.CLIENT).key] = new_ca().key_pem
    result, _ = plan(data, T0 + DAY)
    assert actions(result) == ["issued"]
    assert result.steps[0].reasons == (Reason.KEY_MISMATCH,)
    assert ca.cert in result.signer.bundle(T0 + DAY)  # the leaves it signed stay valid


def test_a_spec_change_rotates_with_overlap(ca: pki.KeyPair) -> None:
    data = rotation.encode_signer(Role.CLIENT, rotation.Signer(ca))
    rsa = rotation.Want(30 * DAY, KeyAlgorithm.RSA_2048)
    result, _ = plan(data, T0 + DAY, want=rsa)
    assert actions(result) == ["staged"]
    assert result.steps[0].reasons == (Reason.ALGORITHM_CHANGED,)
    assert result.signer.next is not None
    assert pki.key_algorithm(result.signer.next.cert.public_key()) is KeyAlgorithm.RSA_2048


def test_a_staged_ca_that_no_longer_fits_the_spec_is_discarded_and_staged_again(ca: pki.KeyPair) -> None:
    data = rotation.encode_signer(Role.CLIENT, rotation.Signer(ca, new_ca(T0 + DAY), T0 + DAY))
    rsa = rotation.Want(30 * DAY, KeyAlgorithm.RSA_2048)
    result, _ = plan(data, T0 + 2 * DAY, want=rsa)
    assert actions(result) == ["discarded-next", "staged"]
    assert result.signer.next_published is None


def test_a_staged_ca_no_longer_needed_is_discarded(ca: pki.KeyPair) -> None:
    data = rotation.encode_signer(Role.CLIENT, rotation.Signer(ca, new_ca(T0 + DAY), T0 + DAY))
    result, encoded = plan(data, T0 + 2 * DAY)
    assert actions(result) == ["discarded-next"]
    assert encoded == rotation.encode_signer(Role.CLIENT, rotation.Signer(ca))


def test_an_unreadable_publication_time_only_delays_the_promotion(ca: pki.KeyPair) -> None:
    data = rotation.encode_signer(Role.CLIENT, rotation.Signer(ca, new_ca(T0 + 20 * DAY), T0 + 20 * DAY))
    data[rotation.signer_keys(Role.CLIENT).next_published] = b"yesterday"
    result, _ = plan(data, T0 + 29 * DAY)
    assert result.signer.signing.cert == ca.cert


# --- The rotation timeline as a property ---------------------------------------------------------------------------


@given(
    validity_minutes=st.integers(min_value=10, max_value=600),
    renew_before_share=st.none() | st.floats(min_value=0.05, max_value=0.95),
    minimum_minutes=st.integers(min_value=0, max_value=120),
    steps=st.lists(st.integers(min_value=1, max_value=90), min_size=5, max_size=60),
    publish_every=st.integers(min_value=1, max_value=3),
)
@settings(max_examples=40, deadline=None)
def test_over_any_timeline_trust_never_breaks(
    validity_minutes: int,
    renew_before_share: float | None,
    minimum_minutes: int,
    steps: list[int],
    publish_every: int,
) -> None:
    """Runs at random intervals; bundles are written only on some of them. At every run: the signing CA is valid and
    in the bundle; a CA signs only after being published for the delay (or when nothing else could sign); every CA
    that ever signed stays in the bundle until it expires, so no certificate it signed loses trust early."""
    validity = timedelta(minutes=validity_minutes)
    renew_before = (validity * renew_before_share) if renew_before_share is not None else None
    if renew_before is not None and renew_before < timedelta(minutes=1):
        renew_before = None
    want = rotation.Want(validity, ECDSA, renew_before)
    minimum = timedelta(minutes=minimum_minutes)
    now = T0
    data: dict[str, bytes] = {}
    signed_by: dict[int, x509.Certificate] = {}  # every CA that signed, by serial
    published_at: dict[int, datetime] = {}
    for index, step in enumerate(steps):
        now += timedelta(minutes=step)
        result = rotation.plan_signer(
            data, Role.CLIENT, want, now=now, minimum_delay=minimum, new_ca=Factory(now, validity)
        )
        signer = result.signer
        bundle = signer.bundle(now)
        current = signer.signing.cert
        assert current.not_valid_before_utc <= now < current.not_valid_after_utc
        assert current in bundle
        if signer.next is not None:
            assert signer.next.cert in bundle
        if (
            "promoted" in [step.action for step in result.steps]
            and not set(result.steps[-1].reasons) & rotation.UNUSABLE
        ):
            published = published_at[current.serial_number]
            previous = signed_by[max(signed_by, key=lambda serial: signed_by[serial].not_valid_before_utc)]
            assert now >= published + rotation.propagation_delay(current, previous, published, minimum)
        for ca in signed_by.values():
            if now < ca.not_valid_after_utc:
                assert ca in bundle, "a CA that signed left the bundle before it expired"
        signed_by[current.serial_number] = current
        if index % publish_every == 0:  # this run's bundle writes succeeded
            signer = signer.published(now)
            if signer.next is not None:
                published_at.setdefault(signer.next.cert.serial_number, signer.next_published or now)
        data = rotation.encode_signer(Role.CLIENT, signer)
