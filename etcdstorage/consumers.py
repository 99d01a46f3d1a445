"""What the cert-rotation job tells the hook about a tenant's consumers (the Deployments and StatefulSets of its API
server, `spec.consumers`), as one annotation on the tenant's `<N>-ca-cert`; the hook shows it as
`status.consumers`. Pure."""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, TypeAdapter

from etcdstorage import annotated, names


class ConsumerState(BaseModel):
    """One consumer after the job's last look: whether its pod template carries the hash of the certificates as they
    are now (`restarted`: the job stamped it), whether its pods all run that template (`current`), or why not."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: str
    namespace: str
    name: str
    certificatesHash: str = ""  # what the template should carry ("" when the certificates could not be read)
    restarted: bool = False
    current: bool = False
    problem: str = ""


_STATES: TypeAdapter[list[ConsumerState]] = TypeAdapter(list[ConsumerState])


def to_annotations(states: Sequence[ConsumerState]) -> dict[str, str]:
    written = [state.model_dump() for state in states]
    return {names.ANNOTATION_CONSUMERS: json.dumps(written, sort_keys=True, separators=(",", ":"))}


def from_annotations(annotations: object) -> list[ConsumerState] | None:
    """The consumers' states, None when the job wrote none; `annotated.AnnotationError` when they cannot be read."""
    return annotated.parsed(annotations, names.ANNOTATION_CONSUMERS, _STATES)
