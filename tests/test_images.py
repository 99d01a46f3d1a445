"""testbed/images.py: the OCI archives the e2e node imports are what the tenant proxy's Dockerfile would make (its
binary alone at the root, run as 65532) and the same bytes for the same inputs, so a cached archive never differs."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from testbed import images


def _archive(tmp_path: Path, name: str, content: bytes = b"\x7fELF a static binary") -> Path:
    binary = tmp_path / "bin" / "tenant-proxy"
    binary.parent.mkdir(exist_ok=True)
    binary.write_bytes(content)
    image = images.Image(name=name, binary=binary, user=images.PROXY_USER, ports=(2379, 8080))
    return images.write_archive(image, tmp_path / f"{hashlib.sha256(content).hexdigest()[:8]}.tar")


def _blob(tar: tarfile.TarFile, descriptor: dict[str, Any]) -> bytes:
    member = tar.extractfile(f"blobs/sha256/{descriptor['digest'].removeprefix('sha256:')}")
    assert member is not None
    data = member.read()
    assert hashlib.sha256(data).hexdigest() == descriptor["digest"].removeprefix("sha256:")
    assert len(data) == descriptor["size"]
    return data


def test_the_proxy_image_holds_the_binary_alone_run_as_65532_under_the_name_given(tmp_path: Path) -> None:
    with tarfile.open(_archive(tmp_path, images.PROXY_NAME)) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        [entry] = index["manifests"]
        manifest = json.loads(_blob(tar, entry))
        config = json.loads(_blob(tar, manifest["config"]))
        layer = _blob(tar, manifest["layers"][0])

    assert entry["annotations"]["io.containerd.image.name"] == images.PROXY_NAME
    assert entry["platform"] == {"architecture": images.architecture(), "os": "linux"}
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Entrypoint"] == ["/tenant-proxy"]
    (tmp_path / "layer.tar.gz").write_bytes(layer)
    with tarfile.open(tmp_path / "layer.tar.gz") as files:
        [member] = files.getmembers()
    assert (member.name, member.mode, member.uid, member.gid) == ("tenant-proxy", 0o755, 0, 0)


def test_the_same_binary_gives_the_same_archive_and_another_binary_another(tmp_path: Path) -> None:
    runs = [tmp_path / "first", tmp_path / "second", tmp_path / "other"]
    for run in runs:
        run.mkdir()
    first, second = (_archive(run, images.PROXY_NAME).read_bytes() for run in runs[:2])
    other = _archive(runs[2], images.PROXY_NAME, b"\x7fELF another build").read_bytes()
    assert first == second
    assert other != first


@pytest.mark.parametrize(
    ("reference", "stored"),
    [
        pytest.param("etcdstorage-proxy:0.1.0", "docker.io/library/etcdstorage-proxy:0.1.0", id="a bare name"),
        pytest.param("team/proxy:1", "docker.io/team/proxy:1", id="a Docker Hub repository"),
        pytest.param("registry.example:5000/team/proxy:1", "registry.example:5000/team/proxy:1", id="a registry"),
        pytest.param("localhost/e2e/pause:1", "localhost/e2e/pause:1", id="localhost"),
    ],
)
def test_references_are_qualified_as_containerd_stores_them(reference: str, stored: str) -> None:
    assert images.fully_qualified(reference) == stored


def test_the_sample_apiserver_image_runs_its_binary_as_65532_whatever_the_file_was_called(tmp_path: Path) -> None:
    built = tmp_path / "cache" / "sample-apiserver-v0.36.3-built"
    built.parent.mkdir()
    built.write_bytes(b"\x7fELF the sample-apiserver")
    archive = images.sample_apiserver_archive(tmp_path / "sample.tar", built)
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        [entry] = index["manifests"]
        manifest = json.loads(_blob(tar, entry))
        config = json.loads(_blob(tar, manifest["config"]))
        layer = _blob(tar, manifest["layers"][0])
    assert entry["annotations"]["io.containerd.image.name"] == images.SAMPLE_APISERVER_NAME
    assert config["config"]["Entrypoint"] == ["/sample-apiserver"]
    assert config["config"]["User"] == "65532:65532"
    (tmp_path / "layer.tar.gz").write_bytes(layer)
    with tarfile.open(tmp_path / "layer.tar.gz") as files:
        [member] = files.getmembers()
        content = files.extractfile(member)
        assert content is not None
        assert (member.name, content.read()) == ("sample-apiserver", b"\x7fELF the sample-apiserver")
