"""The cert-rotation job (`python -m certrotation`): one pass over every EtcdStorage, issuing and rotating certificates.

The edge: reads settings, the clock and Kubernetes (through `certrotation.kube` only) and maps failures to exit codes;
`certrotation.rotation` decides what to issue and when, `certrotation.pki` makes the certificates. Per tenant it writes
in an order that a run killed anywhere leaves safe for the next run: signer, bundles, leaves, report. Never logs key
material.
The controller namespace is read once a pass, by a LIST of its ConfigMaps and of its Secrets; destinations by GET.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Final, TypeVar

from cryptography import x509

from certrotation import kube, pki, rotation
from certrotation.rotation import Role
from etcdstorage import names, report
from etcdstorage import settings as settings_module
from etcdstorage.settings import Settings
from etcdstorage.spec import Destination, EtcdStorage, InvalidSpec, parse
from etcdstorage.times import rfc3339

EXIT_OK: Final = 0
EXIT_FAILURES: Final = 1  # some tenant, or the core etcd client certificate, needs the operator; the rest was done
EXIT_CANNOT_RUN: Final = 2  # settings, credentials or the EtcdStorage list: nothing was processed
ATTEMPTS: Final = 3  # passes over a tenant when a write meets a concurrent change (409)
# TODO(names.py): the ServiceAccount of manifests/cert-rotation-rbac.yaml, named in the fixes we log.
SERVICE_ACCOUNT: Final = "etcdstorage-cert-rotation"
RBAC_MANIFEST: Final = "manifests/cert-rotation-rbac.yaml"
DESTINATION_TEMPLATE: Final = "manifests/examples/apiserver-rbac.yaml"
_MAX_COMMON_NAME: Final = 64  # characters, by X.509

log = logging.getLogger("certrotation.job")
_T = TypeVar("_T")


# --- Entry point ------------------------------------------------------------------------------------------------------


def main() -> int:
    configure_logging(sys.stderr)
    try:
        settings = settings_module.from_env()
    except settings_module.SettingsError as error:
        _log(logging.ERROR, "invalid settings", problem=str(error))
        return EXIT_CANNOT_RUN
    try:
        api = kube.connect()
    except kube.ConnectError as error:
        _log(logging.ERROR, "no Kubernetes credentials", problem=str(error), fix="run in the cluster or set KUBECONFIG")
        return EXIT_CANNOT_RUN
    return run(api, settings, datetime.now(UTC))


def run(api: kube.Api, settings: Settings, now: datetime) -> int:
    """One pass over every EtcdStorage at time `now`; the exit code of the job."""
    try:
        objects = api.list_etcdstorages()
    except kube.ApiError as error:
        if isinstance(error, kube.ForbiddenError):
            fix = f"apply {RBAC_MANIFEST}: its ClusterRole lets {SERVICE_ACCOUNT} list {names.PLURAL}"
        elif isinstance(error, kube.NotFoundError):
            fix = "apply manifests/crd.yaml: the EtcdStorage resource is not installed"
        else:
            fix = "check that the API server is reachable; the next run retries"
        _log(logging.ERROR, "cannot list EtcdStorages", status=error.status, reason=error.reason, fix=fix)
        return EXIT_CANNOT_RUN
    listed = _list_controller_namespace(api, settings.namespace)
    core = _core_material(api, settings, now, listed)
    summary = _Summary(tenants=len(objects), core_problem=bool(core.problem))
    for obj in sorted(objects, key=lambda o: str((o.get("metadata") or {}).get("name", ""))):
        try:
            tenant = parse(obj)
        except InvalidSpec as error:
            summary.failed += 1
            _log(logging.ERROR, "tenant skipped: invalid spec", tenant=error.name, problem=str(error))
            continue
        outcome = _reconcile(api, settings, tenant, core, now, listed=listed)
        summary.issued += outcome.issued
        summary.written += outcome.written
        if outcome.failed:
            summary.failed += 1
    _log(
        logging.INFO if summary.ok else logging.WARNING,
        "run finished",
        tenants=summary.tenants,
        failed=summary.failed,
        certificates_issued=summary.issued,
        objects_written=summary.written,
        core_certificate_ok=not summary.core_problem,
    )
    return EXIT_OK if summary.ok else EXIT_FAILURES


@dataclasses.dataclass
class _Summary:
    tenants: int
    core_problem: bool
    failed: int = 0
    issued: int = 0
    written: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.core_problem


# --- One tenant -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Ref:
    kind: kube.Kind
    namespace: str
    name: str
    destination: bool = False  # pre-created by the API server's operator in its namespace: never created here

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


# The controller namespace's ConfigMaps and Secrets by (kind, name), as the pass's LISTs gave them (resourceVersions
# included); None when they could not be listed.
_Listed = Mapping[tuple[kube.Kind, str], dict[str, Any]]


def _list_controller_namespace(api: kube.Api, namespace: str) -> _Listed | None:
    """Every ConfigMap and Secret of the controller namespace, read once at the start of the pass: two paged LISTs
    instead of three GETs per tenant. None, and a warning, when either list fails: the pass then GETs each object."""
    listed: dict[tuple[kube.Kind, str], dict[str, Any]] = {}
    for kind in kube.Kind:
        try:
            items = kube.list_all(api, kind, namespace)
        except kube.ApiError as error:
            if isinstance(error, kube.ForbiddenError):
                fix = f"apply {RBAC_MANIFEST}: its Role lets {SERVICE_ACCOUNT} list {kind}s in {namespace}"
            else:
                fix = "the next run lists again"
            _log(
                logging.WARNING,
                "cannot list the controller namespace: reading objects one by one",
                kind=kind,
                namespace=namespace,
                status=error.status,
                reason=error.reason,
                fix=fix,
            )
            return None
        for item in items:
            listed[(kind, str((item.get("metadata") or {}).get("name", "")))] = item
    return listed


class _Stale(Exception):
    """A write found the object changed (409) or gone (404) since it was read: the tenant's pass starts again."""


