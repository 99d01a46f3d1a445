"""What the cert-rotation job tells the hook about a tenant's consumers (the Deployments and StatefulSets of its API
server, `spec.consumers`), as one annotation on the tenant's `<N>-ca-cert`; the hook shows it as
`status.consumers`. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from etcdstorage import names


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


class ConsumersReportError(ValueError):
    """The annotation is there but does not parse."""


def to_annotations(states: Sequence[ConsumerState]) -> dict[str, str]:
    written = [state.model_dump() for state in states]
    return {names.ANNOTATION_CONSUMERS: json.dumps(written, sort_keys=True, separators=(",", ":"))}


def from_annotations(annotations: object) -> list[ConsumerState] | None:
    """The consumers' states, None when the job wrote none; `ConsumersReportError` when it cannot be read."""
    if not isinstance(annotations, Mapping) or names.ANNOTATION_CONSUMERS not in annotations:
        return None
    text = annotations[names.ANNOTATION_CONSUMERS]
    if not isinstance(text, str):
        raise ConsumersReportError(f"annotation {names.ANNOTATION_CONSUMERS} is not a string")
    try:
        return _STATES.validate_json(text)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(step) for step in first["loc"])[:100]
        raise ConsumersReportError(
            f"annotation {names.ANNOTATION_CONSUMERS} does not parse: {where}: {first['msg']}"
        ) from None
