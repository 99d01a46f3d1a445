"""The plan of one tenant's pass: from a snapshot of its objects, the ordered writes, the problems, and the report.

Pure: time, settings and the key factory are arguments; nothing is read, written or logged here (`certrotation.gather`
reads, `certrotation.apply` writes, `certrotation.job` logs). `certrotation.rotation` decides when each certificate is
renewed; this module turns its decisions into objects, in the order that keeps a run stopped after any write safe for
the next one: signer, bundles, the staged CAs' publication, leaves. Each write names the writes it needs: a failed
bundle write keeps back the publication, a failed signer write everything, but one API server's refused Secret never
keeps the proxies' certificate from being renewed. The report comes last and from the outcome (`report`): it is
written whatever failed, says per object whether it was delivered or why not, and claims only what is in place.

Policies decided here:
- One destination, one owner: a ConfigMap or Secret that several EtcdStorages name is written for the one created
  first (then by name), never alternately; the others get a `Conflict` problem naming it (`destination_owners`).
- A valid certificate in a destination that no CA of the tenant's bundle signed (a foreign one: put there by hand, or
  left by another issuer) is replaced, with reason `foreign-issuer`: the proxies trust only the tenant's client CA,
  so keeping it would keep the API server out. The Event and the log name its issuer.
- Manual rotation, once per new value of the EtcdStorage's annotations, and never twice for a run that dies half-way:
  what was acted on is written by the very write that acts. `renew`: each leaf whose Secret's `renewed-for` is not
  the value is issued anew, and that write sets it (a leaf that cannot be written now is the next run's; a signer
  recovering from its loss issues nothing before its new CA is promoted). `rotate-ca`: while `<N>-signer`'s
  `ca-rotated-for` is not the value, both roles are asked to rotate (`rotation.plan_signer`: a role already rotating
  takes the request over, never a second staged CA), and the signer write sets it. The report on `<N>-ca-cert` says
  which value was acted on and when (renew: once every leaf holds it); it is carried over from run to run.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from cryptography import x509

from certrotation import fixes, kube, pki, rotation
from certrotation.fixes import Problem
from certrotation.kube import Kind, Ref
from certrotation.rotation import Reason, Role
from etcdstorage import names, report
from etcdstorage.report import Holds
from etcdstorage.settings import Settings
from etcdstorage.spec import EtcdStorage, InvalidSpec, KeyAlgorithm, parse
from etcdstorage.times import rfc3339

KeyFactory = Callable[[KeyAlgorithm], pki.PrivateKey]
_MAX_COMMON_NAME: Final = 64  # characters, by X.509
_CA_NAMES: Final = {Role.SERVING: "servingCA", Role.CLIENT: "clientCA"}  # the report's names of the CAs


# --- What the plan is made from ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Observed:
    """An object as the pass read it: `obj` None when it does not exist, or when `error` kept it from being read."""

    ref: Ref
    obj: Mapping[str, Any] | None
    error: kube.KubeError | None = None


@dataclasses.dataclass(frozen=True)
class Core:
    """The core etcd client certificate the tenant proxies use, as the pass found it (read and judged once)."""

    problem: str  # "" when the tenant proxies can use it


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything one tenant's pass needs, read once."""

    tenant: EtcdStorage
    signer: Observed  # <N>-signer: the CAs and their keys
    client_ca: Observed  # <N>-ca-cert: the client-CA bundle for the proxies, and the report for the hook
    server_cert: Observed  # <N>-server-cert: the proxies' serving pair
    serving_ca_destinations: tuple[Observed, ...]  # spec.caCertConfigMap: the serving-CA bundles for the API servers
    client_cert_destinations: tuple[Observed, ...]  # spec.clientCertSecret: the API servers' client pairs
    core: Core
    # The tenant's destinations that another EtcdStorage, created earlier, names too: that one's name.
    claimed: Mapping[Ref, str] = dataclasses.field(default_factory=dict)


# --- Across tenants ---------------------------------------------------------------------------------------------------


def destination_owners(objects: Iterable[Mapping[str, Any]]) -> dict[Ref, str]:
    """Each destination any EtcdStorage names, and the EtcdStorage it is written for: the oldest (creationTimestamp,
    then name) of those that name it. EtcdStorages that are invalid or going claim nothing."""
    claimants = []
    for obj in objects:
        try:
            tenant = parse(obj)
        except InvalidSpec:
            continue
        if not tenant.deleting:
            created = str((obj.get("metadata") or {}).get("creationTimestamp") or "")
            claimants.append((created, tenant.name, tenant))
    owners: dict[Ref, str] = {}
    for _, _, tenant in sorted(claimants, key=lambda claimant: claimant[:2]):
        for ref in destination_refs(tenant):
            owners.setdefault(ref, tenant.name)
    return owners


