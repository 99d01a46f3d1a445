"""Container images for the e2e node, made here without a registry or Docker: OCI image archives (an OCI layout in a
tar: one gzip layer, a config, a manifest, an index) that `ctr -n k8s.io images import` loads under a given name.

Three images: the tenant proxy, from the same static build as tenant-proxy/Dockerfile (scripts/build-tenant-proxy) on
an empty base, run as 65532; the pod sandbox's pause, a static C program (testbed/pause.c); and the Kubernetes
sample-apiserver of the node's e2e scenario (testbed/binaries/build-sample-apiserver.sh), run as 65532. Archives are
byte-for-byte reproducible: fixed timestamps and owners, sorted entries.

    python -m testbed.images proxy build/images/proxy.tar [--name NAME] [--binary PATH]
    python -m testbed.images pause build/images/pause.tar [--name NAME]
    python -m testbed.images sample-apiserver build/images/sample-apiserver.tar --binary PATH [--name NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import platform
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from etcdstorage.settings import Settings

REPO: Final = Path(__file__).resolve().parents[1]
BUILD_TENANT_PROXY: Final = REPO / "scripts" / "build-tenant-proxy"
PAUSE_SOURCE: Final = Path(__file__).resolve().parent / "pause.c"
PAUSE_NAME: Final = "localhost/etcdstorage-e2e/pause:1"  # a stand-in of registry.k8s.io/pause, named as ours
SAMPLE_APISERVER_NAME: Final = "localhost/etcdstorage-e2e/sample-apiserver:1"  # built here from k8s.io/sample-apiserver
SAMPLE_APISERVER_USER: Final = "65532:65532"  # no root needed: it listens above 1024 and writes only its cert dir
PROXY_USER: Final = "65532:65532"  # as tenant-proxy/Dockerfile
PAUSE_USER: Final = "65535:65535"  # as registry.k8s.io/pause
EPOCH: Final = 0  # every timestamp in an archive, so the same inputs give the same bytes
MEDIA_INDEX: Final = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
# Go's names for the machine, which OCI platforms use.
_ARCHITECTURES: Final = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def fully_qualified(reference: str) -> str:
    """An image reference as containerd stores it (Docker's normalisation): a first component that is not a host
    (no dot, no port, not localhost) means Docker Hub, and a single component its `library/`."""
    host, _, path = reference.partition("/")
    if path and ("." in host or ":" in host or host == "localhost"):
        return reference
    return f"docker.io/{reference}" if path else f"docker.io/library/{reference}"


# What the hook's default PROXY_IMAGE means to containerd, so its pods run the image imported here.
PROXY_NAME: Final = fully_qualified(Settings().proxy_image)


class ImageError(RuntimeError):
    """An image could not be made; the message says which input or tool failed."""


@dataclasses.dataclass(frozen=True)
class Image:
    """What goes into an image: one binary at `/<entrypoint name>`, run as `user`."""

    name: str  # the reference containerd stores it under, e.g. docker.io/library/etcdstorage-proxy:0.1.0
    binary: Path
    user: str
    ports: Sequence[int] = ()


def architecture() -> str:
    """This machine's architecture as OCI (and Go) names it."""
    machine = platform.machine()
    if machine not in _ARCHITECTURES:
        raise ImageError(f"no OCI architecture known for machine {machine!r}")
    return _ARCHITECTURES[machine]


# --- The archive ----------------------------------------------------------------------------------------------------


def _tar_info(name: str, *, size: int = 0, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _layer(binary: Path) -> bytes:
    """The one layer: the binary at the root, owned by root, executable by anyone (the image's user is not root)."""
    data = binary.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_info(binary.name, size=len(data), mode=0o755), io.BytesIO(data))
    return buffer.getvalue()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=EPOCH)


def _json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data), **extra}


def _config(image: Image, layer: bytes, arch: str) -> dict[str, Any]:
    config: dict[str, Any] = {"Entrypoint": [f"/{image.binary.name}"], "User": image.user}
    if image.ports:
        config["ExposedPorts"] = {f"{port}/tcp": {} for port in image.ports}
    return {
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created_by": f"testbed/images.py: /{image.binary.name}"}],
    }


