"""The previous data path's guard: nginx in front of etcd's grpc-proxy, with the allowlist it enforced by gRPC path.

The tenant proxy (tenant-proxy/) replaced both in the product; this stays as test support so that the data-path
benchmark can measure the pair it replaced ("before") next to the proxy. Pure: rendering reads no file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# The RPCs the guard let through, by full gRPC path (the tenant proxy's own table is tenant-proxy/internal/policy).
ALLOWED_RPCS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "/etcdserverpb.KV/Range": "reads",
        "/etcdserverpb.KV/Txn": "compare-and-swap writes",
        "/etcdserverpb.KV/Put": "plain writes",
        "/etcdserverpb.KV/DeleteRange": "plain deletes",
        "/etcdserverpb.Watch/Watch": "watches",
        "/etcdserverpb.Lease/LeaseGrant": "leases for objects with a TTL",
        "/etcdserverpb.Maintenance/Status": "version and size",
    }
)

DENIED_STATUS: Final = 7  # gRPC PERMISSION_DENIED
DENIED_MESSAGE: Final = "etcdstorage guard: this etcd RPC is not allowed for tenants"
UNAUTHENTICATED_STATUS: Final = 16  # gRPC UNAUTHENTICATED
UNAUTHENTICATED_MESSAGE: Final = "etcdstorage guard: a client certificate signed by the tenant's client CA is required"

# One kube-apiserver keeps its watches and requests on a handful of HTTP/2 connections; nginx's default of 128
# concurrent streams per connection is too few for a busy one.
MAX_CONCURRENT_STREAMS: Final = 1000
# nginx opens one upstream connection per stream (it does not multiplex towards the grpc-proxy), so a connection
# slot per stream on both sides, for a few client connections at the stream limit.
WORKER_CONNECTIONS: Final = 8192
# Idle limits for long-lived streams: a watch on a quiet prefix may carry nothing for hours. nginx's default of 60 s
# (grpc_read_timeout, client_body_timeout) would cut it and make the API server re-list.
STREAM_IDLE_TIMEOUT: Final = "1d"
# nginx closes a connection after this many requests (default 1000); gRPC clients then reconnect, so make it rare.
KEEPALIVE_REQUESTS: Final = 1_000_000_000
# grpc-proxy's health endpoint that goes through the proxy itself: a Get and a Watch via its own listener, so
# ready means the proxy answers and reaches the core etcd. `/metrics` on the same port is never exposed.
PROXY_HEALTH_PATH: Final = "/proxy/health"

_RPC_PATH = re.compile(r"^/[A-Za-z][A-Za-z0-9_.]*/[A-Za-z][A-Za-z0-9_]*$")
# Values pasted into the configuration: no whitespace, quotes, braces or semicolons that could change its syntax.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:@+-]+$")

# What `log_requests` adds after the refusal log: every request, when it ends (a watch stream when it is closed).
_REQUEST_LOG: Final = """
    log_format guard_request '$time_iso8601 guard request client=$remote_addr protocol=$server_protocol '
                             'method=$request_method rpc="$request_uri" status=$status '
                             'grpc_status=$upstream_trailer_grpc_status';
    access_log /dev/stdout guard_request;"""

_TEMPLATE: Final = """\
# The etcdstorage guard: mTLS on @LISTEN@, etcd RPCs from the allowlist to the grpc-proxy on @UPSTREAM@,
# PERMISSION_DENIED for every other RPC; plain-HTTP probes on @HEALTH_LISTEN@.
# Runs as non-root on a read-only root filesystem: everything nginx writes lives under @RUN_DIR@.
daemon off;
worker_processes @WORKER_PROCESSES@;
worker_rlimit_nofile @RLIMIT_NOFILE@;
pid @RUN_DIR@/nginx.pid;
error_log stderr warn;

events {
    worker_connections @WORKER_CONNECTIONS@;
}