def destination_refs(tenant: EtcdStorage) -> list[Ref]:
    """The tenant's destinations: the serving-CA ConfigMaps, then the client-certificate Secrets."""
    configmaps = [(Kind.CONFIGMAP, where) for where in tenant.ca_cert_configmaps]
    secrets = [(Kind.SECRET, where) for where in tenant.client_cert_secrets]
    return [Ref(kind, where.namespace, where.name, destination=True) for kind, where in configmaps + secrets]


# --- What the plan says -----------------------------------------------------------------------------------------------


class Verb(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"


@dataclasses.dataclass(frozen=True)
class SignerChanged:
    """A CA role's signer changed (`rotation.Step.action`: issued, staged, promoted, discarded-next)."""

    role: Role
    action: str
    reasons: tuple[Reason, ...]


@dataclasses.dataclass(frozen=True)
class CertificateIssued:
    ref: Ref
    reasons: tuple[Reason, ...]
    not_after: datetime
    replaced_issuer: str = ""  # with reason foreign-issuer: the issuer of the certificate it replaced


@dataclasses.dataclass(frozen=True)
class SignerLost:
    """A role's CA is gone while its bundles hold `trusted` CA certificates: recovered with overlap (told each pass
    until the recovery completes)."""

    role: Role
    trusted: int


@dataclasses.dataclass(frozen=True)
class NotDelivered:
    """An object this pass did not bring to what it should hold (from the report)."""

    delivery: report.Delivery


@dataclasses.dataclass(frozen=True)
class RotationRequested:
    """A manual rotation request (`annotation`: names.ANNOTATION_RENEW or ANNOTATION_ROTATE_CA) that a write carries
    out. For rotate-ca, `staged`: the roles whose new CA it staged; the others' rotation in progress takes it over."""

    annotation: str
    value: str
    staged: tuple[Role, ...] = ()


@dataclasses.dataclass(frozen=True)
class RequestRefused:
    """An annotation of the EtcdStorage that is not a valid request: nothing is done for it (told on every pass)."""

    problem: str


Event = SignerChanged | CertificateIssued | SignerLost | NotDelivered | RotationRequested | RequestRefused


@dataclasses.dataclass(frozen=True)
class Write:
    """One object written whole. An update carries, in `body`, the resourceVersion it was read at; one that `follows`
    an earlier write of the plan to the same object is sent with the resourceVersion that write returned. It is sent
    only when the earlier writes it `needs` (positions in the plan; the one it follows among them) succeeded."""

    verb: Verb
    ref: Ref
    body: Mapping[str, Any]
    keys: tuple[str, ...]  # the data keys it sets or changes, for the log
    follows: bool = False
    needs: frozenset[int] = frozenset()
    events: tuple[Event, ...] = ()  # what it carries out: told once it is written, never before


@dataclasses.dataclass(frozen=True)
class Target:
    """An object the pass brings to what it should hold, for the report: delivered when no `problem` kept it from
    being planned and each of its `writes` (positions) was written. The certificates it holds, by the report's names,
    once delivered (`after`) and if not (`before`: as read)."""

    ref: Ref
    holds: Holds
    writes: frozenset[int] = frozenset()
    problem: Problem | None = None
    after: Mapping[str, report.CertificateTimes] = dataclasses.field(default_factory=dict)
    before: Mapping[str, report.CertificateTimes] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Acting:
    """A manual rotation request in force, as the plan leaves it: acted on once it is `complete` and each of its
    `writes` (positions) was written; the report then says `record`."""

    record: report.Acted
    writes: frozenset[int] = frozenset()
    complete: bool = True


@dataclasses.dataclass(frozen=True)
class Plan:
    tenant: EtcdStorage
    writes: tuple[Write, ...]  # in order; any prefix of them leaves a state the next run completes safely
    problems: tuple[Problem, ...]  # found while planning; each one fails the tenant's pass, with its fix
    targets: tuple[Target, ...]  # what the report covers, in its order
    report_on: Observed  # <N>-ca-cert as read: the report goes on it, after the writes
    core_problem: str = ""
    lost: tuple[SignerLost, ...] = ()  # the roles recovering from the loss of their CA
    # What the report said was acted on, as read.
    recorded: report.ManualRotation = dataclasses.field(default_factory=report.ManualRotation)
    renew: Acting | None = None  # the renew annotation's request, when the EtcdStorage has one
    rotate_ca: Acting | None = None  # the rotate-ca annotation's
    refused: tuple[RequestRefused, ...] = ()


@dataclasses.dataclass(frozen=True)
class Reported:
    """The report of a pass, the write that puts it on `<N>-ca-cert` (None when there is nothing to change or no
    object to put it on), and the Events of the outcome: what the pass did not deliver, the requests it refused."""

    report: report.Report
    write: Write | None
    events: tuple[NotDelivered | RequestRefused, ...]


# --- Planning ---------------------------------------------------------------------------------------------------------


def plan(snapshot: Snapshot, settings: Settings, now: datetime, *, new_key: KeyFactory = pki.new_key) -> Plan:
    """The tenant's writes at time `now`; new keys come from `new_key`."""
    tenant, namespace = snapshot.tenant, settings.namespace
    draft = _Draft(snapshot, namespace, now)
    if snapshot.signer.error is not None:  # nothing is safe without the CAs that exist: no bundle, no leaf
        failed = fixes.failed(snapshot.signer.ref, snapshot.signer.error, "get", namespace)
        draft.problem(failed)
        draft.target(snapshot.signer, Holds.SIGNER, problem=failed)
        for observed, holds in _objects_after_signer(snapshot):
            held_back = fixes.held_back(observed.ref, failed)
            draft.target(observed, holds, problem=held_back, before=_held(observed, holds, tenant))
        return draft.plan()

    # 1. The signer first: a CA is stored before anything trusts it or is signed by it. A rotate-ca request is
    # recorded on it by the write that stages its CAs.
    rotate_ca = _rotate_ca_request(snapshot)
    signers, steps, before = _signers(snapshot, settings, now, new_key, requested=rotate_ca)
    told: tuple[Event, ...] = steps
    acted = None
    if rotate_ca:
        acted = {names.ANNOTATION_CA_ROTATED_FOR: rotate_ca}
        told = (*steps, _rotation_requested(rotate_ca, steps))
    cas_stored = draft.put(snapshot.signer, _signer_data(signers), annotations=acted, whole_data=True, events=told)
    if tenant.rotate_ca:
        draft.rotating(writes=cas_stored if rotate_ca else frozenset())
    after = {_CA_NAMES[role]: _times(signer.signing.cert, tenant) for role, signer in signers.items()}
    draft.target(snapshot.signer, Holds.SIGNER, writes=cas_stored, after=after, before=before)
    for role, signer in signers.items():
        if signer.recovering:
            draft.lost(SignerLost(role, len(signer.retired)))

    # 2. The bundles, before any leaf that depends on them.
    held = dict.fromkeys(Role, True)  # every bundle of the role holds its CAs once these writes are done
    client_bundle = pki.encode_certs(signers[Role.CLIENT].bundle(now)).decode()
    held[Role.CLIENT] = draft.bundle(
        snapshot.client_ca, Holds.CLIENT_CA_BUNDLE, names.CLIENT_CA_KEY, client_bundle, needs=cas_stored
    )
    serving_bundle = pki.encode_certs(signers[Role.SERVING].bundle(now)).decode()
    for observed in snapshot.serving_ca_destinations:
        if not draft.bundle(observed, Holds.SERVING_CA_BUNDLE, names.SERVING_CA_KEY, serving_bundle, needs=cas_stored):
            held[Role.SERVING] = False

    # 3. A staged CA starts its propagation delay only once every bundle of its role holds it: the mark is written
    # only when every bundle write succeeded.
    marked = {role: signer.published(now) if held[role] else signer for role, signer in signers.items()}
    if any(marked[role] is not signers[role] for role in Role):  # `published` returns the signer if unchanged
        signers = marked
        bundles = [snapshot.client_ca.ref, *(observed.ref for observed in snapshot.serving_ca_destinations)]
        marks = draft.put(snapshot.signer, _signer_data(signers), whole_data=True, needs=draft.positions(bundles))
        draft.extend(snapshot.signer.ref, marks)

    # 4. The leaves, signed by the current CAs.
    hosts = tuple(names.service_hosts(tenant.name, namespace, settings.cluster_domain))
    serving, client = signers[Role.SERVING], signers[Role.CLIENT]
    server_want = rotation.Want(tenant.serving_validity, tenant.key_algorithm, tenant.renew_before, hosts)
    new_server = _server_factory(tenant, serving.signing, hosts, now, new_key)
    draft.leaf(
        snapshot.server_cert, Holds.SERVING_CERTIFICATE, server_want, serving, new_server, now=now, needs=cas_stored
    )
    client_want = rotation.Want(tenant.client_validity, tenant.key_algorithm, tenant.renew_before)
    for observed in snapshot.client_cert_destinations:
        new_client = _client_factory(tenant, client.signing, observed.ref, now, new_key)
        draft.leaf(observed, Holds.CLIENT_CERTIFICATE, client_want, client, new_client, now=now, needs=cas_stored)
    return draft.plan()


def _objects_after_signer(snapshot: Snapshot) -> list[tuple[Observed, Holds]]:
    return [
        (snapshot.client_ca, Holds.CLIENT_CA_BUNDLE),
        *((observed, Holds.SERVING_CA_BUNDLE) for observed in snapshot.serving_ca_destinations),
        (snapshot.server_cert, Holds.SERVING_CERTIFICATE),
        *((observed, Holds.CLIENT_CERTIFICATE) for observed in snapshot.client_cert_destinations),
    ]


def _rotate_ca_request(snapshot: Snapshot) -> str:
    """The rotate-ca value this pass acts on: the EtcdStorage's, unless `<N>-signer` says it was acted on."""
    value = snapshot.tenant.rotate_ca
    return value if value and _annotation(snapshot.signer.obj, names.ANNOTATION_CA_ROTATED_FOR) != value else ""


def _rotation_requested(value: str, steps: Iterable[SignerChanged]) -> RotationRequested:
    staged = tuple(step.role for step in steps if step.action == "staged" and Reason.ROTATION_REQUESTED in step.reasons)
    return RotationRequested(names.ANNOTATION_ROTATE_CA, value, staged)


def _signers(
    snapshot: Snapshot, settings: Settings, now: datetime, new_key: KeyFactory, *, requested: str
) -> tuple[dict[Role, rotation.Signer], tuple[SignerChanged, ...], dict[str, report.CertificateTimes]]:
    """Each role's signer after this pass, what changed, and the times of the CAs stored now (those usable);
    `requested`: a rotate-ca value to act on, for both roles."""
    tenant = snapshot.tenant
    stored = secret_data(snapshot.signer.obj)
    want = rotation.Want(tenant.signing_validity, tenant.key_algorithm, tenant.renew_before)
    signers: dict[Role, rotation.Signer] = {}
    events: list[SignerChanged] = []
    before: dict[str, report.CertificateTimes] = {}
    for role in Role:
        keys = rotation.signer_keys(role)
        current = rotation.assess_ca(stored.get(keys.cert), stored.get(keys.key), want, now)
        if current.pair is not None and not rotation.UNUSABLE.intersection(current.reasons):
            before[_CA_NAMES[role]] = _times(current.pair.cert, tenant)
        planned = rotation.plan_signer(
            stored,
            role,
            want,
            now=now,
            minimum_delay=settings.ca_propagation_delay,
            new_ca=_ca_factory(tenant, role, now, new_key),
            in_bundles=_in_bundles(snapshot, role),
            requested=requested,
        )
        signers[role] = planned.signer
        events.extend(SignerChanged(role, step.action, step.reasons) for step in planned.steps)
    return signers, tuple(events), before


def _in_bundles(snapshot: Snapshot, role: Role) -> list[x509.Certificate]:
    """The certificates the role's bundles hold now, as far as they were read; never a destination written for
    another EtcdStorage (what it holds is that one's)."""
    if role is Role.CLIENT:
        sources = [(snapshot.client_ca, names.CLIENT_CA_KEY)]
    else:
        sources = [
            (observed, names.SERVING_CA_KEY)
            for observed in snapshot.serving_ca_destinations
            if observed.ref not in snapshot.claimed
        ]
    certs = []
    for observed, key in sources:
        text = ((observed.obj or {}).get("data") or {}).get(key)
        if isinstance(text, str) and text:
            try:
                certs.extend(pki.parse_certs(text.encode()))
            except pki.PEMError:
                continue  # unreadable: nobody can rely on it
    return certs


def _signer_data(signers: Mapping[Role, rotation.Signer]) -> dict[str, str]:
    data: dict[str, bytes] = {}
    for role, signer in signers.items():
        data.update(rotation.encode_signer(role, signer))
    return secret_values(data)


_LEAVES: Final = frozenset({Holds.SERVING_CERTIFICATE, Holds.CLIENT_CERTIFICATE})


def _held(observed: Observed, holds: Holds, tenant: EtcdStorage) -> dict[str, report.CertificateTimes]:
    """The certificate a leaf's Secret holds as read, by the report's name (nothing for a bundle, or a Secret that
    holds no certificate that parses)."""
    if holds not in _LEAVES:
        return {}
    stored = secret_data(observed.obj).get(names.TLS_CRT)
    try:
        cert = pki.parse_certs(stored)[0] if stored else None
    except pki.PEMError:
        cert = None
    return {} if cert is None else {str(holds): _times(cert, tenant)}


def _ca_factory(tenant: EtcdStorage, role: Role, now: datetime, new_key: KeyFactory) -> Callable[[], pki.KeyPair]:
    # Unique per CA, so that bundles and the signed-by annotation tell CAs apart; X.509 allows 64 characters.
    suffix = f"-{role}-ca-{int(now.timestamp())}"
    name = names.proxy_name(tenant.name)[: _MAX_COMMON_NAME - len(suffix)] + suffix
    return lambda: pki.new_ca(
        name, now=now, validity=tenant.signing_validity, algorithm=tenant.key_algorithm,
        key=new_key(tenant.key_algorithm),
    )  # fmt: skip


def _server_factory(
    tenant: EtcdStorage, ca: pki.KeyPair, hosts: tuple[str, ...], now: datetime, new_key: KeyFactory
) -> Callable[[], pki.KeyPair]:
    return lambda: pki.new_server_cert(
        ca, list(hosts), now=now, validity=tenant.serving_validity, algorithm=tenant.key_algorithm,
        key=new_key(tenant.key_algorithm),
    )  # fmt: skip


def _client_factory(
    tenant: EtcdStorage, ca: pki.KeyPair, ref: Ref, now: datetime, new_key: KeyFactory
) -> Callable[[], pki.KeyPair]:
    # One certificate and key per destination, as the original: a key is never copied between namespaces.
    name = f"client-{ref.namespace}-{ref.name}"[:_MAX_COMMON_NAME]
    return lambda: pki.new_client_cert(
        ca, name, now=now, validity=tenant.client_validity, algorithm=tenant.key_algorithm,
        key=new_key(tenant.key_algorithm),
    )  # fmt: skip


def _times(cert: x509.Certificate, tenant: EtcdStorage) -> report.CertificateTimes:
    return report.CertificateTimes(
        notBefore=cert.not_valid_before_utc,
        notAfter=cert.not_valid_after_utc,
        renewalTime=rotation.cert_renewal_time(cert, tenant.renew_before),
    )


# --- The report -------------------------------------------------------------------------------------------------------


def report_of(planned: Plan, unsent: Mapping[int, Problem]) -> Reported:
    """The report of the pass whose writes `unsent` (position -> why) were not written; pure, like the plan."""
    deliveries = []
    certificates: dict[str, report.CertificateTimes] = {}
    for target in planned.targets:
        problem = target.problem or next((unsent[p] for p in sorted(target.writes) if p in unsent), None)
        held = target.before if problem is not None else target.after
        deliveries.append(_delivery(target, problem, held))
        for name, times in held.items():
            earlier = certificates.get(name)
            if earlier is None or times.notAfter < earlier.notAfter:  # clients: the one that expires first
                certificates[name] = times
    found = report.Report(
        certificates=certificates,
        core_certificate_problem=planned.core_problem,
        report_for=planned.tenant.uid,
        deliveries=tuple(deliveries),
        signer_lost="; ".join(_lost_message(lost) for lost in planned.lost),
        manual_rotation=report.ManualRotation(
            renew=_acted(planned.recorded.renew, planned.renew, unsent),
            rotateCA=_acted(planned.recorded.rotateCA, planned.rotate_ca, unsent),
        ),
    )
    undelivered = (NotDelivered(delivery) for delivery in deliveries if not delivery.delivered)
    return Reported(found, _report_write(planned, found, unsent), (*undelivered, *planned.refused))


def _acted(recorded: report.Acted | None, acting: Acting | None, unsent: Mapping[int, Problem]) -> report.Acted | None:
    """What the report says was acted on for a request: this pass's, once done; else as it was recorded."""
    if acting is None or not acting.complete or unsent.keys() & acting.writes:
        return recorded
    return acting.record


def _delivery(target: Target, problem: Problem | None, held: Mapping[str, report.CertificateTimes]) -> report.Delivery:
    ref = target.ref
    return report.Delivery(
        kind=str(ref.kind),
        namespace=ref.namespace,
        name=ref.name,
        holds=target.holds,
        state=report.State.DELIVERED if problem is None else problem.cause,
        destination=ref.destination,
        message="" if problem is None else problem.problem,
        fix="" if problem is None else problem.fix,
        certificate=held.get(str(target.holds)),
    )


def _lost_message(lost: SignerLost) -> str:
    return (
        f"the {lost.role} CA is lost; a new one is staged next to the {lost.trusted} CA certificate(s) the bundles "
        "hold and signs after the propagation delay"
    )


def _report_write(planned: Plan, found: report.Report, unsent: Mapping[int, Problem]) -> Write | None:
    """The report on `<N>-ca-cert` as this pass left it (after the last of its writes that was written); None when it
    was not read, does not exist, or already says the same."""
    observed = planned.report_on
    if observed.error is not None:
        return None
    written = [p for p, write in enumerate(planned.writes) if write.ref == observed.ref and p not in unsent]
    current = planned.writes[written[-1]].body if written else observed.obj
    if current is None:
        return None
    desired = _merged(current, {}, report.to_annotations(found), owner=planned.tenant, whole_data=False)
    if desired == current:
        return None
    return Write(Verb.UPDATE, observed.ref, desired, (), follows=bool(written))


def _leaf_reasons(
    assessment: rotation.Assessment,
    signer: rotation.Signer,
    *,
    cert_pem: bytes | None,
    key_pem: bytes | None,
    want: rotation.Want,
    now: datetime,
) -> tuple[Reason, ...]:
    """Why the leaf is issued anew: the policy's reasons, but none for a usable leaf signed by a CA the bundles still
    hold while the signer recovers from its loss (it keeps serving until the staged CA signs), and `foreign-issuer`
    added for a valid one that no CA of the role's bundle signed."""
    reasons, cert = assessment.reasons, assessment.cert
    if reasons != (Reason.NOT_SIGNED_BY_CURRENT_CA,) or cert is None:
        return reasons
    trusted = [ca for ca in signer.bundle(now) if pki.is_signed_by(cert, ca)]
    if signer.recovering and trusted:
        kept = rotation.assess_leaf(cert_pem, key_pem, want, issuer=trusted[0], now=now)
        if not rotation.UNUSABLE.intersection(kept.reasons):
            return ()
    if not trusted and now < cert.not_valid_after_utc:
        return (*reasons, Reason.FOREIGN_ISSUER)
    return reasons


# --- How an object changes --------------------------------------------------------------------------------------------


class _Draft:
    """The plan being drawn up: its writes, problems and targets so far, and each object as those writes leave it (a
    second write to an object builds on the first)."""

    def __init__(self, snapshot: Snapshot, namespace: str, now: datetime) -> None:
        self._snapshot = snapshot
        self._tenant = snapshot.tenant
        self._namespace = namespace  # the controller's, whose ServiceAccount the fixes name
        self._now = now
        self._writes: list[Write] = []
        self._problems: list[Problem] = []
        self._targets: dict[Ref, Target] = {}
        self._lost: list[SignerLost] = []
        self._planned: dict[Ref, Mapping[str, Any]] = {}
        # The report's record of manual rotation as read (when it is this EtcdStorage's), and this pass's part in it.
        self._recorded = report.manual_rotation(_metadata(snapshot.client_ca.obj).get("annotations"), self._tenant.uid)
        self._renew: Acting | None = None
        self._rotate_ca: Acting | None = None

    def positions(self, refs: Iterable[Ref] | None = None) -> frozenset[int]:
        """The writes planned so far (to `refs` only, if given)."""
        wanted = None if refs is None else set(refs)
        return frozenset(i for i, write in enumerate(self._writes) if wanted is None or write.ref in wanted)

    def plan(self) -> Plan:
        snapshot, tenant = self._snapshot, self._tenant
        return Plan(
            tenant=tenant,
            writes=tuple(self._writes),
            problems=tuple(self._problems),
            targets=tuple(self._targets.values()),
            report_on=snapshot.client_ca,
            core_problem=snapshot.core.problem,
            lost=tuple(self._lost),
            recorded=self._recorded,
            renew=self._renew,
            rotate_ca=self._rotate_ca,
            refused=tuple(RequestRefused(str(problem)) for problem in tenant.request_problems),
        )

    def rotating(self, *, writes: frozenset[int]) -> None:
        """The rotate-ca request is acted on once `writes` (the signer's, none if it was before) are written."""
        self._rotate_ca = Acting(_record(self._recorded.rotateCA, self._tenant.rotate_ca, self._now), writes)

    def renewing(self, *, writes: frozenset[int] = frozenset(), done: bool = True) -> None:
        """A leaf's part in the renew request: it holds a certificate issued for it once `writes` are written, or
        not in this pass (`done` False)."""
        if not self._tenant.renew:
            return
        acting = self._renew or Acting(_record(self._recorded.renew, self._tenant.renew, self._now))
        self._renew = Acting(acting.record, acting.writes | writes, acting.complete and done)

    def problem(self, problem: Problem) -> None:
        self._problems.append(problem)

    def lost(self, lost: SignerLost) -> None:
        self._lost.append(lost)

    def target(
        self,
        observed: Observed,
        holds: Holds,
        *,
        writes: frozenset[int] = frozenset(),
        problem: Problem | None = None,
        after: Mapping[str, report.CertificateTimes] | None = None,
        before: Mapping[str, report.CertificateTimes] | None = None,
    ) -> None:
        self._targets[observed.ref] = Target(observed.ref, holds, writes, problem, after or {}, before or {})

    def extend(self, ref: Ref, writes: frozenset[int]) -> None:
        """Later writes that deliver `ref` too."""
        target = self._targets[ref]
        self._targets[ref] = dataclasses.replace(target, writes=target.writes | writes)

    def unusable(self, observed: Observed, holds: Holds) -> bool:
        """Whether `observed` cannot be written: unreadable, a destination that does not exist, or one written for
        another EtcdStorage. If so, the problem is the plan's and the object the report's, with the certificate it
        holds as far as it was read."""
        ref = observed.ref
        owner = self._snapshot.claimed.get(ref)
        if observed.error is not None:
            problem = fixes.failed(ref, observed.error, "get", self._namespace)
        elif owner is not None:
            field = "caCertConfigMap" if ref.kind is Kind.CONFIGMAP else "clientCertSecret"
            problem = fixes.conflict(ref, self._tenant.name, owner, field)
        elif observed.obj is None and ref.destination:
            problem = fixes.missing(ref, self._namespace)
        else:
            return False
        self._problems.append(problem)
        before = {} if owner is not None else _held(observed, holds, self._tenant)  # another's holds that one's
        self.target(observed, holds, problem=problem, before=before)
        return True

    def bundle(self, observed: Observed, holds: Holds, key: str, bundle: str, *, needs: frozenset[int]) -> bool:
        """Put `bundle` under `key` of the ConfigMap; False when it cannot be (a problem of the plan then)."""
        if self.unusable(observed, holds):
            return False
        self.target(observed, holds, writes=self.put(observed, {key: bundle}, needs=needs))
        return True

    def leaf(
        self,
        observed: Observed,
        holds: Holds,
        want: rotation.Want,
        signer: rotation.Signer,
        issue: Callable[[], pki.KeyPair],
        *,
        now: datetime,
        needs: frozenset[int],
    ) -> None:
        """Keep the certificate in the Secret, or issue a new one from the signer when the policy, or a renew request
        it was not issued for, says so."""
        if self.unusable(observed, holds):
            self.renewing(done=observed.ref in self._snapshot.claimed)  # another EtcdStorage's: not this one's to do
            return
        tenant = self._tenant
        before = _held(observed, holds, tenant)
        data = secret_data(observed.obj)
        cert_pem, key_pem = data.get(names.TLS_CRT), data.get(names.TLS_KEY)
        issuer = signer.signing
        assessment = rotation.assess_leaf(cert_pem, key_pem, want, issuer=issuer.cert, now=now)
        reasons = _leaf_reasons(assessment, signer, cert_pem=cert_pem, key_pem=key_pem, want=want, now=now)
        renewed = not tenant.renew or _annotation(observed.obj, names.ANNOTATION_RENEWED_FOR) == tenant.renew
        if not reasons and not renewed and not signer.recovering:  # recovering: the new CA is not trusted yet
            reasons = (Reason.RENEW_REQUESTED,)
        if not reasons:
            self.target(observed, holds, after=before, before=before)
            self.renewing(done=renewed)
            return
        pair = issue()
        annotations = {
            names.ANNOTATION_EXPIRY_DATE: rfc3339(pair.cert.not_valid_after_utc),
            names.ANNOTATION_SIGNED_BY: pki.common_name(issuer.cert.subject) or "",
        }
        if tenant.renew:
            annotations[names.ANNOTATION_RENEWED_FOR] = tenant.renew  # issued now: the request is done for it
        replaced = assessment.cert
        foreign = replaced.issuer.rfc4514_string() if replaced and Reason.FOREIGN_ISSUER in reasons else ""
        told: tuple[Event, ...] = (CertificateIssued(observed.ref, reasons, pair.cert.not_valid_after_utc, foreign),)
        if reasons == (Reason.RENEW_REQUESTED,):
            told = (RotationRequested(names.ANNOTATION_RENEW, tenant.renew), *told)
        values = secret_values({names.TLS_CRT: pair.cert_pem, names.TLS_KEY: pair.key_pem})
        written = self.put(observed, values, annotations=annotations, tls=True, needs=needs, events=told)
        self.target(observed, holds, writes=written, after={str(holds): _times(pair.cert, tenant)}, before=before)
        self.renewing(writes=written)

    def put(
        self,
        observed: Observed,
        data: Mapping[str, str],
        *,
        annotations: Mapping[str, str] | None = None,
        tls: bool = False,
        whole_data: bool = False,
        needs: frozenset[int] = frozenset(),
        events: tuple[Event, ...] = (),
    ) -> frozenset[int]:
        """Make `data` and `annotations` part of the object, touching nothing else (all of its data if `whole_data`),
        and write only when that changes it; the write's position, if any, for the `needs` of later writes. Objects of
        the controller namespace are created when missing (a Secret as kubernetes.io/tls if `tls`) and owned by the
        tenant; destinations are never created, nor owned."""
        ref = observed.ref
        follows = ref in self._planned
        current = self._planned[ref] if follows else observed.obj
        if current is None:
            if ref.destination:
                raise ValueError(f"a destination is never created: {ref.kind} {ref}")
            body = self._new(ref, data, annotations, tls=tls)
            return self._add(Write(Verb.CREATE, ref, body, tuple(sorted(data)), needs=needs, events=events))
        desired = _merged(
            current, data, annotations, owner=None if ref.destination else self._tenant, whole_data=whole_data
        )
        if desired == current:
            return frozenset()
        before, after = current.get("data") or {}, desired.get("data") or {}
        changed = tuple(sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key)))
        if follows:
            needs |= self.positions([ref])
        return self._add(Write(Verb.UPDATE, ref, desired, changed, follows, needs, events))

    def _add(self, write: Write) -> frozenset[int]:
        self._writes.append(write)
        self._planned[write.ref] = write.body
        return frozenset({len(self._writes) - 1})

    def _new(
        self, ref: Ref, data: Mapping[str, str], annotations: Mapping[str, str] | None, *, tls: bool
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": ref.name,
            "namespace": ref.namespace,
            "labels": names.certificate_labels(self._tenant.name),
            "ownerReferences": [owner_reference(self._tenant)],
        }
        if annotations:
            metadata["annotations"] = dict(annotations)
        body: dict[str, Any] = {"apiVersion": "v1", "kind": str(ref.kind), "metadata": metadata, "data": dict(data)}
        if ref.kind is Kind.SECRET:
            body["type"] = "kubernetes.io/tls" if tls else "Opaque"
        return body


