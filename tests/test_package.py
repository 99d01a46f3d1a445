"""The shipped Python is one package that builds: `pip wheel .`, its console scripts run outside the repository, and
the image and the manifests use exactly those scripts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from etcdstorage.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"hooks", "etcdstorage", "certrotation"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel .` of a copy of exactly what the Dockerfile copies (so nothing else can leak into the package)."""
    source = tmp_path_factory.mktemp("source")
    for name in ["pyproject.toml", "README.md", "requirements.txt"]:
        shutil.copy(ROOT / name, source / name)
    for package in SHIPPED:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, timeout=120, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    [built] = out.glob("etcdstorage-*.whl")
    return built


def scripts() -> dict[str, str]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def test_the_wheel_ships_the_webhook_the_job_and_their_domain_and_nothing_of_the_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == SHIPPED
    assert "certrotation/__main__.py" in names
    assert "hooks/__main__.py" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    required = {line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")}
    pinned = {line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"}
    assert required == pinned


def test_the_installed_console_scripts_run_without_the_repository(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, timeout=120,
    )  # fmt: skip
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(target)}  # no repository on the path, no KUBECONFIG

    hook = subprocess.run(
        [str(target / "bin" / "etcdstorage-hook"), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert hook.returncode == 0, hook.stderr
    assert "--port" in hook.stdout

    # The job, installed, really starts: with no credentials it says so and exits 2 ("nothing could run").
    job = subprocess.run(
        [str(target / "bin" / "etcdstorage-cert-rotation")],
        cwd=elsewhere, env={**env, "KUBERNETES_SERVICE_HOST": ""}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert job.returncode == 2, job.stderr
    assert "no Kubernetes credentials" in job.stderr
    assert str(target) in subprocess.run(
        [sys.executable, "-c", "import certrotation; print(certrotation.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_the_console_scripts_are_the_modules_the_tests_run() -> None:
    # tests run `python -m hooks` and `python -m certrotation`; the image runs the scripts. Same functions.
    assert scripts() == {
        "etcdstorage-hook": "hooks.__main__:main",
        "etcdstorage-cert-rotation": "certrotation.job:main",
    }
    assert "from certrotation.job import main" in (ROOT / "certrotation" / "__main__.py").read_text()


def test_the_manifests_and_the_image_run_the_console_scripts_of_the_installed_package() -> None:
    commands = []
    for path in (ROOT / "manifests").glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            text = yaml.safe_dump(document)
            commands += re.findall(r"command:\n\s*- (\S+)", text)
    assert sorted(commands) == sorted(scripts())
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install .*--no-deps .*\.$", dockerfile, re.MULTILINE)
    for package in SHIPPED:
        assert f"COPY {package}/ {package}/" in dockerfile
    [cmd] = re.findall(r'^CMD \["([^"]+)"', dockerfile, re.MULTILINE)
    assert cmd in scripts()
    # The job runs `tenant-proxy purge-prefix` (settings' default program name) from PATH in the same image.
    assert f"COPY --from=proxy /out/tenant-proxy /usr/local/bin/{Settings().tenant_proxy_binary}" in dockerfile
