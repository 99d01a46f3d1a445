"""When to (re)issue each certificate of a tenant, and how its two CAs rotate without breaking a client: the policy.

Also the layout of the `<N>-signer` Secret that carries the CAs from one run to the next. Pure: time is an argument,
new CAs come from an injected factory, nothing is read, written or logged here.

CA rotation with overlap: a CA due for renewal is not replaced but *staged*: a new CA is generated and published in
the bundles next to the current one. Only once every bundle has held it for the propagation delay is it *promoted*:
it signs from then on, the leaves signed by the old CA are re-issued, and the old CA stays in the bundles, *retired*,
until it expires. (OpenShift library-go's certrotation, by contrast, replaces the signer at once and delays only the
leaves.) Consumers that load their CA files only at start (kube-apiserver) therefore hold the new CA before they meet
a certificate signed by it; the tenant proxy re-reads its files, and gets the same guarantee.

Signer loss is recovered the same way: when a role's CA is gone from `<N>-signer` (deleted, garbage, a key removed)
while its bundles still hold CA certificates, the signer is *recovering*: it has no current CA, a new CA is staged
next to the certificates the bundles hold (kept as retired), the leaves in place are kept while they are valid, and
the staged CA is promoted only after the propagation delay. Never a silent re-key.

A rotation the operator requests (`requested`: the rotate-ca annotation's value) is the same rotation, started while
the current CA is still fine: a new CA is staged, marked as staged for the request so that it is promoted although
nothing else calls for it, and promoted after the propagation delay. A role whose rotation is already in progress (a
CA staged, or a lost CA being recovered, or one replaced at once) takes the request over: never a second staged CA.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certrotation import pki
from etcdstorage.spec import KeyAlgorithm
from etcdstorage.times import rfc3339

# A staged CA waits at least this share of its validity (or the operator's minimum, whichever is longer)...
PROPAGATION_SHARE: Final = 10
# ...but never past the midpoint between its publication and the current CA's expiry, so that the leaves can move to
# it, and their consumers restart, while the current CA is still valid.
_MIDPOINT: Final = 2


class Reason(enum.StrEnum):
    """Why a certificate is (re)issued. Values are log- and test-friendly identifiers."""

    MISSING = "missing"
    UNPARSABLE = "unparsable"
    KEY_MISMATCH = "key-mismatch"  # the private key stored with the certificate is not its key
    NOT_A_CA = "not-a-ca"
    NOT_SIGNED_BY_CURRENT_CA = "not-signed-by-current-ca"
    HOSTS_CHANGED = "hosts-changed"
    ALGORITHM_CHANGED = "algorithm-changed"
    VALIDITY_CHANGED = "validity-changed"
    RENEWAL_DUE = "renewal-due"
    EXPIRED = "expired"
    ROTATION_REQUESTED = "rotation-requested"  # a CA: the EtcdStorage's rotate-ca annotation asks for a rotation
    RENEW_REQUESTED = "renew-requested"  # a leaf: the EtcdStorage's renew annotation asks for it (see plan.py)
    SIGNER_LOST = "signer-lost"  # the role's CA is gone while the bundles hold CA certificates: recovered with overlap
    FOREIGN_ISSUER = "foreign-issuer"  # a leaf signed by no CA of the tenant's bundle: replaced (see plan.py)


# A CA with one of these cannot sign anything useful: it is replaced at once, there is nothing to overlap with.
UNUSABLE: Final = frozenset({Reason.MISSING, Reason.UNPARSABLE, Reason.KEY_MISMATCH, Reason.NOT_A_CA, Reason.EXPIRED})


@dataclasses.dataclass(frozen=True)
class Want:
    """What a certificate should be, from the spec and settings."""

    validity: timedelta
    algorithm: KeyAlgorithm
    renew_before: timedelta | None = None  # None: a third of the certificate's lifetime
    hosts: tuple[str, ...] = ()  # serving certificates only: the exact set of SANs


@dataclasses.dataclass(frozen=True)
class Assessment:
    """A stored certificate (and key), as far as they parse, and why it must be (re)issued: empty when it need not."""

    cert: x509.Certificate | None
    pair: pki.KeyPair | None
    reasons: tuple[Reason, ...]


def renewal_time(not_before: datetime, not_after: datetime, renew_before: timedelta | None = None) -> datetime:
    """When a certificate valid from `not_before` to `not_after` is renewed: `renew_before` ahead of its expiry, or
    after two thirds of its lifetime when that is unset or does not fit the lifetime (cert-manager's rule), truncated
    to whole seconds. Always within [not_before, not_after]."""
    lifetime = not_after - not_before
    ahead = renew_before if renew_before is not None and timedelta(0) < renew_before < lifetime else lifetime / 3
    renewal = (not_after - ahead).replace(microsecond=0)
    return min(max(renewal, not_before), not_after)


def cert_renewal_time(cert: x509.Certificate, renew_before: timedelta | None = None) -> datetime:
    return renewal_time(cert.not_valid_before_utc, cert.not_valid_after_utc, renew_before)


def assess_ca(cert_pem: bytes | None, key_pem: bytes | None, want: Want, now: datetime) -> Assessment:
    """Why a stored CA would have to be replaced (immediately for `UNUSABLE` reasons, by rotation for the others)."""
    stored = _read(cert_pem, key_pem)
    if stored.pair is None:
        return stored
    ca = stored.pair.cert
    reasons = [] if pki.is_ca(ca) else [Reason.NOT_A_CA]
    expected_not_after = ca.not_valid_before_utc + pki.BACKDATE + pki.issued_validity(want.validity)
    return dataclasses.replace(stored, reasons=(*reasons, *_common(ca, want, expected_not_after, now)))


def assess_leaf(
    cert_pem: bytes | None, key_pem: bytes | None, want: Want, *, issuer: x509.Certificate, now: datetime
) -> Assessment:
    """Why a stored leaf certificate must be re-issued by `issuer`, the CA that signs now."""
    stored = _read(cert_pem, key_pem)
    if stored.pair is None:
        return stored
    leaf = stored.pair.cert
    if not pki.is_signed_by(leaf, issuer):
        return dataclasses.replace(stored, reasons=(Reason.NOT_SIGNED_BY_CURRENT_CA,))
    reasons = []
    if want.hosts and sorted(pki.dns_names(leaf)) != sorted(want.hosts):
        reasons.append(Reason.HOSTS_CHANGED)
    # A leaf never outlives its CA: issued near the CA's end, it is cut short, and that is no change of validity.
    expected_not_after = min(
        leaf.not_valid_before_utc + pki.BACKDATE + pki.issued_validity(want.validity), issuer.not_valid_after_utc
    )
    return dataclasses.replace(stored, reasons=(*reasons, *_common(leaf, want, expected_not_after, now)))


def _read(cert_pem: bytes | None, key_pem: bytes | None) -> Assessment:
    """The stored pair, or why there is none."""
    if not cert_pem or not key_pem:
        return Assessment(None, None, (Reason.MISSING,))
    try:
        cert = pki.parse_certs(cert_pem)[0]
        key = pki.parse_key(key_pem)
    except pki.PEMError:
        return Assessment(None, None, (Reason.UNPARSABLE,))
    if not pki.same_public_key(cert, key):
        return Assessment(cert, None, (Reason.KEY_MISMATCH,))
    return Assessment(cert, pki.KeyPair(cert, key), ())


def _common(cert: x509.Certificate, want: Want, expected_not_after: datetime, now: datetime) -> list[Reason]:
    reasons = []
    if pki.key_algorithm(cert.public_key()) is not want.algorithm:
        reasons.append(Reason.ALGORITHM_CHANGED)
    if cert.not_valid_after_utc != expected_not_after:
        reasons.append(Reason.VALIDITY_CHANGED)
    if now >= cert.not_valid_after_utc:
        reasons.append(Reason.EXPIRED)
    elif now >= cert_renewal_time(cert, want.renew_before):
        reasons.append(Reason.RENEWAL_DUE)
    return reasons


# --- CA rotation -----------------------------------------------------------------------------------------------------


def propagation_delay(
    staged: x509.Certificate, current: x509.Certificate, published: datetime, minimum: timedelta
) -> timedelta:
    """How long a staged CA stays published before it signs: the longer of `minimum` and a tenth of its validity,
    cut to half the time the current CA has left after the publication (never negative)."""
    wanted = max(minimum, pki.lifetime(staged) / PROPAGATION_SHARE)
    room = (current.not_valid_after_utc - published) / _MIDPOINT
    return max(timedelta(0), min(wanted, room))


class Role(enum.StrEnum):
    SERVING = "serving"  # signs the proxies' serving certificate; its bundle goes to the API servers
    CLIENT = "client"  # signs the API servers' client certificates; its bundle goes to the proxies


@dataclasses.dataclass(frozen=True)
class SignerKeys:
    """Data keys of one role in the `<N>-signer` Secret."""

    cert: str
    key: str
    next_cert: str
    next_key: str
    next_published: str
    retired: str
    next_requested: str


def signer_keys(role: Role) -> SignerKeys:
    # TODO(names.py): move to etcdstorage/names.py next to the other data keys.
    prefix = f"{role.value}-signer"
    return SignerKeys(
        cert=f"{prefix}.crt",
        key=f"{prefix}.key",
        next_cert=f"{prefix}-next.crt",
        next_key=f"{prefix}-next.key",
        next_published=f"{prefix}-next.published",  # RFC 3339: when every bundle first held the staged CA
        retired=f"{prefix}-retired.crt",  # retired CAs still trusted until they expire; their keys are not kept
        next_requested=f"{prefix}-next.requested",  # the rotate-ca value the staged CA is for: promoted regardless
    )


@dataclasses.dataclass(frozen=True)
class Signer:
    """One CA role: the CA that signs, the CA staged to sign next, and the retired CA certificates still trusted.
    `current` is None only while the signer is recovering from its loss; `next` is then the CA staged to replace it.
    `requested`: the operator's rotate-ca value the staged CA is for ("" when its rotation is the policy's)."""

    current: pki.KeyPair | None
    next: pki.KeyPair | None = None
    next_published: datetime | None = None
    retired: tuple[x509.Certificate, ...] = ()
    requested: str = ""

    def __post_init__(self) -> None:
        if self.current is None and self.next is None:
            raise ValueError("a signer without a current CA has a staged one")

    @property
    def recovering(self) -> bool:
        return self.current is None

    @property
    def signing(self) -> pki.KeyPair:
        """The CA that signs a leaf that must be issued now: the current one, or while recovering the staged one (a
        leaf that is missing or unusable has no consumer to lose)."""
        signing = self.current or self.next
        assert signing is not None  # __post_init__
        return signing

    def bundle(self, now: datetime) -> list[x509.Certificate]:
        """The CA bundle its consumers trust: every unexpired CA of the role, newest first, each once."""
        return _unique_unexpired([*self._own(), *self.retired], now)

    def _own(self) -> list[x509.Certificate]:
        return [pair.cert for pair in (self.current, self.next) if pair is not None]

    def published(self, now: datetime) -> Signer:
        """The signer with its staged CA marked as published in every bundle at `now` (if not already)."""
        if self.next is None or self.next_published is not None:
            return self
        return dataclasses.replace(self, next_published=now.replace(microsecond=0))


@dataclasses.dataclass(frozen=True)
class Step:
    """What planning did to a role, for the log."""

    action: str  # issued | staged | promoted | discarded-next
    reasons: tuple[Reason, ...]


@dataclasses.dataclass(frozen=True)
class SignerPlan:
    signer: Signer
    steps: tuple[Step, ...]


def plan_signer(
    data: Mapping[str, bytes],
    role: Role,
    want: Want,
    *,
    now: datetime,
    minimum_delay: timedelta,
    new_ca: Callable[[], pki.KeyPair],
    in_bundles: Sequence[x509.Certificate] = (),
    requested: str = "",
) -> SignerPlan:
    """The role's signer after this run, from the `<N>-signer` Secret's (decoded) data and the certificates the role's
    bundles hold now (`in_bundles`), which tell a lost CA from a new tenant's. `requested`: a rotate-ca value not
    acted on yet, which starts a rotation unless one is in progress."""
    keys = signer_keys(role)
    current = assess_ca(data.get(keys.cert), data.get(keys.key), want, now)
    staged: Assessment | None = None
    if data.get(keys.next_cert) or data.get(keys.next_key):
        staged = assess_ca(data.get(keys.next_cert), data.get(keys.next_key), want, now)
    published = _time(data.get(keys.next_published))
    retired = _certs(data.get(keys.retired))
    steps = []

    # A staged CA that no longer fits the spec is dropped; it signed nothing. One merely due for renewal still serves.
    if staged is not None and (staged.pair is None or set(staged.reasons) - {Reason.RENEWAL_DUE}):
        steps.append(Step("discarded-next", staged.reasons))
        staged = None
    next_pair = staged.pair if staged is not None else None
    if next_pair is None:
        published = None
    # A request in force: the one this run acts on, or the one the staged CA was staged or kept for.
    staged_for = (data.get(keys.next_requested) or b"").decode(errors="replace") if next_pair is not None else ""
    wanted = requested or staged_for

    lost = _lost(current, next_pair, [*in_bundles, *retired], now)
    if lost:
        signer, step = _recovering(
            next_pair, published, [*retired, *lost], now=now, minimum_delay=minimum_delay, new_ca=new_ca
        )
        if step is not None:
            steps.append(dataclasses.replace(step, reasons=(Reason.SIGNER_LOST, *current.reasons)))
    elif current.pair is None or UNUSABLE.intersection(current.reasons):
        # Nothing to overlap with: replace at once, by the staged CA if there is one (bundles may already hold it).
        if current.cert is not None and pki.is_ca(current.cert):
            retired.append(current.cert)  # still trusted while unexpired: leaves it signed stay valid
        if next_pair is not None:
            signer = Signer(next_pair, retired=tuple(retired))
            steps.append(Step("promoted", current.reasons))
        else:
            signer = Signer(new_ca(), retired=tuple(retired))
            steps.append(Step("issued", current.reasons))
    elif current.reasons or wanted:
        reasons = (*current.reasons, Reason.ROTATION_REQUESTED) if wanted else current.reasons
        if next_pair is None:
            signer = Signer(current.pair, new_ca(), None, tuple(retired), wanted)
            steps.append(Step("staged", reasons))
        elif published is not None and now >= published + propagation_delay(
            next_pair.cert, current.pair.cert, published, minimum_delay
        ):
            signer = Signer(next_pair, retired=(*retired, current.pair.cert))
            steps.append(Step("promoted", reasons))
        else:  # in progress: a request it meets is taken over, and the staged CA kept for it
            signer = Signer(current.pair, next_pair, published, tuple(retired), wanted)
    else:
        if next_pair is not None:  # the change that called for it was undone
            steps.append(Step("discarded-next", ()))
        signer = Signer(current.pair, retired=tuple(retired))

    signer = dataclasses.replace(signer, retired=tuple(_unique_unexpired(signer.retired, now, exclude=signer._own())))
    return SignerPlan(signer, tuple(steps))


# The current CA is gone for one of these; expired or not a CA, it would have to be replaced at once anyway.
_LOSS: Final = frozenset({Reason.MISSING, Reason.UNPARSABLE, Reason.KEY_MISMATCH})


def _lost(
    current: Assessment, staged: pki.KeyPair | None, trusted: Sequence[x509.Certificate], now: datetime
) -> list[x509.Certificate]:
    """The unexpired CA certificates consumers may rely on (those the bundles hold, and the retired ones the signer
    still lists) when the current CA is gone; empty when it is not gone, or when there is nothing a consumer could
    still rely on (a new tenant, or everything expired)."""
    if current.pair is not None or not _LOSS.intersection(current.reasons):
        return []
    own = [staged.cert] if staged is not None else []
    return _unique_unexpired([cert for cert in trusted if pki.is_ca(cert)], now, exclude=own)


def _recovering(
    staged: pki.KeyPair | None,
    published: datetime | None,
    trusted: list[x509.Certificate],
    *,
    now: datetime,
    minimum_delay: timedelta,
    new_ca: Callable[[], pki.KeyPair],
) -> tuple[Signer, Step | None]:
    """A lost signer: a new CA staged next to the `trusted` certificates the bundles hold, promoted once every bundle
    has held it for the propagation delay (measured against the trusted CA that expires last)."""
    if staged is None:
        return Signer(None, new_ca(), None, tuple(trusted)), Step("staged", ())
    last = max(trusted, key=lambda cert: cert.not_valid_after_utc)
    if published is not None and now >= published + propagation_delay(staged.cert, last, published, minimum_delay):
        return Signer(staged, retired=tuple(trusted)), Step("promoted", ())
    return Signer(None, staged, published, tuple(trusted)), None


def encode_signer(role: Role, signer: Signer) -> dict[str, bytes]:
    """The role's entries of the `<N>-signer` Secret's data (decoded); `plan_signer` reads them back unchanged."""
    keys = signer_keys(role)
    data = {} if signer.current is None else {keys.cert: signer.current.cert_pem, keys.key: signer.current.key_pem}
    if signer.next is not None:
        data[keys.next_cert] = signer.next.cert_pem
        data[keys.next_key] = signer.next.key_pem
        if signer.next_published is not None:
            data[keys.next_published] = rfc3339(signer.next_published).encode()
        if signer.requested:
            data[keys.next_requested] = signer.requested.encode()
    if signer.retired:
        data[keys.retired] = pki.encode_certs(list(signer.retired))
    return data


def _unique_unexpired(
    certs: Sequence[x509.Certificate], now: datetime, *, exclude: Sequence[x509.Certificate] = ()
) -> list[x509.Certificate]:
    seen = {cert.fingerprint(hashes.SHA256()) for cert in exclude}
    result = []
    for cert in certs:
        fingerprint = cert.fingerprint(hashes.SHA256())
        if fingerprint in seen or now >= cert.not_valid_after_utc:
            continue
        seen.add(fingerprint)
        result.append(cert)
    # Deterministic whatever the stored order: newest first, then by serial number.
    return sorted(result, key=lambda cert: (-cert.not_valid_before_utc.timestamp(), cert.serial_number))


def _time(raw: bytes | None) -> datetime | None:
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.decode())
    except (ValueError, UnicodeDecodeError):
        return None  # unreadable: treated as not yet published, which only delays a promotion
    return moment if moment.tzinfo is not None else None


def _certs(raw: bytes | None) -> list[x509.Certificate]:
    if not raw:
        return []
    try:
        return pki.parse_certs(raw)
    except pki.PEMError:
        return []  # unreadable retired CAs are forgotten; nothing signs with them any more
