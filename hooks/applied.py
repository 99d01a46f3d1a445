"""What Metacontroller last applied to each child: the one answer that hands children back exactly as they stand.

Used for an EtcdStorage whose spec the hook refuses. Metacontroller deletes every observed child a 200 answer omits
and applies every child it names, so a child is kept unchanged only by naming the fields Metacontroller itself
applied, with the values they hold. It records those in one of two ways, by its `--apply-strategy`:

- `dynamic-apply` (the default): the annotation `metacontroller.k8s.io/last-applied-configuration`, the child as the
  last sync desired it. Sent back, its three-way merge of (observed, record, record) leaves every field as observed
  and writes the same record again: nothing changes. (A field someone else has changed since is set back to the
  recorded value, as any sync of the last accepted spec does.)
- `server-side-apply`: the fields its field manager owns through Apply operations (`metadata.managedFields`), taken
  with their live values, as client-go's `ExtractInto` takes them. Re-applied, they change neither a value nor an
  owner, and the API server writes nothing.

Never the observed object as a whole: its defaults and other managers' fields would become Metacontroller's, and a
later answer that leaves them out would remove them. Pure.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any, Final

from hooks.wire import ObjectMap

LAST_APPLIED_ANNOTATION: Final = "metacontroller.k8s.io/last-applied-configuration"
FIELD_MANAGER: Final = "metacontroller"  # the default of Metacontroller's --apply-strategy-ssa-field-manager
_IDENTITY: Final = ("apiVersion", "kind")


class _Unreadable(ValueError):
    """A record that does not parse as Kubernetes writes it."""


def kept_children(children: Mapping[str, ObjectMap]) -> list[dict[str, Any]] | None:
    """Every observed child as Metacontroller last applied it, in a fixed order; None when one of them carries no
    record of that (adopted but never applied, or applied under another field manager's name): no answer then
    provably keeps it."""
    kept = []
    for kind in sorted(children):
        for key in sorted(children[kind]):
            applied = last_applied(children[kind][key])
            if applied is None:
                return None
            kept.append(applied)
    return kept


def last_applied(child: Mapping[str, Any]) -> dict[str, Any] | None:
    """The child as Metacontroller last applied it, named as observed; None when it carries no readable record."""
    metadata = child.get("metadata")
    if not isinstance(metadata, Mapping) or not all(isinstance(child.get(field), str) for field in _IDENTITY):
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    try:
        # An Apply entry exists only under server-side apply, which drops the dynamic-apply annotation as it applies.
        fields = _applied_fields(metadata.get("managedFields"), child["apiVersion"])
        applied = _extract(child, fields) if fields is not None else _recorded(metadata.get("annotations"))
    except (_Unreadable, RecursionError):
        return None
    if not isinstance(applied, dict):
        return None
    # As ExtractInto: the identity is the observed object's (a field set never holds it).
    applied.update({field: child[field] for field in _IDENTITY})
    identity = applied.get("metadata")
    applied["metadata"] = {**(identity if isinstance(identity, dict) else {}), "name": name, "namespace": namespace}
    return applied


def _applied_fields(entries: object, api_version: str) -> Mapping[str, Any] | None:
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if (
            isinstance(entry, Mapping)
            and entry.get("manager") == FIELD_MANAGER
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
            and entry.get("apiVersion") == api_version
            and isinstance(entry.get("fieldsV1"), Mapping)
        ):
            fields: Mapping[str, Any] = entry["fieldsV1"]
            return fields
    return None


def _recorded(annotations: object) -> Any:
    record = annotations.get(LAST_APPLIED_ANNOTATION) if isinstance(annotations, Mapping) else None
    if not isinstance(record, str):
        return None
    try:
        return json.loads(record)
    except ValueError:
        raise _Unreadable(LAST_APPLIED_ANNOTATION) from None


def _extract(value: Any, fields: Mapping[str, Any]) -> Any:
    """The part of `value` that the field set `fields` (FieldsV1: `f:<field>`, `k:<keys>`, `v:<value>`, `i:<index>`,
    `.` for the node itself) names; a node that names no member is owned whole."""
    members = {key: sub for key, sub in fields.items() if key != "."}
    if not all(isinstance(sub, Mapping) for sub in members.values()):
        raise _Unreadable("fieldsV1")
    if not members:
        return copy.deepcopy(value)
    if isinstance(value, Mapping):
        return {
            key[2:]: _extract(value[key[2:]], sub)
            for key, sub in members.items()
            if key.startswith("f:") and key[2:] in value
        }
    if isinstance(value, list):
        return [part for index, item in enumerate(value) if (part := _item(item, index, members)) is not None]
    return copy.deepcopy(value)


def _item(item: Any, index: int, members: Mapping[str, Mapping[str, Any]]) -> Any:
    """The owned part of one list item, or None when the field set names it in no way."""
    for key, sub in members.items():
        selector = key[:2]
        if selector == "i:" and key[2:] == str(index):
            return _extract(item, sub)
        if selector == "v:" and _parsed(key[2:]) == item:
            return copy.deepcopy(item)
        if selector == "k:":
            keys = _parsed(key[2:])
            if not isinstance(keys, dict) or not isinstance(item, Mapping):
                raise _Unreadable("fieldsV1")
            if all(item.get(field) == wanted for field, wanted in keys.items()):
                part = _extract(item, sub)
                # The key fields too (ExtractItems' WithAppendKeyFields): an applied list item names its keys.
                return {**keys, **part} if isinstance(part, dict) else part
    return None


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise _Unreadable("fieldsV1") from None
