"""The job's manifests say what the job needs and does: its RBAC grants exactly the verbs it uses, the CronJob runs
it as the design says, and the example an API server operator copies works with the job as it is."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from pathlib import Path

import pytest

from certrotation import job, kube
from etcdstorage import names
from tests.job.world import T0, TENANT, C, World, connects, new_world
from tests.support.manifests import MANIFESTS, one
from tests.support.manifests import load as documents


def test_the_cronjob_runs_the_job_every_minute_one_at_a_time_as_the_hooks_image() -> None:
    cronjob = one(MANIFESTS / "cert-rotation-cronjob.yaml", "CronJob")
    assert cronjob["metadata"]["namespace"] == names.DEFAULT_CONTROLLER_NAMESPACE
    spec = cronjob["spec"]
    assert spec["schedule"] == "* * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    job_spec = spec["jobTemplate"]["spec"]
    assert job_spec["backoffLimit"] == 0
    assert 60 <= job_spec["activeDeadlineSeconds"] <= 600
    pod = job_spec["template"]["spec"]
    assert pod["serviceAccountName"] == job.SERVICE_ACCOUNT
    [container] = pod["containers"]
    assert container["command"] == ["etcdstorage-cert-rotation"]  # tests/test_package.py: that script runs job.main
    hook_images = re.findall(r"^\s+image: (\S+)$", (MANIFESTS / "hook.yaml").read_text(), re.MULTILINE)
    assert hook_images == [container["image"]]  # one image for the hook and the job
    assert container["envFrom"] == [{"configMapRef": {"name": "etcdstorage-settings"}}]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


def test_the_job_pod_passes_the_restricted_pod_security_profile_of_its_namespace() -> None:
    pod = one(MANIFESTS / "cert-rotation-cronjob.yaml", "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = pod["containers"][0]["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_the_job_is_granted_exactly_the_verbs_it_uses(tmp_path: Path) -> None:
    rbac = MANIFESTS / "cert-rotation-rbac.yaml"
    account = one(rbac, "ServiceAccount")
    assert account["metadata"] == {
        **account["metadata"],
        "name": job.SERVICE_ACCOUNT,
        "namespace": names.DEFAULT_CONTROLLER_NAMESPACE,
    }
    [cluster_rule, events_rule] = one(rbac, "ClusterRole")["rules"]
    assert (cluster_rule["apiGroups"], cluster_rule["resources"]) == ([names.GROUP], [names.PLURAL])
    assert (events_rule["apiGroups"], events_rule["resources"]) == ([""], ["events"])
    [rule] = one(rbac, "Role")["rules"]
    assert sorted(rule["resources"]) == ["configmaps", "secrets"]

    world = new_world()
    world.run(T0)  # a first run lists, creates and updates
    # A reissue whose write conflicts: get is how the job reads an object again.
    world.settings = dataclasses.replace(world.settings, cluster_domain="corp.example")
    world.api.interfere[(kube.Kind.SECRET, C, names.server_cert_secret(TENANT))] = 1
    assert world.run(T0 + timedelta(minutes=1)) == job.EXIT_OK
    used = {read.verb for read in world.api.reads if read.namespace == C}
    used |= {write.verb for write in world.api.writes if write.namespace == C}
    assert set(rule["verbs"]) == used == {"get", "list", "create", "update"}
    assert set(cluster_rule["verbs"]) == world.api.etcdstorage_verbs == {"list"}
    # Events: told once (create), and told again by the next run (read and counted).
    failing = new_world()
    del failing.api.objects[(kube.Kind.SECRET, "k8s-sample-apiserver", "etcd-client-cert")]
    failing.run(T0)
    failing.run(T0 + timedelta(minutes=1))
    event_verbs = {read.verb for read in failing.api.reads if read.kind is kube.Kind.EVENT}
    event_verbs |= {write.verb for write in failing.api.writes if write.kind is kube.Kind.EVENT}
    assert set(events_rule["verbs"]) == event_verbs == {"create", "get", "update"}
    assert {read.verb for read in failing.api.reads if read.kind is kube.Kind.EVENT} == {"get"}  # never a list
    for binding in (one(rbac, "RoleBinding"), one(rbac, "ClusterRoleBinding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": job.SERVICE_ACCOUNT, "namespace": names.DEFAULT_CONTROLLER_NAMESPACE}
        ]


@pytest.fixture
def example_world() -> World:
    """The original example EtcdStorage and what its operator applies from examples/apiserver-rbac.yaml, with the
    job allowed in that namespace only what the example Role grants."""
    world = new_world()
    world.api.etcdstorages.clear()
    world.api.objects = {
        key: value for key, value in world.api.objects.items() if key[1] == names.DEFAULT_CONTROLLER_NAMESPACE
    }
    world.api.add_etcdstorage(one(MANIFESTS / "examples" / "etcdstorage.yaml", "EtcdStorage"))
    example = documents(MANIFESTS / "examples" / "apiserver-rbac.yaml")
    for document in example:
        if document["kind"] in ("ConfigMap", "Secret"):
            metadata = document["metadata"]
            world.api.put(kube.Kind(document["kind"]), metadata["namespace"], metadata["name"], document)
    role = next(document for document in example if document["kind"] == "Role")
    namespace = role["metadata"]["namespace"]
    granted = {
        (verb, resource, name)
        for rule in role["rules"]
        for verb in rule["verbs"]
        for resource in rule["resources"]
        for name in rule["resourceNames"]
    }
    for verb in ("get", "create", "update"):
        for kind, resource in ((kube.Kind.CONFIGMAP, "configmaps"), (kube.Kind.SECRET, "secrets")):
            names_granted = {name for (v, r, name) in granted if v == verb and r == resource}
            world.api.forbid_except(verb, kind, namespace, names_granted)
    return world


def test_the_example_an_api_server_operator_applies_is_enough_for_the_job(example_world: World) -> None:
    binding = one(MANIFESTS / "examples" / "apiserver-rbac.yaml", "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": job.SERVICE_ACCOUNT, "namespace": names.DEFAULT_CONTROLLER_NAMESPACE}
    ]
    assert example_world.run(T0) == job.EXIT_OK
    assert connects(example_world.proxy(), example_world.apiserver(), T0) is None
