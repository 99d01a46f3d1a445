"""Tenant key prefixes and names: isolation by construction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etcdstorage import names, spec

tenant_names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,56}[a-z0-9])?", fullmatch=True).filter(
    lambda n: not spec.name_problems(n)
)


@pytest.mark.parametrize(
    ("tenant", "root", "prefix"),
    [
        ("wardle", "etcdstorage", "/etcdstorage/wardle/"),
        ("wardle", "/etcdstorage/", "/etcdstorage/wardle/"),
        ("wardle", "tenants/etcd", "/tenants/etcd/wardle/"),
        ("sample-apiserver", "/", "/sample-apiserver/"),  # the original's layout
    ],
)
def test_the_key_prefix_is_the_root_then_the_name_between_slashes(tenant: str, root: str, prefix: str) -> None:
    assert names.key_prefix(tenant, root) == prefix


@given(tenant_names, tenant_names)
def test_no_tenants_prefix_contains_anothers(a: str, b: str) -> None:
    if a != b:
        assert not names.key_prefix(a).startswith(names.key_prefix(b))
        assert not names.key_prefix(a, "/").startswith(names.key_prefix(b, "/"))


@given(tenant_names)
def test_with_the_original_layout_no_accepted_name_reaches_the_core_api_servers_keys(tenant: str) -> None:
    assert not "/registry/pods/default/x".startswith(names.key_prefix(tenant, "/"))


def test_the_serving_certificate_covers_every_name_a_client_may_dial() -> None:
    assert names.service_hosts("wardle", "kube-apiserver-storage", "cluster.local") == [
        "etcd-wardle",
        "etcd-wardle.kube-apiserver-storage",
        "etcd-wardle.kube-apiserver-storage.svc",
        "etcd-wardle.kube-apiserver-storage.svc.cluster.local",
    ]
    assert names.endpoint("wardle", "kube-apiserver-storage") == "https://etcd-wardle.kube-apiserver-storage.svc:2379"


def test_pods_carry_the_selector_labels_and_the_recommended_labels() -> None:
    labels = names.proxy_labels("wardle")
    assert names.selector_labels("wardle").items() <= labels.items()
    assert labels["apiserver"] == "wardle"
    assert labels["app.kubernetes.io/instance"] == "wardle"