class _ObjectFailure(Exception):
    """An object of a tenant could not be read or written; `fix` says what the operator does about it."""

    def __init__(self, ref: _Ref, problem: str, fix: str) -> None:
        self.ref = ref
        self.problem = problem
        self.fix = fix
        super().__init__(f"{ref.kind} {ref}: {problem}")


@dataclasses.dataclass
class _Outcome:
    issued: int = 0
    written: int = 0
    failures: list[_ObjectFailure] = dataclasses.field(default_factory=list)  # each logged with its fix
    aborted: bool = False  # the pass stopped for a reason already logged

    @property
    def failed(self) -> bool:
        return self.aborted or bool(self.failures)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    cert: x509.Certificate | None  # what the Secret holds after this run (None: nothing readable)
    cert_pem: bytes
    read: bool = True  # False: the Secret could not be read


def _reconcile(
    api: kube.Api, settings: Settings, tenant: EtcdStorage, core: _Core, now: datetime, *, listed: _Listed | None
) -> _Outcome:
    """The tenant's pass, started again from fresh reads when a write meets a concurrent change (bounded). The first
    attempt takes the controller namespace's objects from the pass's LIST; any later one GETs every object again, so
    that what a write conflicted on, or what was created after the list, is read as it is now."""
    for attempt in range(1, ATTEMPTS + 1):
        tenant_pass = _TenantPass(api, settings, tenant, core, now, listed=listed if attempt == 1 else None)
        try:
            tenant_pass.run()
        except _Stale:
            _log(logging.WARNING, "write conflict: reading the tenant again", tenant=tenant.name, attempt=attempt)
            continue
        except _ObjectFailure as signer_failure:  # the signer could not be read or written: nothing else is safe
            tenant_pass.outcome.failures.append(signer_failure)
            tenant_pass.outcome.aborted = True
        except Exception:  # a bug must not keep the other tenants from their certificates
            log.exception("tenant failed: unexpected error", extra={"fields": {"tenant": tenant.name}})
            tenant_pass.outcome.aborted = True
        for failure in tenant_pass.outcome.failures:
            _log(
                logging.ERROR,
                "tenant object failed",
                tenant=tenant.name,
                kind=failure.ref.kind,
                object=str(failure.ref),
                problem=failure.problem,
                fix=failure.fix,
            )
        return tenant_pass.outcome
    _log(
        logging.ERROR,
        "tenant failed: writes kept conflicting",
        tenant=tenant.name,
        attempts=ATTEMPTS,
        fix="another writer keeps changing the tenant's objects: stop it (is a second job running?)",
    )
    return _Outcome(aborted=True)