http {
    server_tokens off;
    client_body_temp_path @RUN_DIR@/client_body;
    proxy_temp_path @RUN_DIR@/proxy;
    fastcgi_temp_path @RUN_DIR@/fastcgi;
    uwsgi_temp_path @RUN_DIR@/uwsgi;
    scgi_temp_path @RUN_DIR@/scgi;

    # The allowlist. A gRPC call is an HTTP/2 POST; its raw path is compared, exactly as it is forwarded, by
    # anchored case-sensitive regular expressions (nginx compares plain map strings ignoring case).
    map "$server_protocol $request_method $request_uri" $guard_allowed {
        default 0;
@ALLOWED_RPCS@
    }
    # Log what the guard refused (a denied RPC or a bad client certificate); allowed traffic is not logged.
    map "$guard_allowed:$ssl_client_verify" $guard_refused {
        "1:SUCCESS" 0;
        default 1;
    }
    log_format guard '$time_iso8601 guard refused client=$remote_addr subject="$ssl_client_s_dn" '
                     'verify=$ssl_client_verify protocol=$server_protocol method=$request_method '
                     'rpc="$request_uri" grpc_status=$sent_http_grpc_status';
    access_log /dev/stdout guard if=$guard_refused;@REQUEST_LOG@

    upstream etcd_grpc_proxy {
        server @UPSTREAM@;
        keepalive 64;
        keepalive_requests @KEEPALIVE_REQUESTS@;
    }

    server {
        listen @LISTEN@ ssl http2;

        ssl_certificate @SERVER_CERT@;
        ssl_certificate_key @SERVER_KEY@;
        ssl_client_certificate @CLIENT_CA@;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:guard_tls:10m;
        ssl_session_tickets off;

        http2_max_concurrent_streams @MAX_CONCURRENT_STREAMS@;
        keepalive_requests @KEEPALIVE_REQUESTS@;
        keepalive_timeout 1h;
        # A watch stream is one request whose body (client messages) and response may both pause for hours.
        client_body_timeout @STREAM_IDLE_TIMEOUT@;
        client_max_body_size 0;

        # Refusals are gRPC errors, not nginx's HTML pages: a missing, expired or foreign client certificate
        # (495, 496; 497 is plain HTTP on this port) and an RPC off the allowlist (403).
        error_page 495 496 497 = @unauthenticated;
        error_page 403 = @permission_denied;

        location / {
            if ($guard_allowed != 1) {
                return 403;
            }
            grpc_pass grpc://etcd_grpc_proxy;
            grpc_connect_timeout 5s;
            grpc_read_timeout @STREAM_IDLE_TIMEOUT@;
            grpc_send_timeout @STREAM_IDLE_TIMEOUT@;
            grpc_socket_keepalive on;
            grpc_next_upstream off;
        }

        # Trailers-only gRPC responses: HTTP 200 and the gRPC status in a single HEADERS frame, no body.
        location @permission_denied {
            add_header grpc-status @DENIED_STATUS@ always;
            add_header grpc-message "@DENIED_MESSAGE@" always;
            default_type application/grpc;
            return 200;
        }

        location @unauthenticated {
            add_header grpc-status @UNAUTHENTICATED_STATUS@ always;
            add_header grpc-message "@UNAUTHENTICATED_MESSAGE@" always;
            default_type application/grpc;
            return 200;
        }
    }

    server {
        listen @HEALTH_LISTEN@;
        access_log off;

        location = /livez {
            default_type text/plain;
            return 200 "ok\\n";
        }

        location = /readyz {
            proxy_pass http://@PROXY_HEALTH@@PROXY_HEALTH_PATH@;
            proxy_method GET;
            proxy_pass_request_body off;
            proxy_pass_request_headers off;
            proxy_connect_timeout 2s;
            proxy_read_timeout 5s;
        }

        location / {
            return 404;
        }
    }
}
"""


def render_nginx_conf(
    *,
    listen_port: int,
    health_port: int,
    proxy_port: int,
    proxy_health_port: int,
    server_cert: str,
    server_key: str,
    client_ca: str,
    run_dir: str,
    bind_address: str | None = None,
    worker_processes: int = 2,
    allowed_rpcs: Mapping[str, str] = ALLOWED_RPCS,
    log_requests: bool = False,
) -> str:
    """The guard's nginx.conf. `bind_address` None listens on every address, as in a pod; tests pass 127.0.0.1.

    `log_requests` (tests only, off in production) also logs every request, allowed or not, as a `guard request` line
    with its RPC path: how a test records which RPCs a real client uses.
    """
    for path, reason in allowed_rpcs.items():
        if not _RPC_PATH.match(path):
            raise ValueError(f"not a gRPC method path: {path!r}")
        if not reason.strip() or "\n" in reason:
            raise ValueError(f"the reason for {path} must be one non-empty line")
    values: dict[str, object] = {
        "LISTEN": _listen(bind_address, listen_port),
        "HEALTH_LISTEN": _listen(bind_address, health_port),
        "UPSTREAM": f"127.0.0.1:{_port(proxy_port)}",
        "PROXY_HEALTH": f"127.0.0.1:{_port(proxy_health_port)}",
        "SERVER_CERT": _value(server_cert),
        "SERVER_KEY": _value(server_key),
        "CLIENT_CA": _value(client_ca),
        "RUN_DIR": _value(run_dir.rstrip("/") or "/"),
        "WORKER_PROCESSES": worker_processes,
        "WORKER_CONNECTIONS": WORKER_CONNECTIONS,
        "RLIMIT_NOFILE": 2 * WORKER_CONNECTIONS + 64,
        "MAX_CONCURRENT_STREAMS": MAX_CONCURRENT_STREAMS,
        "KEEPALIVE_REQUESTS": KEEPALIVE_REQUESTS,
        "STREAM_IDLE_TIMEOUT": STREAM_IDLE_TIMEOUT,
        "DENIED_STATUS": DENIED_STATUS,
        "DENIED_MESSAGE": DENIED_MESSAGE,
        "UNAUTHENTICATED_STATUS": UNAUTHENTICATED_STATUS,
        "UNAUTHENTICATED_MESSAGE": UNAUTHENTICATED_MESSAGE,
        "PROXY_HEALTH_PATH": PROXY_HEALTH_PATH,
        "REQUEST_LOG": _REQUEST_LOG if log_requests else "",
        "ALLOWED_RPCS": "\n".join(
            f'        "{_allow_pattern(path)}" 1;  # {allowed_rpcs[path]}' for path in sorted(allowed_rpcs)
        ),
    }
    text = _TEMPLATE
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    leftover = re.search(r"@[A-Z_]+@", text)
    assert leftover is None, f"unfilled placeholder {leftover.group()} in the guard template"
    return text


def command(config_path: str) -> list[str]:
    """The guard container's command: `-e stderr` before the configuration is read, so that nginx never opens
    the image's compiled-in error log path (unwritable under a read-only root filesystem)."""
    return ["nginx", "-e", "stderr", "-c", config_path]


def _allow_pattern(path: str) -> str:
    """`path` (checked against _RPC_PATH: letters, digits, '_', '.', '/') as an exact, case-sensitive nginx regex."""
    return "~^HTTP/2\\.0 POST " + path.replace(".", "\\.") + "$"


def _listen(bind_address: str | None, port: int) -> str:
    return f"{_value(bind_address)}:{_port(port)}" if bind_address else str(_port(port))


def _port(port: int) -> int:
    if isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"not a TCP port: {port!r}")
    return port


def _value(value: str) -> str:
    if not _SAFE_VALUE.match(value):
        raise ValueError(f"unsafe in an nginx configuration (whitespace, quotes, braces or ';'): {value!r}")
    return value
