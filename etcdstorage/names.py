"""Every name, label, annotation, data key, mount path and port of the project, and the tenant key prefix.

The one source: builders, the job and the tests import these; nothing else spells them. The tenant proxy (Go)
takes ports and paths as flags, which `hooks.children` sets from here.
Pure: no I/O, no settings lookup (values that an operator may change arrive as arguments).
"""

from __future__ import annotations

import re
from typing import Final

# --- The API ---------------------------------------------------------------------------------------------------
GROUP: Final = "etcd.xmudrii.com"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "EtcdStorage"
PLURAL: Final = "etcdstorages"

# --- Defaults shared with the original project ----------------------------------------------------------------
DEFAULT_CONTROLLER_NAMESPACE: Final = "kube-apiserver-storage"
CORE_CA_CONFIGMAP: Final = "etcd-coreserving-ca"
CORE_CERT_SECRET: Final = "etcd-coreserving-cert"

# --- Data keys ----------------------------------------------------------------------------------------------------
CORE_CA_KEY: Final = "ca.crt"
CLIENT_CA_KEY: Final = "client-ca.crt"
SERVING_CA_KEY: Final = "serving-ca.crt"
TLS_CRT: Final = "tls.crt"
TLS_KEY: Final = "tls.key"

# --- Ports ----------------------------------------------------------------------------------------------------------
ETCD_PORT: Final = 2379
ETCD_PORT_NAME: Final = "etcd"
PROXY_HEALTH_PORT: Final = 8080  # the tenant proxy's plain-HTTP /livez, /readyz and /metrics; no etcd RPC
PROXY_HEALTH_PORT_NAME: Final = "health"

# --- Mount paths of the proxy pods (the original's) ---------------------------------------------------------------
CORE_CA_DIR: Final = "/etc/coreetcd-certs/ca"
CORE_CLIENT_DIR: Final = "/etc/coreetcd-certs/client"
CLIENT_CA_DIR: Final = "/etc/etcdproxy-certs/ca"
SERVER_CERT_DIR: Final = "/etc/etcdproxy-certs/server"

# --- Objects in the controller namespace that are not per tenant ----------------------------------------------------
PROXY_SERVICE_ACCOUNT: Final = "etcdstorage-proxy"

# --- Labels and annotations -------------------------------------------------------------------------------------
LABEL_APISERVER: Final = "apiserver"  # the original's selector label; kept so its Deployments are adopted in place
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
PART_OF: Final = "etcdstorage"
PROXY_APP: Final = "etcd-proxy"
MANAGED_BY_HOOK: Final = "etcdstorage-hook"
MANAGED_BY_JOB: Final = "etcdstorage-cert-rotation"

# Written by the job on <N>-ca-cert, read by the hook (which never sees a Secret).
ANNOTATION_CERTIFICATES: Final = f"{GROUP}/certificates"  # JSON: notBefore/notAfter/renewalTime per certificate
ANNOTATION_CORE_CERT_PROBLEM: Final = f"{GROUP}/core-client-certificate-problem"  # "" when fine
ANNOTATION_REPORT_FOR: Final = f"{GROUP}/report-for"  # the uid of the EtcdStorage the report was written for
ANNOTATION_DELIVERIES: Final = f"{GROUP}/deliveries"  # JSON: per object, whether the last pass delivered it, or why not
ANNOTATION_SIGNER_LOST: Final = f"{GROUP}/signer-lost"  # why a CA is being recovered with overlap; "" when none is
ANNOTATION_KEY_DELETION: Final = f"{GROUP}/key-deletion"  # JSON: the deletion of a going tenant's keys (Delete)
# The job's record of its runs, in the controller namespace, which the hook exports as metrics: RFC 3339 times.
JOB_STATUS_CONFIGMAP: Final = "etcdstorage-cert-rotation-status"
JOB_LAST_RUN_KEY: Final = "lastRunTime"
JOB_LAST_SUCCESS_KEY: Final = "lastSuccessTime"  # the last run that exited 0: every tenant done
JOB_LAST_EXIT_KEY: Final = "lastRunExitCode"
ANNOTATION_CONSUMERS: Final = f"{GROUP}/consumers"  # JSON: each consumer's certificates hash and rollout
# On a consumer's pod template: the hash of the certificates it mounts; a new value rolls its pods.
ANNOTATION_CERTIFICATES_HASH: Final = f"{GROUP}/certificates-hash"
# Manual rotation. Put on an EtcdStorage by its operator, any new value (a timestamp, say) asks the job, once: renew
# re-issues the proxies' serving certificate and every client certificate, rotate-ca rotates both CAs with overlap.
ANNOTATION_RENEW: Final = f"{GROUP}/renew"
ANNOTATION_ROTATE_CA: Final = f"{GROUP}/rotate-ca"
# Written by the job in the same write that carries a request out, so that a run that dies half-way never acts twice:
ANNOTATION_RENEWED_FOR: Final = f"{GROUP}/renewed-for"  # on a leaf's Secret: the renew value in force at its issue
ANNOTATION_CA_ROTATED_FOR: Final = f"{GROUP}/ca-rotated-for"  # on <N>-signer: the rotate-ca value acted on
ANNOTATION_MANUAL_ROTATION: Final = f"{GROUP}/manual-rotation"  # on <N>-ca-cert, JSON: each value acted on, and when
# The original's annotations on the Secrets it wrote, kept on ours for tools that read them.
ANNOTATION_EXPIRY_DATE: Final = f"{GROUP}/certificate-expiry-date"
ANNOTATION_SIGNED_BY: Final = f"{GROUP}/certificate-signed-by"