def write_archive(image: Image, path: Path) -> Path:
    """Write `image` as an OCI image archive at `path` (atomically: a temporary file beside it, then a rename).

    The index names the image twice: `io.containerd.image.name` (the whole reference, which `ctr images import`
    stores it under) and `org.opencontainers.image.ref.name` (the tag, as the OCI layout defines it).
    """
    if not image.binary.is_file():
        raise ImageError(f"no binary at {image.binary} for image {image.name}")
    arch = architecture()
    layer = _layer(image.binary)
    compressed = _gzip(layer)
    config = _json(_config(image, layer, arch))
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": _descriptor(MEDIA_CONFIG, config),
            "layers": [_descriptor(MEDIA_LAYER, compressed)],
        }
    )
    annotations = {
        "io.containerd.image.name": image.name,
        "org.opencontainers.image.ref.name": image.name.rsplit(":", 1)[-1],
    }
    platform_ = {"architecture": arch, "os": "linux"}
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [_descriptor(MEDIA_MANIFEST, manifest, annotations=annotations, platform=platform_)],
        }
    )
    blobs = {_digest(blob): blob for blob in (compressed, config, manifest)}
    files = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        **{f"blobs/sha256/{digest.removeprefix('sha256:')}": blob for digest, blob in blobs.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(_tar_info(directory, mode=0o755, kind=tarfile.DIRTYPE))
        for name, data in sorted(files.items()):
            tar.addfile(_tar_info(name, size=len(data), mode=0o644), io.BytesIO(data))
    partial.replace(path)
    return path


# --- The images -------------------------------------------------------------------------------------------------


def build_tenant_proxy(output: Path) -> Path:
    """The tenant proxy binary, built as its image's Dockerfile builds it (static, stripped)."""
    result = subprocess.run(
        ["bash", str(BUILD_TENANT_PROXY), str(output)], capture_output=True, text=True, check=False, timeout=900
    )
    if result.returncode != 0:
        raise ImageError(f"{BUILD_TENANT_PROXY} failed: {result.stderr.strip()}")
    return output


def build_pause(output: Path) -> Path:
    """The pause binary from testbed/pause.c: static, so the image needs no libc."""
    argv = ["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o", str(output), str(PAUSE_SOURCE)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError:
        raise ImageError("gcc is not on PATH: the pause image is a static C program (Debian: gcc)") from None
    if result.returncode != 0:
        raise ImageError(f"gcc could not build {PAUSE_SOURCE} (static glibc: Debian's libc6-dev):\n{result.stderr}")
    return output


def proxy_archive(path: Path, *, name: str = PROXY_NAME, binary: Path | None = None) -> Path:
    """The tenant proxy's image as an OCI archive; `binary` is an already built tenant-proxy, else it is built."""
    with tempfile.TemporaryDirectory(prefix="etcdstorage-image-") as scratch:
        if binary is None:
            binary = build_tenant_proxy(Path(scratch) / "tenant-proxy")
        elif binary.name != "tenant-proxy":
            binary = _renamed(binary, Path(scratch) / "tenant-proxy")
        return write_archive(Image(name=name, binary=binary, user=PROXY_USER, ports=(2379, 8080)), path)


def pause_archive(path: Path, *, name: str = PAUSE_NAME) -> Path:
    """The pause image as an OCI archive, its binary compiled on the way."""
    with tempfile.TemporaryDirectory(prefix="etcdstorage-image-") as scratch:
        binary = build_pause(Path(scratch) / "pause")
        return write_archive(Image(name=name, binary=binary, user=PAUSE_USER), path)


def sample_apiserver_archive(path: Path, binary: Path, *, name: str = SAMPLE_APISERVER_NAME) -> Path:
    """The sample-apiserver's image as an OCI archive, from a static binary (build-sample-apiserver.sh's)."""
    with tempfile.TemporaryDirectory(prefix="etcdstorage-image-") as scratch:
        if binary.name != "sample-apiserver":
            binary = _renamed(binary, Path(scratch) / "sample-apiserver")
        return write_archive(Image(name=name, binary=binary, user=SAMPLE_APISERVER_USER, ports=(8443,)), path)


def _renamed(binary: Path, target: Path) -> Path:
    """A copy of `binary` named `target` (the entrypoint is named after the file)."""
    target.write_bytes(binary.read_bytes())
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", choices=["proxy", "pause", "sample-apiserver"])
    parser.add_argument("output", type=Path, help="the OCI archive to write")
    parser.add_argument(
        "--name", help=f"the image reference (default: {PROXY_NAME}, {PAUSE_NAME} or {SAMPLE_APISERVER_NAME})"
    )
    parser.add_argument(
        "--binary", type=Path, help="proxy: a tenant-proxy already built; sample-apiserver: its binary (required)"
    )
    args = parser.parse_args(argv)
    try:
        if args.image == "proxy":
            path = proxy_archive(args.output, name=args.name or PROXY_NAME, binary=args.binary)
        elif args.image == "sample-apiserver":
            if args.binary is None:
                parser.error("sample-apiserver needs --binary (testbed/binaries/build-sample-apiserver.sh prints it)")
            path = sample_apiserver_archive(args.output, args.binary, name=args.name or SAMPLE_APISERVER_NAME)
        else:
            if args.binary is not None:
                parser.error("--binary is not for the pause image")
            path = pause_archive(args.output, name=args.name or PAUSE_NAME)
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
