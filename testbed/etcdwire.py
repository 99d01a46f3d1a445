"""Just enough protobuf to speak etcd's v3 API by hand: encoders for the requests and decoders for the responses the
tests read. Field numbers are those of etcd's api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto (3.5).

Hand-written on purpose: attacks need requests no client library builds (nested transactions, `\\0` range ends, RPCs
etcdctl does not expose), and generated code would bring protoc into the test tool chain. Test support only.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable
from typing import Final

# --- Wire format --------------------------------------------------------------------------------------------------
_VARINT, _LEN = 0, 2
Fields = dict[int, list[int | bytes]]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values travel as their 64-bit two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | _VARINT) + _varint(value) if value else b""


def bytes_field(number: int, value: bytes | str, *, always: bool = False) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if not raw and not always:
        return b""
    return _varint(number << 3 | _LEN) + _varint(len(raw)) + raw


def message_field(number: int, message: bytes) -> bytes:
    return bytes_field(number, message, always=True)  # an empty sub-message is still present (selects a oneof)


def decode(data: bytes) -> Fields:
    """Every field of a message by number, in order; varints as int, length-delimited as bytes."""
    fields: Fields = {}
    position = 0

    def read_varint() -> int:
        nonlocal position
        result = shift = 0
        while True:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while position < len(data):
        key = read_varint()
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == _VARINT:
            value = read_varint()
        elif wire_type == _LEN:
            length = read_varint()
            value, position = data[position : position + length], position + length
        elif wire_type == 1:  # fixed64
            value, position = int.from_bytes(data[position : position + 8], "little"), position + 8
        elif wire_type == 5:  # fixed32
            value, position = int.from_bytes(data[position : position + 4], "little"), position + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def _int(fields: Fields, number: int, *, signed: bool = True) -> int:
    value = fields.get(number, [0])[-1]
    assert isinstance(value, int)
    return value - (1 << 64) if signed and value >= 1 << 63 else value


def _bytes(fields: Fields, number: int) -> bytes:
    value = fields.get(number, [b""])[-1]
    assert isinstance(value, bytes)
    return value


def _all_bytes(fields: Fields, number: int) -> list[bytes]:
    return [value for value in fields.get(number, []) if isinstance(value, bytes)]


# --- Requests -----------------------------------------------------------------------------------------------------
def range_request(
    key: bytes,
    range_end: bytes = b"",
    *,
    limit: int = 0,
    revision: int = 0,
    keys_only: bool = False,
    count_only: bool = False,
) -> bytes:
    return (
        bytes_field(1, key)
        + bytes_field(2, range_end)
        + varint_field(3, limit)
        + varint_field(4, revision)
        + varint_field(8, keys_only)
        + varint_field(9, count_only)
    )


def put_request(key: bytes, value: bytes, *, lease: int = 0, prev_kv: bool = False) -> bytes:
    return bytes_field(1, key) + bytes_field(2, value) + varint_field(3, lease) + varint_field(4, prev_kv)


def delete_range_request(key: bytes, range_end: bytes = b"", *, prev_kv: bool = False) -> bytes:
    return bytes_field(1, key) + bytes_field(2, range_end) + varint_field(3, prev_kv)


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


_COMPARE_FIELD: Final = {
    CompareTarget.VERSION: 4,
    CompareTarget.CREATE: 5,
    CompareTarget.MOD: 6,
    CompareTarget.VALUE: 7,
    CompareTarget.LEASE: 8,
}


def compare(
    key: bytes, result: CompareResult, target: CompareTarget, against: int | bytes, *, range_end: bytes = b""
) -> bytes:
    """A Compare of `target` (version, create or mod revision, value, lease) of `key` against `against`."""
    number = _COMPARE_FIELD[target]
    # A member of a oneof: present even when zero or empty.
    if isinstance(against, bytes):
        operand = bytes_field(number, against, always=True)
    else:
        operand = _varint(number << 3 | _VARINT) + _varint(against)
    return (
        varint_field(1, result) + varint_field(2, target) + bytes_field(3, key) + operand + bytes_field(64, range_end)
    )


def op_range(request: bytes) -> bytes:
    return message_field(1, request)


def op_put(request: bytes) -> bytes:
    return message_field(2, request)


def op_delete(request: bytes) -> bytes:
    return message_field(3, request)


def op_txn(request: bytes) -> bytes:
    return message_field(4, request)


def txn_request(compares: Iterable[bytes] = (), success: Iterable[bytes] = (), failure: Iterable[bytes] = ()) -> bytes:
    return (
        b"".join(message_field(1, c) for c in compares)
        + b"".join(message_field(2, op) for op in success)
        + b"".join(message_field(3, op) for op in failure)
    )


def compaction_request(revision: int, *, physical: bool = False) -> bytes:
    return varint_field(1, revision) + varint_field(2, physical)


def watch_create(
    key: bytes, range_end: bytes = b"", *, start_revision: int = 0, prev_kv: bool = False, watch_id: int = 0
) -> bytes:
    create = (
        bytes_field(1, key)
        + bytes_field(2, range_end)
        + varint_field(3, start_revision)
        + varint_field(6, prev_kv)
        + varint_field(7, watch_id)
    )
    return message_field(1, create)


def watch_cancel(watch_id: int) -> bytes:
    return message_field(2, varint_field(1, watch_id))


def watch_progress() -> bytes:
    return message_field(3, b"")


def lease_grant_request(ttl: int, lease_id: int = 0) -> bytes:
    return varint_field(1, ttl) + varint_field(2, lease_id)


def lease_id_request(lease_id: int) -> bytes:
    """LeaseRevokeRequest and LeaseKeepAliveRequest: just the ID."""
    return varint_field(1, lease_id)


def lease_time_to_live_request(lease_id: int, *, keys: bool = True) -> bytes:
    return varint_field(1, lease_id) + varint_field(2, keys)


def hash_kv_request(revision: int = 0) -> bytes:
    return varint_field(1, revision)


def member_add_request(peer_urls: Iterable[str], *, learner: bool = False) -> bytes:
    return b"".join(bytes_field(1, url) for url in peer_urls) + varint_field(2, learner)


def member_id_request(member_id: int) -> bytes:
    """MemberRemoveRequest and MemberPromoteRequest: just the ID."""
    return varint_field(1, member_id)


def member_update_request(member_id: int, peer_urls: Iterable[str]) -> bytes:
    return varint_field(1, member_id) + b"".join(bytes_field(2, url) for url in peer_urls)


class AlarmAction(enum.IntEnum):
    GET = 0
    ACTIVATE = 1
    DEACTIVATE = 2


def alarm_request(action: AlarmAction, *, member_id: int = 0, alarm: int = 0) -> bytes:
    return varint_field(1, action) + varint_field(2, member_id) + varint_field(3, alarm)


def move_leader_request(target_id: int) -> bytes:
    return varint_field(1, target_id)


def downgrade_request(action: int, version: str) -> bytes:
    return varint_field(1, action) + bytes_field(2, version)


def name_request(name: str, second: str = "") -> bytes:
    """The Auth requests made of one or two strings: (name[, password | role])."""
    return bytes_field(1, name) + bytes_field(2, second)


def leader_key(name: bytes, key: bytes, revision: int, lease: int = 0) -> bytes:
    """v3election's LeaderKey: an election name and the key (with its create revision) that holds leadership."""
    return bytes_field(1, name) + bytes_field(2, key) + varint_field(3, revision) + varint_field(4, lease)


