"""The plan of one tenant's pass: from a snapshot of its objects, the ordered writes, the report and the problems.

Pure: time, settings and the key factory are arguments; nothing is read, written or logged here (`certrotation.gather`
reads, `certrotation.apply` writes, `certrotation.job` logs). `certrotation.rotation` decides when each certificate is
renewed; this module turns its decisions into objects, in the order that keeps a run stopped after any write safe for
the next one: signer, bundles, the staged CAs' publication, leaves, report. Each write names the writes it needs: a
failed bundle write keeps back the publication, a failed signer write everything, but one API server's refused
Secret never keeps the proxies' certificate from being renewed.
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
from etcdstorage.settings import Settings
from etcdstorage.spec import EtcdStorage, KeyAlgorithm
from etcdstorage.times import rfc3339

KeyFactory = Callable[[KeyAlgorithm], pki.PrivateKey]
_MAX_COMMON_NAME: Final = 64  # characters, by X.509


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
    read: bool = True  # False: an API error hid it, so the reports, which carry its problem, are not written


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


Event = SignerChanged | CertificateIssued


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
class Plan:
    writes: tuple[Write, ...]  # in order; any prefix of them leaves a state the next run completes safely
    problems: tuple[Problem, ...]  # found while planning; each one fails the tenant's pass, with its fix
    report: report.Report | None  # what the last write tells the hook; None when unreadable objects keep it back


# --- Planning ---------------------------------------------------------------------------------------------------------


def plan(snapshot: Snapshot, settings: Settings, now: datetime, *, new_key: KeyFactory = pki.new_key) -> Plan:
    """The tenant's writes at time `now`; new keys come from `new_key`."""
    tenant, namespace = snapshot.tenant, settings.namespace
    if snapshot.signer.error is not None:  # nothing is safe without the CAs that exist: no bundle, no leaf
        return Plan((), (fixes.failed(snapshot.signer.ref, snapshot.signer.error, "get", namespace),), None)
    draft = _Draft(tenant, namespace)

    # 1. The signer first: a CA is stored before anything trusts it or is signed by it.
    signers, steps = _signers(snapshot, settings, now, new_key)
    cas_stored = draft.put(snapshot.signer, _signer_data(signers), whole_data=True, events=steps)  # all else needs it

    # 2. The bundles, before any leaf that depends on them.
    held = dict.fromkeys(Role, True)  # every bundle of the role holds its CAs once these writes are done
    client_bundle = pki.encode_certs(signers[Role.CLIENT].bundle(now)).decode()
    held[Role.CLIENT] = _bundle(draft, snapshot.client_ca, names.CLIENT_CA_KEY, client_bundle, needs=cas_stored)
    serving_bundle = pki.encode_certs(signers[Role.SERVING].bundle(now)).decode()
    for observed in snapshot.serving_ca_destinations:
        if not _bundle(draft, observed, names.SERVING_CA_KEY, serving_bundle, needs=cas_stored):
            held[Role.SERVING] = False

    # 3. A staged CA starts its propagation delay only once every bundle of its role holds it: the mark is written
    # only when every bundle write succeeded.
    marked = {role: signer.published(now) if held[role] else signer for role, signer in signers.items()}
    if any(marked[role] is not signers[role] for role in Role):  # `published` returns the signer if unchanged
        signers = marked
        bundles = [snapshot.client_ca.ref, *(observed.ref for observed in snapshot.serving_ca_destinations)]
        draft.put(snapshot.signer, _signer_data(signers), whole_data=True, needs=draft.positions(bundles))

    # 4. The leaves, signed by the current CAs.
    serving_ca, client_ca = signers[Role.SERVING].current, signers[Role.CLIENT].current
    hosts = tuple(names.service_hosts(tenant.name, namespace, settings.cluster_domain))
    server_want = rotation.Want(tenant.serving_validity, tenant.key_algorithm, tenant.renew_before, hosts)

    new_server = _server_factory(tenant, serving_ca, hosts, now, new_key)
    server = _leaf(draft, snapshot.server_cert, server_want, serving_ca, new_server, now=now, needs=cas_stored)
    client_want = rotation.Want(tenant.client_validity, tenant.key_algorithm, tenant.renew_before)
    clients = [
        _leaf(
            draft,
            observed,
            client_want,
            client_ca,
            _client_factory(tenant, client_ca, observed.ref, now, new_key),
            now=now,
            needs=cas_stored,
        )
        for observed in snapshot.client_cert_destinations
    ]

    # 5. The report for the hook, last, once everything it covers is in place. Not when a read failed: it would
    # report times of certificates that could not be read.
    if snapshot.client_ca.error is not None or snapshot.server_cert.error is not None or not snapshot.core.read:
        return draft.plan(None)
    certificates = {
        "servingCA": _times(signers[Role.SERVING].current.cert, tenant),
        "clientCA": _times(signers[Role.CLIENT].current.cert, tenant),
    }
    if server is not None:
        certificates["servingCertificate"] = _times(server, tenant)
    client_certs = [cert for cert in clients if cert is not None]
    if client_certs:
        certificates["clientCertificate"] = _times(min(client_certs, key=lambda c: c.not_valid_after_utc), tenant)
    found = report.Report(certificates=certificates, core_certificate_problem=snapshot.core.problem)
    draft.put(snapshot.client_ca, {}, annotations=report.to_annotations(found), needs=draft.positions())
    return draft.plan(found)