def _merged(
    current: Mapping[str, Any],
    data: Mapping[str, str],
    annotations: Mapping[str, str] | None,
    *,
    owner: EtcdStorage | None,
    whole_data: bool,
) -> dict[str, Any]:
    """`current` with `data` and `annotations` merged in, and, with an `owner`, its labels and owner reference
    (which also adopts what the original controller created without them)."""
    # A shallow copy: what changes is replaced by new dicts and lists, never modified in place, so that the object as
    # read stays intact for the comparison (a deep copy of every object read cost more than that).
    desired = {**current, "metadata": {**(current.get("metadata") or {})}}
    if whole_data:
        desired["data"] = dict(data)
    elif data:
        desired["data"] = {**(current.get("data") or {}), **data}
    metadata = desired["metadata"]
    if annotations:
        metadata["annotations"] = {**(metadata.get("annotations") or {}), **annotations}
    if owner is not None:
        metadata["labels"] = {**(metadata.get("labels") or {}), **names.certificate_labels(owner.name)}
        references = metadata.get("ownerReferences") or []
        if not any(reference.get("uid") == owner.uid for reference in references):
            metadata["ownerReferences"] = [*references, owner_reference(owner)]
    return desired


def _metadata(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    metadata = (obj or {}).get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _annotation(obj: Mapping[str, Any] | None, name: str) -> str:
    annotations = _metadata(obj).get("annotations")
    value = annotations.get(name) if isinstance(annotations, Mapping) else None
    return value if isinstance(value, str) else ""


def _record(recorded: report.Acted | None, value: str, now: datetime) -> report.Acted:
    """What the report says of a request once it is done: as recorded, for the value recorded; else done `now`."""
    if recorded is not None and recorded.value == value:
        return recorded
    return report.Acted(value=value, time=now.replace(microsecond=0))


def owner_reference(tenant: EtcdStorage) -> dict[str, Any]:
    # Not `controller: true`, and no controller-uid label on the object: Metacontroller would take such objects for
    # children of its own and delete them. No blockOwnerDeletion: that needs the finalizers permission.
    return {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": tenant.name, "uid": tenant.uid}


def secret_data(obj: Mapping[str, Any] | None) -> dict[str, bytes]:
    """A Secret's data, decoded; a value that is not base64 reads as empty (the certificate is then re-issued)."""
    data = (obj or {}).get("data") or {}
    decoded = {}
    for key, value in data.items():
        try:
            decoded[key] = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        except (binascii.Error, ValueError):
            decoded[key] = b""
    return decoded


def secret_values(data: Mapping[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in data.items()}


# --- The core etcd client certificate ---------------------------------------------------------------------------------


def core_certificate(configmap: Observed, secret: Observed, now: datetime) -> Core:
    """Whether the tenant proxies can use the core etcd's CA and client certificate at `now`."""
    ca_where, cert_where = (f"{observed.ref.kind} {observed.ref}" for observed in (configmap, secret))
    problems = []
    for where, observed in ((ca_where, configmap), (cert_where, secret)):
        if observed.error is not None:
            problems.append(f"{where} cannot be read: {fixes.describe(observed.error)}")
        elif observed.obj is None:
            problems.append(f"{where} does not exist")
    ca = str(((configmap.obj or {}).get("data") or {}).get(names.CORE_CA_KEY, "")).encode()
    cert = secret_data(secret.obj).get(names.TLS_CRT, b"")
    if configmap.obj is not None and not ca:
        problems.append(f"{ca_where} has no {names.CORE_CA_KEY}")
    if secret.obj is not None and not cert:
        problems.append(f"{cert_where} has no {names.TLS_CRT}")
    if ca and cert:
        problems.extend(_core_problems(ca, cert, ca_where, cert_where, now))
    return Core("; ".join(problems))


def _core_problems(ca: bytes, cert: bytes, ca_where: str, cert_where: str, now: datetime) -> list[str]:
    try:
        roots = pki.parse_certs(ca)
    except pki.PEMError:
        return [f"{ca_where} key {names.CORE_CA_KEY} is not a PEM certificate bundle"]
    try:
        chain = pki.parse_certs(cert)
    except pki.PEMError:
        return [f"{cert_where} key {names.TLS_CRT} is not a PEM certificate"]
    # A Common Name is fine: the tenant proxy does not refuse one, as etcd's grpc-proxy did.
    return [f"the certificate in {cert_where}: {problem}" for problem in pki.client_chain_problems(chain, roots, now)]