def proclaim_request(leader: bytes, value: bytes) -> bytes:
    return message_field(1, leader) + bytes_field(2, value)


def resign_request(leader: bytes) -> bytes:
    return message_field(1, leader)


def role_grant_permission_request(role: str, key: bytes, range_end: bytes, *, perm_type: int = 2) -> bytes:
    permission = varint_field(1, perm_type) + bytes_field(2, key) + bytes_field(3, range_end)  # 2 = READWRITE
    return bytes_field(1, role) + message_field(2, permission)


def role_revoke_permission_request(role: str, key: bytes, range_end: bytes) -> bytes:
    return bytes_field(1, role) + bytes_field(2, key) + bytes_field(3, range_end)


# --- Responses ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def parse(cls, data: bytes) -> KeyValue:
        f = decode(data)
        return cls(
            key=_bytes(f, 1),
            create_revision=_int(f, 2),
            mod_revision=_int(f, 3),
            version=_int(f, 4),
            value=_bytes(f, 5),
            lease=_int(f, 6),
        )


def header_revision(fields: Fields) -> int:
    return _int(decode(_bytes(fields, 1)), 3)


@dataclasses.dataclass(frozen=True)
class RangeResponse:
    revision: int
    kvs: list[KeyValue]
    more: bool
    count: int

    @classmethod
    def parse(cls, data: bytes) -> RangeResponse:
        f = decode(data)
        kvs = [KeyValue.parse(kv) for kv in _all_bytes(f, 2)]
        return cls(revision=header_revision(f), kvs=kvs, more=bool(_int(f, 3)), count=_int(f, 4))

    @property
    def keys(self) -> list[bytes]:
        return [kv.key for kv in self.kvs]


@dataclasses.dataclass(frozen=True)
class PutResponse:
    revision: int
    prev_kv: KeyValue | None

    @classmethod
    def parse(cls, data: bytes) -> PutResponse:
        f = decode(data)
        return cls(revision=header_revision(f), prev_kv=KeyValue.parse(_bytes(f, 2)) if 2 in f else None)


@dataclasses.dataclass(frozen=True)
class DeleteRangeResponse:
    revision: int
    deleted: int
    prev_kvs: list[KeyValue]

    @classmethod
    def parse(cls, data: bytes) -> DeleteRangeResponse:
        f = decode(data)
        return cls(
            revision=header_revision(f), deleted=_int(f, 2), prev_kvs=[KeyValue.parse(kv) for kv in _all_bytes(f, 3)]
        )