class _TenantPass:
    """One pass over one tenant. Writes in the order that keeps a run killed anywhere safe for the next one."""

    def __init__(
        self,
        api: kube.Api,
        settings: Settings,
        tenant: EtcdStorage,
        core: _Core,
        now: datetime,
        *,
        listed: _Listed | None,
    ) -> None:
        self.api = api
        self.listed = listed  # None: every object is read by GET
        self.settings = settings
        self.tenant = tenant
        self.core = core
        self.now = now
        self.outcome = _Outcome()
        self.namespace = settings.namespace

    def run(self) -> None:
        tenant, namespace, now = self.tenant, self.namespace, self.now
        # 1. The signer first: a CA is stored before anything trusts it or is signed by it.
        signer_ref = _Ref(kube.Kind.SECRET, namespace, names.signer_secret(tenant.name))
        signer_obj = self.read(signer_ref)
        stored = _secret_data(signer_obj)
        ca_want = rotation.Want(tenant.signing_validity, tenant.key_algorithm, tenant.renew_before)
        signers: dict[Role, rotation.Signer] = {}
        for role in Role:
            plan = rotation.plan_signer(
                stored,
                role,
                ca_want,
                now=now,
                minimum_delay=self.settings.ca_propagation_delay,
                new_ca=self.ca_factory(role),
            )
            for step in plan.steps:
                _log(
                    logging.INFO,
                    "signer changed",
                    tenant=tenant.name,
                    role=role,
                    action=step.action,
                    reasons=step.reasons,
                )
                if step.action in ("issued", "staged"):
                    self.outcome.issued += 1
            signers[role] = plan.signer
        signer_obj = self.write_signer(signer_ref, signer_obj, signers)

        # 2. The bundles, before any leaf that depends on them.
        published = {Role.CLIENT: True, Role.SERVING: True}
        client_bundle = pki.encode_certs(signers[Role.CLIENT].bundle(now)).decode()
        ca_ref = _Ref(kube.Kind.CONFIGMAP, namespace, names.client_ca_configmap(tenant.name))
        ca_configmap = None
        try:
            ca_configmap = self.write(ca_ref, self.read(ca_ref), data={names.CLIENT_CA_KEY: client_bundle}, owned=True)
        except _ObjectFailure as failure:
            self.outcome.failures.append(failure)
            published[Role.CLIENT] = False
        serving_bundle = pki.encode_certs(signers[Role.SERVING].bundle(now)).decode()
        for destination in tenant.ca_cert_configmaps:
            ref = _destination(kube.Kind.CONFIGMAP, destination)
            try:
                self.write(ref, self.read(ref), data={names.SERVING_CA_KEY: serving_bundle})
            except _ObjectFailure as failure:
                self.outcome.failures.append(failure)
                published[Role.SERVING] = False

        # 3. A staged CA that every bundle now holds starts its propagation delay.
        marked = {role: signer.published(now) if published[role] else signer for role, signer in signers.items()}
        if any(marked[role] is not signers[role] for role in Role):  # `published` returns the signer if unchanged
            signers = marked
            try:
                self.write_signer(signer_ref, signer_obj, signers)
            except _ObjectFailure as failure:  # the next run marks it, later: that only delays the promotion
                self.outcome.failures.append(failure)

        # 4. The leaves, signed by the current CAs.
        hosts = tuple(names.service_hosts(tenant.name, namespace, self.settings.cluster_domain))
        serving_ca, client_ca = signers[Role.SERVING].current, signers[Role.CLIENT].current
        server = self.leaf(
            _Ref(kube.Kind.SECRET, namespace, names.server_cert_secret(tenant.name)),
            rotation.Want(tenant.serving_validity, tenant.key_algorithm, tenant.renew_before, hosts),
            issuer=serving_ca,
            issue=lambda: pki.new_server_cert(
                serving_ca, list(hosts), now=now, validity=tenant.serving_validity, algorithm=tenant.key_algorithm
            ),
        )
        client_want = rotation.Want(tenant.client_validity, tenant.key_algorithm, tenant.renew_before)
        clients = [
            self.leaf(
                _destination(kube.Kind.SECRET, destination),
                client_want,
                issuer=client_ca,
                issue=self.client_factory(client_ca, destination),
            )
            for destination in tenant.client_cert_secrets
        ]

        # 5. The report for the hook, last, once everything it covers is in place. Not when a read failed: it would
        # report times of certificates that could not be read.
        if ca_configmap is None or not server.read or not self.core.read:
            return
        certificates = {
            "servingCA": self.times(signers[Role.SERVING].current.cert),
            "clientCA": self.times(signers[Role.CLIENT].current.cert),
        }
        if server.cert is not None:
            certificates["servingCertificate"] = self.times(server.cert)
        client_certs = [leaf.cert for leaf in clients if leaf.cert is not None]
        if client_certs:
            certificates["clientCertificate"] = self.times(min(client_certs, key=lambda c: c.not_valid_after_utc))
        annotations = report.to_annotations(
            report.Report(certificates=certificates, core_certificate_problem=self.core.problem)
        )
        try:
            self.write(ca_ref, ca_configmap, data={}, annotations=annotations, owned=True)
        except _ObjectFailure as failure:
            self.outcome.failures.append(failure)

    # --- reads and writes ---

    def read(self, ref: _Ref) -> dict[str, Any] | None:
        # Never modified in place (see `write`), so the listed object itself is handed out, as a GET's would be.
        if self.listed is not None and not ref.destination and ref.namespace == self.namespace:
            return self.listed.get((ref.kind, ref.name))
        return self.call(lambda: self.api.get(ref.kind, ref.namespace, ref.name), ref, verb="get")

    def write(
        self,
        ref: _Ref,
        current: dict[str, Any] | None,
        *,
        data: Mapping[str, str],
        annotations: Mapping[str, str] | None = None,
        owned: bool = False,
        tls: bool = False,
        whole_data: bool = False,
    ) -> dict[str, Any]:
        """Make `data` and `annotations` part of the object, touching nothing else (all of its data if `whole_data`),
        and write only when that changes it. `owned` objects, in the controller namespace, are created when missing
        (a Secret as kubernetes.io/tls if `tls`); destinations never are."""
        labels = names.certificate_labels(self.tenant.name)
        if current is None:
            if not owned:
                raise _ObjectFailure(ref, "does not exist", self.missing_fix(ref))
            metadata: dict[str, Any] = {
                "name": ref.name,
                "namespace": ref.namespace,
                "labels": labels,
                "ownerReferences": [self.owner_reference()],
            }
            if annotations:
                metadata["annotations"] = dict(annotations)
            body: dict[str, Any] = {"apiVersion": "v1", "kind": str(ref.kind), "metadata": metadata, "data": dict(data)}
            if ref.kind is kube.Kind.SECRET:
                body["type"] = "kubernetes.io/tls" if tls else "Opaque"
            created = self.call(lambda: self.api.create(ref.kind, ref.namespace, body), ref, verb="create")
            _log(
                logging.INFO,
                "object created",
                tenant=self.tenant.name,
                kind=ref.kind,
                object=str(ref),
                keys=sorted(data),
            )
            self.outcome.written += 1
            return created

        # A shallow copy: what changes is replaced below by new dicts and lists, never modified in place, so the
        # object as read stays intact for the comparison (a deep copy of every object read cost more than that).
        desired = {**current, "metadata": {**(current.get("metadata") or {})}}
        if whole_data:
            desired["data"] = dict(data)
        elif data:
            desired["data"] = {**(current.get("data") or {}), **data}
        metadata = desired["metadata"]
        if annotations:
            metadata["annotations"] = {**(metadata.get("annotations") or {}), **annotations}
        if owned:  # also adopts what the original controller created without owner or labels
            metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
            references = metadata.get("ownerReferences") or []
            if not any(reference.get("uid") == self.tenant.uid for reference in references):
                metadata["ownerReferences"] = [*references, self.owner_reference()]
        if desired == current:
            return current
        replaced = self.call(lambda: self.api.replace(ref.kind, ref.namespace, desired), ref, verb="update")
        before, after = current.get("data") or {}, desired.get("data") or {}
        changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
        _log(logging.INFO, "object updated", tenant=self.tenant.name, kind=ref.kind, object=str(ref), keys=changed)
        self.outcome.written += 1
        return replaced

    def call(self, request: Callable[[], _T], ref: _Ref, *, verb: str) -> _T:
        try:
            return request()
        except kube.ConflictError:  # someone else wrote in between (or created what was missing when read)
            raise _Stale from None
        except kube.NotFoundError as error:
            if verb == "update":  # deleted since it was read
                raise _Stale from None
            raise self.failure(ref, error, verb) from None
        except kube.ApiError as error:
            raise self.failure(ref, error, verb) from None

    def write_signer(
        self, ref: _Ref, current: dict[str, Any] | None, signers: Mapping[Role, rotation.Signer]
    ) -> dict[str, Any]:
        data: dict[str, bytes] = {}
        for role, signer in signers.items():
            data.update(rotation.encode_signer(role, signer))
        # Replaced whole: the entries of a discarded staged CA or of expired retired CAs must go.
        return self.write(ref, current, data=_secret_values(data), owned=True, whole_data=True)

    def leaf(self, ref: _Ref, want: rotation.Want, *, issuer: pki.KeyPair, issue: Callable[[], pki.KeyPair]) -> _Leaf:
        """Keep the certificate in Secret `ref`, or issue a new one when the policy says so."""
        try:
            current = self.read(ref)
        except _ObjectFailure as failure:
            self.outcome.failures.append(failure)
            return _Leaf(None, b"", read=False)
        data = _secret_data(current)
        kept = _Leaf(None, b"")
        assessment = rotation.assess_leaf(
            data.get(names.TLS_CRT), data.get(names.TLS_KEY), want, issuer=issuer.cert, now=self.now
        )
        if assessment.cert is not None:
            kept = _Leaf(assessment.cert, data.get(names.TLS_CRT, b""))
        if not assessment.reasons:
            return kept
        if current is None and ref.destination:
            self.outcome.failures.append(_ObjectFailure(ref, "does not exist", self.missing_fix(ref)))
            return kept
        pair = issue()
        annotations = {
            names.ANNOTATION_EXPIRY_DATE: rfc3339(pair.cert.not_valid_after_utc),
            names.ANNOTATION_SIGNED_BY: pki.common_name(issuer.cert.subject) or "",
        }
        values = _secret_values({names.TLS_CRT: pair.cert_pem, names.TLS_KEY: pair.key_pem})
        try:
            self.write(ref, current, data=values, annotations=annotations, owned=not ref.destination, tls=True)
        except _ObjectFailure as failure:
            self.outcome.failures.append(failure)
            return kept
        _log(
            logging.INFO,
            "certificate issued",
            tenant=self.tenant.name,
            kind=ref.kind,
            object=str(ref),
            reasons=assessment.reasons,
            not_after=rfc3339(pair.cert.not_valid_after_utc),
        )
        self.outcome.issued += 1
        return _Leaf(pair.cert, pair.cert_pem)

    # --- what the tenant's objects hold ---

    def owner_reference(self) -> dict[str, Any]:
        # Not `controller: true`, and no controller-uid label on the object: Metacontroller would take such objects
        # for children of its own and delete them. No blockOwnerDeletion: that needs the finalizers permission.
        return {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": self.tenant.name, "uid": self.tenant.uid}

    def ca_factory(self, role: Role) -> Callable[[], pki.KeyPair]:
        tenant = self.tenant
        # Unique per CA, so that bundles and the signed-by annotation tell CAs apart; X.509 allows 64 characters.
        suffix = f"-{role}-ca-{int(self.now.timestamp())}"
        name = names.proxy_name(tenant.name)[: _MAX_COMMON_NAME - len(suffix)] + suffix
        return lambda: pki.new_ca(name, now=self.now, validity=tenant.signing_validity, algorithm=tenant.key_algorithm)

    def client_factory(self, ca: pki.KeyPair, destination: Destination) -> Callable[[], pki.KeyPair]:
        tenant = self.tenant
        # One certificate and key per destination, as the original: a key is never copied between namespaces.
        name = f"client-{destination.namespace}-{destination.name}"[:_MAX_COMMON_NAME]
        return lambda: pki.new_client_cert(
            ca, name, now=self.now, validity=tenant.client_validity, algorithm=tenant.key_algorithm
        )

    def times(self, cert: x509.Certificate) -> report.CertificateTimes:
        return report.CertificateTimes(
            notBefore=cert.not_valid_before_utc,
            notAfter=cert.not_valid_after_utc,
            renewalTime=rotation.cert_renewal_time(cert, self.tenant.renew_before),
        )

    # --- how the operator fixes a failure ---

    def failure(self, ref: _Ref, error: kube.ApiError, verb: str) -> _ObjectFailure:
        account = f"{self.namespace}/{SERVICE_ACCOUNT}"
        if not isinstance(error, kube.ForbiddenError):
            return _ObjectFailure(ref, f"{verb} failed: {error.status} {error.reason}".rstrip(), "the next run retries")
        if ref.destination:
            fix = (
                f"in namespace {ref.namespace}, bind a Role granting get and update on {ref.kind} {ref.name} "
                f"to ServiceAccount {account}: see {DESTINATION_TEMPLATE}"
            )
        else:
            fix = (
                f"apply {RBAC_MANIFEST}: its Role lets {account} get, create and update {ref.kind}s in {ref.namespace}"
            )
        return _ObjectFailure(ref, f"{verb} forbidden", fix)

    def missing_fix(self, ref: _Ref) -> str:
        return (
            f"create {ref.kind} {ref} (empty is fine) and let ServiceAccount {self.namespace}/{SERVICE_ACCOUNT} "
            f"get and update it: see {DESTINATION_TEMPLATE}"
        )


def _destination(kind: kube.Kind, destination: Destination) -> _Ref:
    return _Ref(kind, destination.namespace, destination.name, destination=True)


def _secret_data(obj: Mapping[str, Any] | None) -> dict[str, bytes]:
    data = (obj or {}).get("data") or {}
    decoded = {}
    for key, value in data.items():
        try:
            decoded[key] = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        except (binascii.Error, ValueError):
            decoded[key] = b""  # unreadable counts as missing: it is re-issued
    return decoded


def _secret_values(data: Mapping[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in data.items()}


# --- The core etcd client certificate ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Core:
    ca: bytes  # the core CA bundle
    cert: bytes  # the client certificate only: its key is never read
    problem: str  # "" when grpc-proxy can use them
    read: bool = True  # False: an API error hid them, so no digest of them can be made this run


def _core_material(api: kube.Api, settings: Settings, now: datetime, listed: _Listed | None) -> _Core:
    namespace = settings.namespace
    ca_where = f"ConfigMap {namespace}/{settings.core_ca_configmap}"
    cert_where = f"Secret {namespace}/{settings.core_cert_secret}"
    problems: list[str] = []
    unread: list[str] = []

    def fetch(kind: kube.Kind, name: str, where: str) -> dict[str, Any] | None:
        try:
            obj = api.get(kind, namespace, name) if listed is None else listed.get((kind, name))
        except kube.ApiError as error:
            problems.append(f"{where} cannot be read: {error.status} {error.reason}".rstrip())
            unread.append(where)
            return None
        if obj is None:
            problems.append(f"{where} does not exist")
        return obj

    configmap = fetch(kube.Kind.CONFIGMAP, settings.core_ca_configmap, ca_where)
    secret = fetch(kube.Kind.SECRET, settings.core_cert_secret, cert_where)
    ca = str(((configmap or {}).get("data") or {}).get(names.CORE_CA_KEY, "")).encode()
    cert = _secret_data(secret).get(names.TLS_CRT, b"")
    if configmap is not None and not ca:
        problems.append(f"{ca_where} has no {names.CORE_CA_KEY}")
    if secret is not None and not cert:
        problems.append(f"{cert_where} has no {names.TLS_CRT}")
    if ca and cert:
        problems.extend(_core_problems(ca, cert, ca_where, cert_where, now))
    problem = "; ".join(problems)
    if problem:
        _log(
            logging.ERROR,
            "core etcd client certificate unusable",
            object=cert_where,
            problem=problem,
            fix=f"put the core etcd CA in {ca_where} key {names.CORE_CA_KEY} and a valid client certificate it "
            f"signed in {cert_where}",
        )
    return _Core(ca, cert, problem, read=not unread)


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


# --- Logs -------------------------------------------------------------------------------------------------------------


def _log(level: int, message: str, **fields: object) -> None:
    """A fixed message and key=value fields (rendered by `KeyValueFormatter`); values are never key material."""
    log.log(level, message, extra={"fields": {key: value for key, value in fields.items() if value is not None}})


class KeyValueFormatter(logging.Formatter):
    """`time=… level=… msg="…" key=value …`: one line per event, values quoted when they need it."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        parts = [f"time={moment}", f"level={record.levelname.lower()}", f"msg={_value(record.getMessage())}"]
        fields = getattr(record, "fields", {})
        parts.extend(f"{key}={_value(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += " error=" + _value(self.formatException(record.exc_info))
        return line


def _value(value: object) -> str:
    if isinstance(value, list | tuple):
        value = ",".join(str(item) for item in value)
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if text and all(c.isalnum() or c in "-_./:,@+" for c in text):
        return text
    return json.dumps(text)


def configure_logging(stream: IO[str]) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


if __name__ == "__main__":
    sys.exit(main())
