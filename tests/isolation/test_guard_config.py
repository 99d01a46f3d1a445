"""The guard's configuration as rendered by hooks/guard.py: the committed ConfigMap is the generated one, the
allowlist is the only way through, nginx writes only under its run directory, and real nginx accepts the file."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hooks import guard, names
from tests.support import certs
from tests.support.guard import nginx_binary

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "manifests" / "guard-configmap.yaml"


def test_the_committed_configmap_is_the_generated_one() -> None:
    """If this fails: python -m hooks.guard > manifests/guard-configmap.yaml"""
    assert COMMITTED.read_text() == guard.configmap_yaml()


def test_python_m_hooks_guard_prints_the_configmap_for_a_namespace() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "hooks.guard", "--namespace", "storage-system"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout

    configmap = yaml.safe_load(printed)
    assert configmap["metadata"]["namespace"] == "storage-system"
    assert configmap["metadata"]["name"] == names.GUARD_CONFIGMAP
    assert configmap["data"] == {names.GUARD_CONFIG_FILE: guard.render_nginx_conf()}


def test_the_configmap_carries_the_hash_of_the_configuration_it_holds() -> None:
    configmap = guard.configmap("any")

    digest = hashlib.sha256(configmap["data"][names.GUARD_CONFIG_FILE].encode()).hexdigest()
    assert configmap["metadata"]["annotations"][names.ANNOTATION_GUARD_CONFIG_HASH] == digest == guard.config_hash()


def test_exactly_the_allowlisted_rpcs_are_let_through() -> None:
    patterns = re.findall(r'^\s*"~\^HTTP/2\\\.0 POST (\S+)\$" 1;', guard.render_nginx_conf(), flags=re.MULTILINE)

    assert sorted(pattern.replace("\\.", ".") for pattern in patterns) == sorted(guard.ALLOWED_RPCS)


def test_every_allowlisted_rpc_has_a_reason() -> None:
    assert all(reason.strip() for reason in guard.ALLOWED_RPCS.values())


def test_a_changed_allowlist_changes_the_configuration() -> None:
    fewer = {path: reason for path, reason in guard.ALLOWED_RPCS.items() if path != "/etcdserverpb.KV/Put"}

    assert "/etcdserverpb.KV/Put" not in guard.render_nginx_conf(allowed_rpcs=fewer)


def test_everything_nginx_writes_is_under_its_run_directory() -> None:
    """A read-only root filesystem: the pid file and every temp path live in the emptyDir."""
    rendered = guard.render_nginx_conf(run_dir="/run/guard")
    written = re.findall(r"^\s*(pid|\w+_temp_path)\s+(\S+);", rendered, flags=re.MULTILINE)

    assert {directive for directive, _ in written} == {
        "pid",
        "client_body_temp_path",
        "proxy_temp_path",
        "fastcgi_temp_path",
        "uwsgi_temp_path",
        "scgi_temp_path",
    }
    assert all(path.startswith("/run/guard/") for _, path in written)
    assert re.search(r"^\s*user\s", rendered, flags=re.MULTILINE) is None  # no user switch: it never runs as root
    assert "error_log stderr" in rendered
    assert "access_log /dev/stdout" in rendered


def test_production_paths_and_ports_come_from_names() -> None:
    rendered = guard.render_nginx_conf()

    assert f"listen {names.ETCD_PORT} ssl http2;" in rendered
    assert f"listen {names.GUARD_HEALTH_PORT};" in rendered
    assert f"server 127.0.0.1:{names.PROXY_PORT};" in rendered
    assert f"proxy_pass http://127.0.0.1:{names.PROXY_METRICS_PORT}{guard.PROXY_HEALTH_PATH};" in rendered
    assert f"ssl_certificate {names.SERVER_CERT_DIR}/{names.TLS_CRT};" in rendered
    assert f"ssl_client_certificate {names.CLIENT_CA_DIR}/{names.CLIENT_CA_KEY};" in rendered
    assert guard.command() == ["nginx", "-e", "stderr", "-c", f"{names.GUARD_CONFIG_DIR}/{names.GUARD_CONFIG_FILE}"]


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("run_dir", "/tmp/a dir"),
        ("server_cert", "/certs/tls.crt; include /etc/passwd"),
        ("client_ca", '/ca/"bundle"'),
        ("bind_address", "127.0.0.1 ssl"),
        ("listen_port", 0),
        ("health_port", 65536),
    ],
    ids=[
        "a path with a space",
        "a path with a semicolon",
        "a path with quotes",
        "an address with a space",
        "port 0",
        "port 65536",
    ],
)
def test_values_that_would_change_the_configuration_syntax_are_refused(argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=r"unsafe|not a TCP port"):
        guard.render_nginx_conf(**{argument: value})  # type: ignore[arg-type]


def test_a_malformed_rpc_path_is_refused() -> None:
    with pytest.raises(ValueError, match="not a gRPC method path"):
        guard.render_nginx_conf(allowed_rpcs={"/etcdserverpb.KV/Range; return 200": "injection"})


def test_the_production_configuration_logs_refusals_and_nothing_else() -> None:
    logs = re.findall(r"^\s*access_log\s.*;$", guard.render_nginx_conf(), flags=re.MULTILINE)

    assert logs == ["    access_log /dev/stdout guard if=$guard_refused;", "        access_log off;"]


def test_logging_every_request_for_tests_adds_one_unconditional_log_and_changes_nothing_else() -> None:
    production = guard.render_nginx_conf(run_dir="/run/guard")
    recording = guard.render_nginx_conf(run_dir="/run/guard", log_requests=True)

    added = [line for line in recording.splitlines() if line not in production.splitlines()]
    assert [line for line in production.splitlines() if line not in recording.splitlines()] == []
    assert "    access_log /dev/stdout guard_request;" in added
    assert re.search(
        r"^\s*log_format guard_request .* guard request .*rpc=\"\$request_uri\"", recording, re.MULTILINE | re.DOTALL
    )
    assert all("if=" not in line for line in added)


@pytest.mark.real
@pytest.mark.parametrize("log_requests", [False, True], ids=["as in production", "logging every request"])
def test_real_nginx_accepts_the_configuration(tmp_path: Path, log_requests: bool) -> None:
    tenant = certs.issue_tenant(tmp_path / "pki", "alpha")
    (tmp_path / "run").mkdir()
    config = tmp_path / "nginx.conf"
    config.write_text(
        guard.render_nginx_conf(
            server_cert=str(tenant.guard.cert),
            server_key=str(tenant.guard.key),
            client_ca=str(tenant.guard.ca),
            run_dir=str(tmp_path / "run"),
            bind_address="127.0.0.1",
            log_requests=log_requests,
        )
    )

    checked = subprocess.run(
        [nginx_binary(), "-t", "-e", "stderr", "-c", str(config)], capture_output=True, text=True, check=False
    )

    assert checked.returncode == 0, checked.stderr
    # nginx 1.25.1 and later warn that "listen ... http2" is deprecated, yet still accept it; 1.22 has no "http2 on".
    warnings = [line for line in checked.stderr.splitlines() if "[warn]" in line and '"listen ... http2"' not in line]
    assert warnings == [], checked.stderr


def test_the_security_document_lists_exactly_the_allowlist() -> None:
    table = (REPO / "docs" / "security.md").read_text().split("## The allowlist", 1)[1].split("\n## ", 1)[0]

    assert sorted(re.findall(r"^\| `(/[^`]+)` \|", table, flags=re.MULTILINE)) == sorted(guard.ALLOWED_RPCS)