@dataclasses.dataclass(frozen=True)
class TxnResponse:
    revision: int
    succeeded: bool
    responses: list[RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse]

    @classmethod
    def parse(cls, data: bytes) -> TxnResponse:
        f = decode(data)
        responses: list[RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse] = []
        for op in _all_bytes(f, 3):
            ((number, (body, *_)),) = decode(op).items()
            assert isinstance(body, bytes)
            parser: dict[int, Callable[[bytes], RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse]] = {
                1: RangeResponse.parse,
                2: PutResponse.parse,
                3: DeleteRangeResponse.parse,
                4: TxnResponse.parse,
            }
            responses.append(parser[number](body))
        return cls(revision=header_revision(f), succeeded=bool(_int(f, 2)), responses=responses)

    def kvs(self) -> list[KeyValue]:
        """Every key-value read anywhere in the transaction, nested ones included."""
        found: list[KeyValue] = []
        for response in self.responses:
            if isinstance(response, RangeResponse):
                found += response.kvs
            elif isinstance(response, DeleteRangeResponse):
                found += response.prev_kvs
            elif isinstance(response, TxnResponse):
                found += response.kvs()
            elif response.prev_kv is not None:
                found.append(response.prev_kv)
        return found


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


@dataclasses.dataclass(frozen=True)
class Event:
    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None

    @classmethod
    def parse(cls, data: bytes) -> Event:
        f = decode(data)
        prev = KeyValue.parse(_bytes(f, 3)) if 3 in f else None
        return cls(type=EventType(_int(f, 1)), kv=KeyValue.parse(_bytes(f, 2)), prev_kv=prev)


@dataclasses.dataclass(frozen=True)
class WatchResponse:
    revision: int
    watch_id: int
    created: bool
    canceled: bool
    compact_revision: int
    cancel_reason: str
    events: list[Event]

    @classmethod
    def parse(cls, data: bytes) -> WatchResponse:
        f = decode(data)
        return cls(
            revision=header_revision(f),
            watch_id=_int(f, 2),
            created=bool(_int(f, 3)),
            canceled=bool(_int(f, 4)),
            compact_revision=_int(f, 5),
            cancel_reason=_bytes(f, 6).decode(),
            events=[Event.parse(e) for e in _all_bytes(f, 11)],
        )


@dataclasses.dataclass(frozen=True)
class LeaseGrantResponse:
    lease_id: int
    ttl: int
    error: str

    @classmethod
    def parse(cls, data: bytes) -> LeaseGrantResponse:
        f = decode(data)
        return cls(lease_id=_int(f, 2), ttl=_int(f, 3), error=_bytes(f, 4).decode())


@dataclasses.dataclass(frozen=True)
class LeaseTimeToLiveResponse:
    lease_id: int
    ttl: int
    granted_ttl: int
    keys: list[bytes]

    @classmethod
    def parse(cls, data: bytes) -> LeaseTimeToLiveResponse:
        f = decode(data)
        return cls(lease_id=_int(f, 2), ttl=_int(f, 3), granted_ttl=_int(f, 4), keys=_all_bytes(f, 5))


def lease_leases_ids(data: bytes) -> list[int]:
    return [_int(decode(status), 1) for status in _all_bytes(decode(data), 2)]


@dataclasses.dataclass(frozen=True)
class SnapshotChunk:
    remaining_bytes: int
    blob: bytes

    @classmethod
    def parse(cls, data: bytes) -> SnapshotChunk:
        f = decode(data)
        return cls(remaining_bytes=_int(f, 2, signed=False), blob=_bytes(f, 3))


@dataclasses.dataclass(frozen=True)
class StatusResponse:
    version: str
    db_size: int
    leader: int

    @classmethod
    def parse(cls, data: bytes) -> StatusResponse:
        f = decode(data)
        return cls(version=_bytes(f, 2).decode(), db_size=_int(f, 3), leader=_int(f, 4, signed=False))


@dataclasses.dataclass(frozen=True)
class Member:
    member_id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]

    @classmethod
    def parse(cls, data: bytes) -> Member:
        f = decode(data)
        return cls(
            member_id=_int(f, 1, signed=False),
            name=_bytes(f, 2).decode(),
            peer_urls=[u.decode() for u in _all_bytes(f, 3)],
            client_urls=[u.decode() for u in _all_bytes(f, 4)],
        )


def members(data: bytes) -> list[Member]:
    """The members of a MemberList (field 2) response."""
    return [Member.parse(m) for m in _all_bytes(decode(data), 2)]


def strings(data: bytes, number: int = 2) -> list[str]:
    """A repeated string field of a response: UserList users, RoleList roles, UserGet roles."""
    return [value.decode() for value in _all_bytes(decode(data), number)]


# --- Raw pieces, for requests no well-formed builder makes (the fuzzing of tests/isolation/test_requests.py) --------
def varint(value: int) -> bytes:
    """A bare varint; negative values as their 64-bit two's complement, as int64 fields carry them."""
    return _varint(value)


def tag(number: int, wire_type: int) -> bytes:
    """The key of a field: its number and wire type (0 varint, 1 fixed64, 2 length-delimited, 3 and 4 the
    deprecated groups, 5 fixed32; 6 and 7 are no wire type at all)."""
    return _varint(number << 3 | wire_type)
