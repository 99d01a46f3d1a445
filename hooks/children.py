"""The desired children of one EtcdStorage: the proxy Deployment, its Service and its PodDisruptionBudget.

Plain dicts shaped like the YAML a person would write, holding only fields we own (Metacontroller merges them
into the live objects). Pure: every value comes from the arguments and `names`.
"""

from __future__ import annotations

from typing import Any, Final

from hooks import guard, names
from hooks.settings import Settings
from hooks.spec import EtcdStorage

RUN_AS: Final = 65532  # nobody-like uid/gid that neither image maps to a shell user
SECRET_FILE_MODE: Final = 0o440  # readable by the pod's group (fsGroup) only


def desired(
    tenant: EtcdStorage, settings: Settings, *, certificates_hash: str | None, guard_hash: str
) -> list[dict[str, Any]]:
    """Every child, always all of them: Metacontroller deletes a child that an answer leaves out."""
    return [
        deployment(tenant, settings, certificates_hash=certificates_hash, guard_hash=guard_hash),
        service(tenant, settings),
        disruption_budget(tenant, settings),
    ]


def replicas(tenant: EtcdStorage, settings: Settings) -> int:
    return tenant.replicas if tenant.replicas is not None else settings.replicas


def deployment(
    tenant: EtcdStorage, settings: Settings, *, certificates_hash: str | None, guard_hash: str
) -> dict[str, Any]:
    name = tenant.name
    annotations = {names.ANNOTATION_GUARD_CONFIG_HASH: guard_hash}
    if certificates_hash:
        annotations[names.ANNOTATION_CERTIFICATES_HASH] = certificates_hash
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, settings),
        "spec": {
            "replicas": replicas(tenant, settings),
            "selector": {"matchLabels": names.selector_labels(name)},
            # A new pod must be ready before an old one goes: certificate rolls cost no capacity.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": names.proxy_labels(name), "annotations": annotations},
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
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_guard(settings), _proxy(name, settings)],
        "volumes": [
            _configmap_volume("guard-config", names.GUARD_CONFIGMAP),
            _secret_volume("server-cert", names.server_cert_secret(name)),
            _configmap_volume("client-ca", names.client_ca_configmap(name)),
            _configmap_volume("core-ca", settings.core_ca_configmap),
            _secret_volume("core-client", settings.core_cert_secret),
            {"name": "guard-run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "proxy-data", "emptyDir": {"sizeLimit": "16Mi"}},
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


def _guard(settings: Settings) -> dict[str, Any]:
    health = {"port": names.GUARD_HEALTH_PORT_NAME, "scheme": "HTTP"}
    return {
        "name": "guard",
        "image": settings.guard_image,
        "command": guard.command(),
        "ports": [
            {"name": names.ETCD_PORT_NAME, "containerPort": names.ETCD_PORT, "protocol": "TCP"},
            {"name": names.GUARD_HEALTH_PORT_NAME, "containerPort": names.GUARD_HEALTH_PORT, "protocol": "TCP"},
        ],
        # Ready means a request went through the guard's upstream, the grpc-proxy, to the core etcd and back; the
        # grpc-proxy's own health check (a Get and a Watch) can take seconds, hence the timeout.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", **health},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {"httpGet": {"path": "/livez", **health}, "periodSeconds": 20, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": _container_security(),
        "volumeMounts": [
            _mount("guard-config", names.GUARD_CONFIG_DIR),
            _mount("server-cert", names.SERVER_CERT_DIR),
            _mount("client-ca", names.CLIENT_CA_DIR),
            {"name": "guard-run", "mountPath": names.GUARD_RUN_DIR},
        ],
    }


def _proxy(tenant: str, settings: Settings) -> dict[str, Any]:
    return {
        "name": "proxy",
        "image": settings.proxy_image,
        "command": ["/usr/local/bin/etcd", "grpc-proxy", "start"],
        "args": [
            f"--endpoints={','.join(settings.core_etcd_urls)}",
            f"--namespace={names.key_prefix(tenant, settings.key_prefix_root)}",
            f"--listen-addr=127.0.0.1:{names.PROXY_PORT}",
            f"--metrics-addr=http://127.0.0.1:{names.PROXY_METRICS_PORT}",
            "--data-dir=/var/lib/etcd-proxy",
            f"--cacert={names.CORE_CA_DIR}/{names.CORE_CA_KEY}",
            f"--cert={names.CORE_CLIENT_DIR}/{names.TLS_CRT}",
            f"--key={names.CORE_CLIENT_DIR}/{names.TLS_KEY}",
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": _container_security(),
        "volumeMounts": [
            _mount("core-ca", names.CORE_CA_DIR),
            _mount("core-client", names.CORE_CLIENT_DIR),
            {"name": "proxy-data", "mountPath": "/var/lib/etcd-proxy"},
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