# --- Events ----------------------------------------------------------------------------------------------------
# Where the job's Events about an EtcdStorage go: the API server accepts the Events of a cluster-scoped object only in
# `default` (and, with an eventTime, kube-system), and `kubectl describe` lists them from every namespace.
EVENTS_NAMESPACE: Final = "default"
EVENTS_COMPONENT: Final = MANAGED_BY_JOB  # source.component and reportingComponent of the job's Events

# --- Per tenant ---------------------------------------------------------------------------------------------------
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_DNS_LABEL: Final = 63
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_DNS_SUBDOMAIN: Final = 253
PROXY_NAME_PREFIX: Final = "etcd-"
MAX_NAME_LENGTH: Final = MAX_DNS_LABEL - len(PROXY_NAME_PREFIX)  # 58: etcd-<N> is a Service name

DEFAULT_PREFIX_ROOT: Final = "etcdstorage"
# With the original layout (root "/") a tenant named like these would see another system's keys in the core etcd.
RESERVED_NAMES: Final = frozenset(
    {"registry", "calico", "cilium", "coreos", "flannel", "kubernetes", "openshift", "skydns", "traefik"}
)


def proxy_name(tenant: str) -> str:
    """The Deployment, Service and PodDisruptionBudget of a tenant's proxies."""
    return f"{PROXY_NAME_PREFIX}{tenant}"


def server_cert_secret(tenant: str) -> str:
    return f"{tenant}-server-cert"


def client_ca_configmap(tenant: str) -> str:
    return f"{tenant}-ca-cert"


def signer_secret(tenant: str) -> str:
    return f"{tenant}-signer"


def service_hosts(tenant: str, namespace: str, cluster_domain: str) -> list[str]:
    """DNS names under which the proxies serve; every one is a SAN of the serving certificate."""
    name = proxy_name(tenant)
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.{cluster_domain}"]


def endpoint(tenant: str, namespace: str) -> str:
    return f"https://{proxy_name(tenant)}.{namespace}.svc:{ETCD_PORT}"


def key_prefix(tenant: str, root: str = DEFAULT_PREFIX_ROOT) -> str:
    """The tenant's etcd key prefix: `/<root>/<N>/`, or the original's `/<N>/` when root is `/`.

    Leading and trailing slashes keep `a` and `a-b` apart; the name is immutable, so the prefix is too.
    """
    parts = [part for part in root.split("/") if part]
    return "/" + "".join(f"{part}/" for part in parts) + f"{tenant}/"


def selector_labels(tenant: str) -> dict[str, str]:
    """The Deployment selector: immutable, and the original's, so its Deployments are updated in place."""
    return {LABEL_APISERVER: tenant}


def proxy_labels(tenant: str) -> dict[str, str]:
    return _labels(tenant, component="proxy", managed_by=MANAGED_BY_HOOK)


def certificate_labels(tenant: str) -> dict[str, str]:
    return _labels(tenant, component="certificates", managed_by=MANAGED_BY_JOB)


def _labels(tenant: str, *, component: str, managed_by: str) -> dict[str, str]:
    """The original's `apiserver` label and the recommended `app.kubernetes.io/*` labels of a tenant's objects."""
    return {
        LABEL_APISERVER: tenant,
        LABEL_NAME: PROXY_APP,
        LABEL_INSTANCE: tenant,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: PART_OF,
        LABEL_MANAGED_BY: managed_by,
    }
