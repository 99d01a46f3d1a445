"""What the cert-rotation job tells the hook about deleting a going tenant's keys (deletionPolicy Delete), as one
annotation on the tenant's `<N>-ca-cert` ConfigMap.

The job writes it after each attempt (`to_annotations`); the hook's finalize answer reads it (`from_annotations`) and
lets the EtcdStorage go only when a deletion for this very object (its uid) counted no key left. Pure.
"""

from __future__ import annotations

import json

from pydantic import AwareDatetime, BaseModel, ConfigDict, TypeAdapter

from etcdstorage import annotated, names
from etcdstorage.times import rfc3339


class KeyDeletion(BaseModel):
    """One attempt: what was deleted, what is left (None when the attempt failed before counting), and why not all
    ("" when nothing went wrong)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    uid: str  # the EtcdStorage this deletion is for: a recreated object of the same name is another
    prefix: str
    deleted: int = 0
    remaining: int | None = None
    problem: str = ""
    time: AwareDatetime

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and not self.problem


_DELETION: TypeAdapter[KeyDeletion] = TypeAdapter(KeyDeletion)


def to_annotations(deletion: KeyDeletion) -> dict[str, str]:
    written = deletion.model_dump(mode="json")
    written["time"] = rfc3339(deletion.time)
    return {names.ANNOTATION_KEY_DELETION: json.dumps(written, sort_keys=True, separators=(",", ":"))}


def from_annotations(annotations: object) -> KeyDeletion | None:
    """The last attempt, None when the job has made none; `annotated.AnnotationError` when it cannot be read."""
    return annotated.parsed(annotations, names.ANNOTATION_KEY_DELETION, _DELETION)
