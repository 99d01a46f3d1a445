"""deletionPolicy against a real kube-apiserver and its own etcd as the core etcd: an EtcdStorage deleted with Delete
waits, its proxies gone, until the cert-rotation job (`python -m certrotation` under the RBAC of manifests/, running
the tenant proxy's purge-prefix) has deleted every key under its prefix, and the hook's finalize answer, fed the live
objects, then lets it go. The core API server's own keys stay. Retain lets the object go at once and keeps the keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from etcdstorage import deletion, names
from testbed import harness, proxy
from tests.e2e.install import C, failures_of, get, run_job, tenant_from_example
from tests.e2e.test_cert_rotation_job import events_of
from tests.e2e.test_children import call, hook, sync_request

__all__ = ["hook"]  # the module's hook server, shared with test_children
FINALIZER = "metacontroller.io/compositecontroller-etcdstorage-controller"  # what Metacontroller puts on parents
Body = dict[str, Any]


def settings(plane: harness.ControlPlane) -> dict[str, str]:
    """The job pointed at the harness's etcd as the core etcd, with the tenant proxy binary of this tree."""
    return {"ETCDSTORAGE_CORE_ETCD_URLS": plane.core.etcd.url, "ETCDSTORAGE_TENANT_PROXY_BINARY": proxy.binary()}


@pytest.fixture
def going(
    installed: harness.ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, bytes]]:
    """An EtcdStorage with the given deletionPolicy, its certificates issued, keys under its prefix, then deleted
    while Metacontroller's finalizer holds it. Its name and prefix."""
    name, _ = tenant_from_example(installed, "deleting", {"deletionPolicy": request.param})
    prefix = names.key_prefix(name).encode()
    try:
        assert failures_of(run_job(installed, tmp_path, settings(installed)).stderr, name) == []
        installed.kubectl("patch", "etcdstorage", name, "--type=merge",
                          f'--patch={{"metadata":{{"finalizers":["{FINALIZER}"]}}}}')  # fmt: skip
        with installed.core.client() as core:
            for index in range(30):
                core.put(prefix + f"registry/example.com/widgets/w{index}".encode(), b"widget")
        installed.kubectl("delete", "etcdstorage", name, "--wait=false")
        yield name, prefix
    finally:
        installed.kubectl("patch", "etcdstorage", name, "--type=merge", '--patch={"metadata":{"finalizers":null}}')
        installed.kubectl("delete", "etcdstorage", name, "--ignore-not-found")
        with installed.core.client() as core:  # what a test kept (Retain, a failed deletion) goes: others scan the core
            core.delete_range(prefix, prefix[:-1] + b"0")


def finalize(plane: harness.ControlPlane, hook: httpx.Client, name: str) -> Body:
    parent = get(plane, "etcdstorage", "", name)
    assert parent["metadata"]["deletionTimestamp"]
    return call(hook, "/sync", {**sync_request(plane, hook, parent, []), "finalizing": True})


def count(plane: harness.ControlPlane, prefix: bytes) -> int:
    with plane.core.client() as core:
        return len(core.range(prefix, prefix[:-1] + b"0").kvs)  # "/" + 1 is "0"


@pytest.mark.parametrize("going", ["Delete"], indirect=True)
def test_delete_holds_the_object_until_the_job_deleted_every_key(
    installed: harness.ControlPlane, hook: httpx.Client, going: tuple[str, bytes], tmp_path: Path
) -> None:
    name, prefix = going
    waiting = finalize(installed, hook, name)
    assert waiting["finalized"] is False
    assert waiting["children"] == []  # the proxies go: the tenant writes nothing more
    [ready] = waiting["status"]["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "DeletingKeys")
    assert count(installed, prefix) == 30

    ran = run_job(installed, tmp_path, settings(installed))
    assert failures_of(ran.stderr, name) == [], ran.stderr
    assert f'msg="tenant going: keys deleted" tenant={name}' in ran.stderr
    assert count(installed, prefix) == 0
    report = get(installed, "configmap", C, names.client_ca_configmap(name))["metadata"]["annotations"]
    attempt = deletion.from_annotations(report)
    assert attempt is not None
    assert (attempt.deleted, attempt.remaining, attempt.problem) == (30, 0, "")
    assert attempt.uid == get(installed, "etcdstorage", "", name)["metadata"]["uid"]

    told = {event["reason"]: event for event in events_of(installed, name)}
    assert told["KeysDeleted"]["message"] == f"deleted 30 keys under {prefix.decode()}: none is left"
    assert finalize(installed, hook, name)["finalized"] is True
    # The core API server's keys are all there: it still lists what it stored.
    assert installed.kubectl("get", "namespace", C, "--output=name").stdout.strip() == f"namespace/{C}"


@pytest.mark.parametrize("going", ["Delete"], indirect=True)
def test_a_core_etcd_out_of_reach_is_a_reason_never_a_silent_wait(
    installed: harness.ControlPlane, hook: httpx.Client, going: tuple[str, bytes], tmp_path: Path
) -> None:
    name, prefix = going
    unreachable = {**settings(installed), "ETCDSTORAGE_CORE_ETCD_URLS": "https://127.0.0.1:1"}
    ran = run_job(installed, tmp_path, unreachable)
    assert ran.returncode == 1
    [line] = failures_of(ran.stderr, name)
    assert "keys not all deleted yet" in line
    answer = finalize(installed, hook, name)
    assert answer["finalized"] is False
    [ready] = answer["status"]["conditions"]
    assert ready["reason"] == "KeyDeletionFailed"
    assert f"deleting the keys under {prefix.decode()} failed" in ready["message"]
    assert "tenant-proxy purge-prefix: list keys under" in ready["message"]  # what the deletion met, as it said it
    assert "set spec.deletionPolicy to Retain" in ready["message"]
    assert count(installed, prefix) == 30
    [failed] = [event for event in events_of(installed, name) if event["reason"] == "KeyDeletionFailed"]
    assert failed["type"] == "Warning"


@pytest.mark.parametrize("going", ["Retain"], indirect=True)
def test_retain_lets_the_object_go_at_once_and_keeps_the_keys(
    installed: harness.ControlPlane, hook: httpx.Client, going: tuple[str, bytes], tmp_path: Path
) -> None:
    name, prefix = going
    assert finalize(installed, hook, name)["finalized"] is True
    ran = run_job(installed, tmp_path, settings(installed))
    assert failures_of(ran.stderr, name) == []
    assert count(installed, prefix) == 30