def _signers(
    snapshot: Snapshot, settings: Settings, now: datetime, new_key: KeyFactory
) -> tuple[dict[Role, rotation.Signer], tuple[SignerChanged, ...]]:
    tenant = snapshot.tenant
    stored = secret_data(snapshot.signer.obj)
    want = rotation.Want(tenant.signing_validity, tenant.key_algorithm, tenant.renew_before)
    signers: dict[Role, rotation.Signer] = {}
    events: list[SignerChanged] = []
    for role in Role:
        planned = rotation.plan_signer(
            stored,
            role,
            want,
            now=now,
            minimum_delay=settings.ca_propagation_delay,
            new_ca=_ca_factory(tenant, role, now, new_key),
        )
        signers[role] = planned.signer
        events.extend(SignerChanged(role, step.action, step.reasons) for step in planned.steps)
    return signers, tuple(events)


def _signer_data(signers: Mapping[Role, rotation.Signer]) -> dict[str, str]:
    data: dict[str, bytes] = {}
    for role, signer in signers.items():
        data.update(rotation.encode_signer(role, signer))
    return secret_values(data)


def _bundle(draft: _Draft, observed: Observed, key: str, bundle: str, *, needs: frozenset[int]) -> bool:
    """Put `bundle` under `key` of the ConfigMap; False when it cannot be (a problem of the plan then)."""
    if observed.error is not None:
        draft.unreadable(observed.ref, observed.error)
        return False
    if observed.obj is None and observed.ref.destination:
        draft.missing(observed.ref)
        return False
    draft.put(observed, {key: bundle}, needs=needs)
    return True


def _leaf(
    draft: _Draft,
    observed: Observed,
    want: rotation.Want,
    issuer: pki.KeyPair,
    issue: Callable[[], pki.KeyPair],
    *,
    now: datetime,
    needs: frozenset[int],
) -> x509.Certificate | None:
    """Keep the certificate in the Secret, or issue a new one when the policy says so; the certificate the Secret holds
    once the plan is written (None: nothing usable)."""
    if observed.error is not None:
        draft.unreadable(observed.ref, observed.error)
        return None
    data = secret_data(observed.obj)
    assessment = rotation.assess_leaf(
        data.get(names.TLS_CRT), data.get(names.TLS_KEY), want, issuer=issuer.cert, now=now
    )
    if not assessment.reasons:
        return assessment.cert
    if observed.obj is None and observed.ref.destination:
        draft.missing(observed.ref)
        return assessment.cert
    pair = issue()
    annotations = {
        names.ANNOTATION_EXPIRY_DATE: rfc3339(pair.cert.not_valid_after_utc),
        names.ANNOTATION_SIGNED_BY: pki.common_name(issuer.cert.subject) or "",
    }
    issued = CertificateIssued(observed.ref, assessment.reasons, pair.cert.not_valid_after_utc)
    values = secret_values({names.TLS_CRT: pair.cert_pem, names.TLS_KEY: pair.key_pem})
    draft.put(observed, values, annotations=annotations, tls=True, needs=needs, events=(issued,))
    return pair.cert


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


# --- How an object changes --------------------------------------------------------------------------------------------


class _Draft:
    """The plan being drawn up: its writes and problems so far, and each object as those writes leave it (a second
    write to an object builds on the first)."""

    def __init__(self, tenant: EtcdStorage, namespace: str) -> None:
        self._tenant = tenant
        self._namespace = namespace  # the controller's, whose ServiceAccount the fixes name
        self._writes: list[Write] = []
        self._problems: list[Problem] = []
        self._planned: dict[Ref, Mapping[str, Any]] = {}

    def positions(self, refs: Iterable[Ref] | None = None) -> frozenset[int]:
        """The writes planned so far (to `refs` only, if given)."""
        wanted = None if refs is None else set(refs)
        return frozenset(i for i, write in enumerate(self._writes) if wanted is None or write.ref in wanted)

    def plan(self, found: report.Report | None) -> Plan:
        return Plan(tuple(self._writes), tuple(self._problems), found)

    def unreadable(self, ref: Ref, error: kube.KubeError) -> None:
        self._problems.append(fixes.failed(ref, error, "get", self._namespace))

    def missing(self, ref: Ref) -> None:
        self._problems.append(fixes.missing(ref, self._namespace))

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
    return Core("; ".join(problems), read=configmap.error is None and secret.error is None)


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
