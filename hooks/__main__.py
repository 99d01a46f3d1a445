"""`python -m hooks` (installed as `etcdstorage-hook`): serve the sync and customize hooks with uvicorn (settings from
ETCDSTORAGE_* variables)."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys

import uvicorn

from etcdstorage import settings as settings_module
from hooks.app import create_app

log = logging.getLogger("etcdstorage.hook")

ANY: tuple[str, ...] = ("::", "[::]")  # every address, IPv6 and IPv4: what a pod in a dual-stack cluster needs
_NO_IPV6: frozenset[int] = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})


def listen(host: str, port: int) -> socket.socket:
    """A listening socket for `host`; `::` is one dual-stack socket (IPv4 arrives as v4-mapped addresses, whatever
    the node's net.ipv6.bindv6only), and falls back to 0.0.0.0 in a pod without IPv6."""
    if host in ANY:
        try:
            return _bound(socket.AF_INET6, "::", port, dual_stack=True)
        except OSError as error:
            if error.errno not in _NO_IPV6:
                raise
            log.warning("no IPv6 here (%s): listening on 0.0.0.0 only", error.strerror)
            host = "0.0.0.0"  # noqa: S104 -- the pod's every IPv4 address is the point
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _bound(family, host.strip("[]"), port, dual_stack=False)


def _bound(family: socket.AddressFamily, host: str, port: int, *, dual_stack: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="etcdstorage-hook", description=__doc__)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; '::' for every IPv6 and IPv4 address (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = settings_module.from_env()
    except settings_module.SettingsError as error:
        print(f"etcdstorage-hook: {error}", file=sys.stderr)
        return 2
    try:
        sock = listen(args.host, args.port)
    except OSError as error:
        print(f"etcdstorage-hook: cannot listen on {args.host} port {args.port}: {error.strerror}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        create_app(settings),
        log_level=args.log_level,
        access_log=False,  # Metacontroller calls every few seconds per object; /metrics counts them instead
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
