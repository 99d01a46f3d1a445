"""`tenant-proxy purge-prefix`, which the cert-rotation job runs for an EtcdStorage deleted with deletionPolicy
Delete, against a real core etcd of each version: it deletes exactly one tenant's keys, in bounded batches, counts
what is left, and refuses before connecting any root or name that could reach beyond one tenant."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from etcdstorage import names
from testbed import proxy, stack

pytestmark = pytest.mark.real

NEIGHBOURS = [
    b"/etcdstorage/gamma",  # the name without the separator
    b"/etcdstorage/gamma-2/k",  # a tenant whose name starts alike
    b"/etcdstorage/gammb/k",
    b"/etcdstorage/",
    b"/registry/secrets/kube-system/token",  # the core API server's
    b"/gamma/k",  # the tenant's name under the root "/"
]


def purge(core: stack.Core, *args: str) -> subprocess.CompletedProcess[str]:
    client = core.pki.proxy_client  # the client certificate the job reads from etcd-coreserving-cert
    argv = [proxy.binary(), "purge-prefix", f"--endpoints={core.etcd.url}", f"--core-ca-file={client.ca}",
            f"--core-cert-file={client.cert}", f"--core-key-file={client.key}", *args]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def result(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, run.stderr
    parsed: dict[str, Any] = json.loads(run.stdout)
    return parsed


def keys(core: stack.Core, prefix: bytes) -> list[bytes]:
    with core.client() as admin:
        return [kv.key for kv in admin.range(prefix, prefix[:-1] + bytes([prefix[-1] + 1])).kvs]


def test_purge_deletes_exactly_the_tenants_keys_in_batches(core: stack.Core) -> None:
    prefix = names.key_prefix("gamma").encode()
    with core.client() as admin:
        for index in range(53):
            admin.put(prefix + f"registry/widgets/w{index:03d}".encode(), b"x" * 100)
        admin.put(prefix + b"\xff\xfe", b"binary key")  # the last possible keys of the prefix go too
        for key in NEIGHBOURS:
            admin.put(key, b"not the tenant's")

    assert result(purge(core, "--name=gamma", "--count-only")) == {"prefix": prefix.decode(), "deleted": 0,
                                                                   "remaining": 54}  # fmt: skip
    assert len(keys(core, prefix)) == 54  # counting deleted nothing

    assert result(purge(core, "--name=gamma", "--batch=10")) == {"prefix": prefix.decode(), "deleted": 54,
                                                                 "remaining": 0}  # fmt: skip
    assert keys(core, prefix) == []
    with core.client() as admin:
        for key in NEIGHBOURS:
            assert admin.get(key) == b"not the tenant's", key

    # Again: nothing left, nothing to do, still an answer.
    assert result(purge(core, "--name=gamma"))["remaining"] == 0


def test_purge_under_the_root_slash_is_the_original_layout(core: stack.Core) -> None:
    with core.client() as admin:
        admin.put(b"/delta/k", b"x")
        admin.put(b"/delta-x/k", b"neighbour")
    assert result(purge(core, "--root=/", "--name=delta")) == {"prefix": "/delta/", "deleted": 1, "remaining": 0}
    with core.client() as admin:
        assert admin.get(b"/delta-x/k") == b"neighbour"


@pytest.mark.parametrize("reserved", sorted(names.RESERVED_NAMES))
def test_every_reserved_name_is_refused_as_root_and_as_a_name_under_slash(core: stack.Core, reserved: str) -> None:
    # The Go list equals etcdstorage.names.RESERVED_NAMES: each is refused before anything is sent.
    for args in ([f"--root=/{reserved}/", "--name=secrets"], ["--root=/", f"--name={reserved}"]):
        run = purge(core, *args)
        assert run.returncode == 2, run
        assert "another system's keys" in run.stderr
        assert run.stdout == ""


@pytest.mark.parametrize("name", ["", "a/b", "A", "..", "-a", "a" * 64])
def test_a_name_that_is_not_one_dns_label_is_refused(core: stack.Core, name: str) -> None:
    run = purge(core, f"--name={name}")
    assert run.returncode == 2
    assert "not a DNS label" in run.stderr


def test_an_unreachable_core_is_an_error_with_what_was_done(core: stack.Core) -> None:
    client = core.pki.proxy_client
    run = subprocess.run(
        [proxy.binary(), "purge-prefix", "--endpoints=https://127.0.0.1:1", f"--core-ca-file={client.ca}",
         f"--core-cert-file={client.cert}", f"--core-key-file={client.key}", "--name=gamma", "--timeout=3s"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    assert json.loads(run.stdout) == {"prefix": "/etcdstorage/gamma/", "deleted": 0, "remaining": None}
    assert "list keys under /etcdstorage/gamma/" in run.stderr
