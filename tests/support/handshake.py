"""Real TLS handshakes on loopback with Python's `ssl` (OpenSSL): does this client get through to this server?

Test support only. Both sides verify: the server requires a client certificate signed by its trusted bundle, the
client checks the server's chain against its own bundle and the host name. Uses the real clock, as OpenSSL does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Final

TIMEOUT: Final = 5.0
_GREETING: Final = b"ok"


@dataclasses.dataclass(frozen=True)
class Identity:
    """One side: the certificate (chain) and key it presents, and the CA bundle it trusts."""

    cert_pem: bytes | None
    key_pem: bytes | None
    trusted_pem: bytes


def handshake(server: Identity, client: Identity, *, hostname: str) -> str | None:
    """None when the client completed a mutually authenticated handshake and read from the server; else the error."""
    with tempfile.TemporaryDirectory() as directory:
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _load(server_context, server, Path(directory) / "server")
        server_context.verify_mode = ssl.CERT_REQUIRED
        server_context.load_verify_locations(cadata=server.trusted_pem.decode())
        client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_context.load_verify_locations(cadata=client.trusted_pem.decode())
        if client.cert_pem is not None:
            _load(client_context, client, Path(directory) / "client")

        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(TIMEOUT)
            port = listener.getsockname()[1]
            thread = threading.Thread(target=_serve, args=(listener, server_context), daemon=True)
            thread.start()
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
                    client_context.wrap_socket(raw, server_hostname=hostname) as tls,
                ):
                    # TLS 1.3: the server judges the client's certificate after the client's side is done; reading
                    # the greeting is what proves the server accepted it.
                    greeting = tls.recv(len(_GREETING))
                    return None if greeting == _GREETING else "the server closed the connection"
            except (ssl.SSLError, ssl.CertificateError, OSError) as error:
                return f"{type(error).__name__}: {error}"
            finally:
                thread.join(TIMEOUT)


def _load(context: ssl.SSLContext, identity: Identity, stem: Path) -> None:
    assert identity.cert_pem is not None
    assert identity.key_pem is not None
    cert, key = stem.with_suffix(".crt"), stem.with_suffix(".key")
    cert.write_bytes(identity.cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(identity.key_pem)
    context.load_cert_chain(str(cert), str(key))


def _serve(listener: socket.socket, context: ssl.SSLContext) -> None:
    with contextlib.suppress(OSError):
        connection, _ = listener.accept()
        connection.settimeout(TIMEOUT)
        with context.wrap_socket(connection, server_side=True) as tls:
            tls.sendall(_GREETING)
