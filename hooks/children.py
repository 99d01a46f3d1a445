"""The desired children of one EtcdStorage: the proxy Deployment, its Service and its PodDisruptionBudget.

Plain dicts shaped like the YAML a person would write, holding only fields we own (Metacontroller merges them
into the live objects). Pure: every value comes from the arguments and `names`.
"""

from __future__ import annotations

from typing import Any, Final

from etcdstorage import names
from etcdstorage.settings import Settings
from etcdstorage.spec import EtcdStorage

RUN_AS: Final = 65532  # the image's non-root user; no shell user of any image
SECRET_FILE_MODE: Final = 0o440  # readable by the pod's group (fsGroup) only
# On SIGTERM the proxy goes unready and serves on while the Service's endpoints drop the pod, then ends its watch
# streams (clients resume on another pod) and lets unary requests finish; the grace period covers both and a margin.
SHUTDOWN_DELAY_SECONDS: Final = 5
SHUTDOWN_TIMEOUT_SECONDS: Final = 15
GRACE_PERIOD_SECONDS: Final = SHUTDOWN_DELAY_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 10
# A proxy killed for failing its liveness probe is hung and handles no SIGTERM: the pod's grace period would only delay
# its restart (by all of its 30 s, on a real node). This kill leaves the time to go unready, not to drain.
LIVENESS_KILL_GRACE_SECONDS: Final = SHUTDOWN_DELAY_SECONDS


def desired(tenant: EtcdStorage, settings: Settings) -> list[dict[str, Any]]:
    """Every child, always all of them: Metacontroller deletes a child that an answer leaves out."""
    return [deployment(tenant, settings), service(tenant, settings), disruption_budget(tenant, settings)]


def replicas(tenant: EtcdStorage, settings: Settings) -> int:
    return tenant.replicas if tenant.replicas is not None else settings.replicas


def deployment(tenant: EtcdStorage, settings: Settings) -> dict[str, Any]:
    """The proxy pods. Their template carries no certificate digest: the tenant proxy re-reads its certificates
    as kubelet updates the mounted Secrets and ConfigMaps, so a rotation rolls no pod."""
    name = tenant.name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, settings),
        "spec": {
            "replicas": replicas(tenant, settings),
            "selector": {"matchLabels": names.selector_labels(name)},
            # A new pod must be ready before an old one goes: a roll (a new image, new settings) costs no capacity.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": names.proxy_labels(name)},
                "spec": _pod_spec(tenant, settings),
            },
        },
    }


def service(tenant: EtcdStorage, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(tenant.name, settings),
        "spec": {
            "selector": names.selector_labels(tenant.name),
            "ports": [
                {
                    "name": names.ETCD_PORT_NAME,
                    "port": names.ETCD_PORT,
                    "targetPort": names.ETCD_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def disruption_budget(tenant: EtcdStorage, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(tenant.name, settings),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": names.selector_labels(tenant.name)}},
    }


def _metadata(tenant: str, settings: Settings) -> dict[str, Any]:
    return {"name": names.proxy_name(tenant), "namespace": settings.namespace, "labels": names.proxy_labels(tenant)}


def _pod_spec(tenant: EtcdStorage, settings: Settings) -> dict[str, Any]:
    name = tenant.name
    return {
        "serviceAccountName": names.PROXY_SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,  # the proxies never talk to Kubernetes
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": GRACE_PERIOD_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_proxy(name, settings)],
        "volumes": [
            _secret_volume("server-cert", names.server_cert_secret(name)),
            _configmap_volume("client-ca", names.client_ca_configmap(name)),
            _configmap_volume("core-ca", settings.core_ca_configmap),
            _secret_volume("core-client", settings.core_cert_secret),
        ],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": names.selector_labels(name)},
            }
            for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
        ],
    }


def _proxy(tenant: str, settings: Settings) -> dict[str, Any]:
    health = {"port": names.PROXY_HEALTH_PORT_NAME, "scheme": "HTTP"}
    return {
        "name": "proxy",
        "image": settings.proxy_image,
        # Every flag explicit, so that the pod spec says what the proxy does; ":port" listens on IPv4 and IPv6.
        "args": [
            f"--prefix={names.key_prefix(tenant, settings.key_prefix_root)}",
            f"--endpoints={','.join(settings.core_etcd_urls)}",
            f"--listen=:{names.ETCD_PORT}",
            f"--health-listen=:{names.PROXY_HEALTH_PORT}",
            f"--cert-file={names.SERVER_CERT_DIR}/{names.TLS_CRT}",
            f"--key-file={names.SERVER_CERT_DIR}/{names.TLS_KEY}",
            f"--client-ca-file={names.CLIENT_CA_DIR}/{names.CLIENT_CA_KEY}",
            f"--core-ca-file={names.CORE_CA_DIR}/{names.CORE_CA_KEY}",
            f"--core-cert-file={names.CORE_CLIENT_DIR}/{names.TLS_CRT}",
            f"--core-key-file={names.CORE_CLIENT_DIR}/{names.TLS_KEY}",
            f"--shutdown-delay={SHUTDOWN_DELAY_SECONDS}s",
            f"--shutdown-timeout={SHUTDOWN_TIMEOUT_SECONDS}s",
        ],
        "env": [  # Go's garbage collector works harder before the container's memory limit, not after it
            {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
        ],
        "ports": [
            {"name": names.ETCD_PORT_NAME, "containerPort": names.ETCD_PORT, "protocol": "TCP"},
            {"name": names.PROXY_HEALTH_PORT_NAME, "containerPort": names.PROXY_HEALTH_PORT, "protocol": "TCP"},
        ],
        # Ready: certificates loaded, not stopping, and the core etcd answered in the last 10 s (or answers now).
        "readinessProbe": {
            "httpGet": {"path": "/readyz", **health},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 2,
        },
        # Alive: the tenant listener answers a TLS handshake; a hung process is restarted, a core outage is not.
        "livenessProbe": {
            "httpGet": {"path": "/livez", **health},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
            "terminationGracePeriodSeconds": LIVENESS_KILL_GRACE_SECONDS,
        },
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": _container_security(),
        "volumeMounts": [
            _mount("server-cert", names.SERVER_CERT_DIR),
            _mount("client-ca", names.CLIENT_CA_DIR),
            _mount("core-ca", names.CORE_CA_DIR),
            _mount("core-client", names.CORE_CLIENT_DIR),
        ],
    }


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def _mount(volume: str, path: str) -> dict[str, Any]:
    return {"name": volume, "mountPath": path, "readOnly": True}


def _configmap_volume(volume: str, configmap: str) -> dict[str, Any]:
    return {"name": volume, "configMap": {"name": configmap}}


def _secret_volume(volume: str, secret: str) -> dict[str, Any]:
    return {"name": volume, "secret": {"secretName": secret, "defaultMode": SECRET_FILE_MODE}}
