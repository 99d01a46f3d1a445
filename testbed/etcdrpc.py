"""A small etcd v3 client over grpcio with generic (raw bytes) calls: any RPC path, any hand-built request.

Test support only. Each `Client` owns its channel, on a subchannel pool of its own, so two clients never share a
connection (a test of "this certificate is refused" must not reuse another client's TLS session).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

import grpc

from testbed import etcdwire as wire
from testbed.certs import TLSFiles

TIMEOUT: Final = 10.0
KV: Final = "/etcdserverpb.KV/"
WATCH: Final = "/etcdserverpb.Watch/Watch"
LEASE: Final = "/etcdserverpb.Lease/"
MAINTENANCE: Final = "/etcdserverpb.Maintenance/"


def _raw(message: bytes) -> bytes:
    """Messages travel as the bytes etcdwire encodes and decodes: no generated protobuf classes."""
    return message


def channel(
    address: str, tls: TLSFiles | None, *, client_identity: bool = True, server_name: str | None = None
) -> grpc.Channel:
    """A channel to `address`; TLS when `tls` is given, presenting its certificate unless `client_identity` is off,
    verifying the server as `server_name` when given (a Service name the serving certificate holds) instead of the
    address."""
    options: list[tuple[str, int | str]] = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", -1),
        ("grpc.max_send_message_length", -1),
        ("grpc.enable_retries", 0),
    ]
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes() if client_identity else None,
        certificate_chain=tls.cert.read_bytes() if client_identity else None,
    )
    return grpc.secure_channel(address, credentials, options=options)


class Client:
    def __init__(
        self, address: str, tls: TLSFiles | None, *, client_identity: bool = True, server_name: str | None = None
    ) -> None:
        self.address = address
        self.channel = channel(address, tls, client_identity=client_identity, server_name=server_name)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- Raw calls: any path, bytes in and out; failures raise grpc.RpcError ------------------------------------
    def unary(self, path: str, request: bytes = b"", *, timeout: float = TIMEOUT) -> bytes:
        response: bytes = self.channel.unary_unary(path, _raw, _raw)(request, timeout=timeout)
        return response

    def server_stream(self, path: str, request: bytes = b"", *, timeout: float = TIMEOUT) -> list[bytes]:
        return list(self.channel.unary_stream(path, _raw, _raw)(request, timeout=timeout))

    def server_stream_first(self, path: str, request: bytes = b"", *, timeout: float = TIMEOUT) -> bytes:
        """The first message of a server stream that may never end (Observe)."""
        call = self.channel.unary_stream(path, _raw, _raw)(request, timeout=timeout)
        try:
            first: bytes = next(call)
        except StopIteration:
            raise AssertionError(f"{path} closed without an answer") from None
        finally:
            call.cancel()
        return first

    def bidi_first(self, path: str, request: bytes, *, timeout: float = TIMEOUT) -> bytes:
        """Send one message on a bidirectional stream, keep it open, and return the first answer."""
        answered = threading.Event()

        def requests() -> Iterator[bytes]:
            yield request
            answered.wait(timeout)  # half-closing early makes some servers (grpc-proxy's LeaseKeepAlive) give up

        call = self.channel.stream_stream(path, _raw, _raw)(requests(), timeout=timeout)
        try:
            first: bytes = next(call)
        except StopIteration:
            raise AssertionError(f"{path} closed without an answer") from None
        finally:
            answered.set()
            call.cancel()
        return first

    # --- Typed calls --------------------------------------------------------------------------------------------
    def range(
        self, key: bytes, range_end: bytes = b"", *, limit: int = 0, revision: int = 0, count_only: bool = False
    ) -> wire.RangeResponse:
        request = wire.range_request(key, range_end, limit=limit, revision=revision, count_only=count_only)
        return wire.RangeResponse.parse(self.unary(KV + "Range", request))

    def get(self, key: bytes) -> bytes | None:
        kvs = self.range(key).kvs
        return kvs[0].value if kvs else None

    def put(self, key: bytes, value: bytes, *, lease: int = 0, prev_kv: bool = False) -> wire.PutResponse:
        return wire.PutResponse.parse(
            self.unary(KV + "Put", wire.put_request(key, value, lease=lease, prev_kv=prev_kv))
        )

    def delete_range(self, key: bytes, range_end: bytes = b"", *, prev_kv: bool = False) -> wire.DeleteRangeResponse:
        request = wire.delete_range_request(key, range_end, prev_kv=prev_kv)
        return wire.DeleteRangeResponse.parse(self.unary(KV + "DeleteRange", request))

    def txn(self, request: bytes) -> wire.TxnResponse:
        return wire.TxnResponse.parse(self.unary(KV + "Txn", request))

    def lease_grant(self, ttl: int, lease_id: int = 0) -> wire.LeaseGrantResponse:
        return wire.LeaseGrantResponse.parse(self.unary(LEASE + "LeaseGrant", wire.lease_grant_request(ttl, lease_id)))

    def lease_time_to_live(self, lease_id: int) -> wire.LeaseTimeToLiveResponse:
        request = wire.lease_time_to_live_request(lease_id)
        return wire.LeaseTimeToLiveResponse.parse(self.unary(LEASE + "LeaseTimeToLive", request))

    def status(self) -> wire.StatusResponse:
        return wire.StatusResponse.parse(self.unary(MAINTENANCE + "Status"))

    def snapshot(self) -> bytes:
        return b"".join(wire.SnapshotChunk.parse(chunk).blob for chunk in self.server_stream(MAINTENANCE + "Snapshot"))

    def watch(self, *, timeout: float | None = None) -> WatchStream:
        return WatchStream(self.channel, timeout=timeout)

    # --- Calls the request checks' tests need: metadata, many calls in flight, lease bookkeeping -------------------
    def unary_with_metadata(
        self, path: str, request: bytes, metadata: Sequence[tuple[str, str]], *, timeout: float = TIMEOUT
    ) -> bytes:
        """A raw unary call that also sends `metadata` (gRPC headers, such as etcd's `token`)."""
        response: bytes = self.channel.unary_unary(path, _raw, _raw)(request, timeout=timeout, metadata=tuple(metadata))
        return response

    def unary_many(
        self, path: str, requests: Iterable[bytes], *, window: int = 32, timeout: float = TIMEOUT
    ) -> list[bytes | grpc.RpcError]:
        """`path` called once per request, up to `window` calls in flight at once; the answers in request order,
        a failed call as its grpc.RpcError."""
        call = self.channel.unary_unary(path, _raw, _raw)
        answers: list[bytes | grpc.RpcError] = []
        pending: collections.deque[grpc.Future[bytes]] = collections.deque()

        def settle() -> None:
            future = pending.popleft()
            try:
                answers.append(future.result())
            except grpc.RpcError as error:
                answers.append(error)

        for request in requests:
            pending.append(call.future(request, timeout=timeout))
            if len(pending) >= window:
                settle()
        while pending:
            settle()
        return answers

    def lease_revoke(self, lease_id: int) -> None:
        self.unary(LEASE + "LeaseRevoke", wire.lease_id_request(lease_id))

    def lease_leases(self) -> list[int]:
        """The ID of every lease of the etcd (LeaseLeases: the core's client only, the tenant proxy refuses it)."""
        return wire.lease_leases_ids(self.unary(LEASE + "LeaseLeases"))


class WatchStream:
    """One Watch RPC: `send` requests, `receive` responses with a deadline; `close` cancels it."""

    def __init__(self, channel: grpc.Channel, *, timeout: float | None = None) -> None:
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        self._held: collections.deque[wire.WatchResponse] = collections.deque()
        self._responses: queue.Queue[bytes | grpc.RpcError] = queue.Queue()
        self._call = channel.stream_stream(WATCH, _raw, _raw)(iter(self._requests.get, None), timeout=timeout)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self, request: bytes) -> None:
        self._requests.put(request)

    def receive(self, timeout: float = TIMEOUT) -> wire.WatchResponse:
        """The next response; raises the stream's grpc.RpcError, or queue.Empty when none came in time."""
        if self._held:
            return self._held.popleft()
        item = self._responses.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        return wire.WatchResponse.parse(item)

    def create(self, key: bytes, range_end: bytes = b"", *, start_revision: int = 0) -> wire.WatchResponse:
        """Create a watcher and wait for etcd to confirm it; events of other watchers that arrive meanwhile are
        held for `receive`."""
        self.send(wire.watch_create(key, range_end, start_revision=start_revision))
        skipped: list[wire.WatchResponse] = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            response = self.receive(timeout=max(deadline - time.monotonic(), 0.001))
            if response.created:
                self._held.extend(skipped)
                return response
            skipped.append(response)

    def events(self, timeout: float = TIMEOUT) -> Iterator[wire.Event]:
        """Events as they arrive, skipping progress notifications, until `timeout` passes without one."""
        while True:
            try:
                response = self.receive(timeout)
            except queue.Empty:
                return
            yield from response.events

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._reader.join(timeout=5)

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _read(self) -> None:
        try:
            for message in self._call:
                self._responses.put(message)
        except grpc.RpcError as error:  # also how a cancelled stream ends
            self._responses.put(error)
