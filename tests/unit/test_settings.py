"""Operator settings are checked as strictly as the spec: a bad value stops the process at start-up, naming the
variable, before any tenant is served with it."""

from __future__ import annotations

import pytest

from etcdstorage import names, settings


def test_unset_variables_keep_the_defaults() -> None:
    assert settings.from_env({}) == settings.Settings()


@pytest.mark.parametrize(
    ("root", "prefix_of_secrets"),
    [
        pytest.param("etcdstorage", "/etcdstorage/secrets/", id="the default root"),
        pytest.param("/", "/secrets/", id="the original's layout"),
        pytest.param("/storage/tenants/", "/storage/tenants/secrets/", id="two segments, slashes trimmed"),
    ],
)
def test_a_key_prefix_root_of_dns_labels_is_accepted(root: str, prefix_of_secrets: str) -> None:
    parsed = settings.from_env({"ETCDSTORAGE_KEY_PREFIX_ROOT": root})
    assert names.key_prefix("secrets", parsed.key_prefix_root) == prefix_of_secrets


@pytest.mark.parametrize(
    ("root", "problem"),
    [
        pytest.param("registry", "/registry/", id="registry: a tenant named secrets would get every Secret"),
        pytest.param("/registry/x", "/registry/", id="anything under registry"),
        pytest.param("calico", "/calico/", id="another system's top-level key"),
        pytest.param("a b;c", "not a DNS label", id="spaces and punctuation"),
        pytest.param("Etcd", "not a DNS label", id="upper case"),
        pytest.param("a//b/../c", "not a DNS label", id="dot segments"),
    ],
)
def test_a_key_prefix_root_that_could_reach_another_systems_keys_stops_the_process(root: str, problem: str) -> None:
    with pytest.raises(settings.SettingsError) as raised:
        settings.from_env({"ETCDSTORAGE_KEY_PREFIX_ROOT": root})
    assert str(raised.value).startswith(f"ETCDSTORAGE_KEY_PREFIX_ROOT={root!r}: ")
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CORE_ETCD_URLS", "etcd:2379"),
        ("CORE_ETCD_URLS", "https://"),
        ("CORE_ETCD_URLS", "https://etcd:2379/v3"),
        ("CORE_ETCD_URLS", "https://etcd:99999"),
        ("CORE_ETCD_URLS", "https://user@etcd:2379"),
        ("CORE_ETCD_URLS", "https://etcd :2379"),
        ("PROXY_IMAGE", "etcdstorage-proxy 0.1.0"),
        ("PROXY_IMAGE", "https://registry.example/proxy"),
        ("PROXY_IMAGE", ""),
        ("CLUSTER_DOMAIN", "cluster local"),
        ("CLUSTER_DOMAIN", "Cluster.Local"),
        ("CORE_CA_CONFIGMAP", "etcd_ca"),
        ("CORE_CERT_SECRET", ""),
        ("NAMESPACE", "kube.system"),
        ("REPLICAS", "0"),
        ("CA_PROPAGATION_DELAY", "ten minutes"),
        ("TENANT_PROXY_BINARY", "tenant-proxy; rm -rf /"),
        ("TENANT_PROXY_BINARY", "bin/tenant-proxy"),
        ("TENANT_PROXY_BINARY", ""),
    ],
)
def test_a_bad_value_stops_the_process_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(settings.SettingsError, match=f"^ETCDSTORAGE_{variable}="):
        settings.from_env({f"ETCDSTORAGE_{variable}": value})


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("CORE_ETCD_URLS", "https://10.0.0.1:2379, https://[fd00::1]:2379", "core_etcd_urls",
         ("https://10.0.0.1:2379", "https://[fd00::1]:2379")),
        ("PROXY_IMAGE", "registry.example:5000/team/etcdstorage-proxy:0.1.0", "proxy_image",
         "registry.example:5000/team/etcdstorage-proxy:0.1.0"),
        ("PROXY_IMAGE", "etcdstorage-proxy@sha256:" + "a" * 64, "proxy_image", "etcdstorage-proxy@sha256:" + "a" * 64),
        ("CLUSTER_DOMAIN", "cluster.local", "cluster_domain", "cluster.local"),
        ("CORE_CERT_SECRET", "etcd-healthcheck-client", "core_cert_secret", "etcd-healthcheck-client"),
        ("TENANT_PROXY_BINARY", "/usr/local/bin/tenant-proxy", "tenant_proxy_binary", "/usr/local/bin/tenant-proxy"),
    ],
)  # fmt: skip
def test_good_values_are_read_as_given(variable: str, value: str, field: str, expected: object) -> None:
    assert getattr(settings.from_env({f"ETCDSTORAGE_{variable}": value}), field) == expected
