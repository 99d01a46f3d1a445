"""The captured Metacontroller requests of tests/fixtures, and strategies that break them in places, for hook tests.

Mutations go, as often as anywhere else, where the hook reads observed objects, and inside the report annotation (a
JSON document in a string), where the job's times live: a random place among thousands seldom lands there.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

from hypothesis import strategies as st

from etcdstorage import names
from tests.support.mutations import json_values, places

FIXTURES: Final = Path(__file__).resolve().parents[1] / "fixtures"
# Cases Metacontroller sent to /sync (not-a-request is hand-written, customize goes elsewhere).
SYNC_CASES: Final = tuple(
    sorted(
        path.parent.name
        for path in FIXTURES.glob("*/request.json")
        if json.loads((path.parent / "call.json").read_text())["path"] == "/sync"
        and path.parent.name != "not-a-request"
    )
)
CHILD_KINDS: Final = ("Deployment", "Service", "PodDisruptionBudget")
_REQUESTS: Final = {case: json.loads((FIXTURES / case / "request.json").read_text()) for case in SYNC_CASES}


def captured(case: str) -> dict[str, Any]:
    """A fresh copy of the case's request, to change at will."""
    return copy.deepcopy(_REQUESTS[case])


def body(request: Any) -> bytes:
    return json.dumps(request, separators=(",", ":")).encode()


def ca_configmap(request: dict[str, Any]) -> dict[str, Any]:
    """The request's `<N>-ca-cert` ConfigMap, where the job's report is."""
    (configmap,) = request["related"]["ConfigMap.v1"].values()
    assert isinstance(configmap, dict)
    return configmap


def deployment(request: dict[str, Any]) -> dict[str, Any]:
    (found,) = request["children"]["Deployment.apps/v1"].values()
    assert isinstance(found, dict)
    return found


def expected_children(request: dict[str, Any]) -> list[tuple[str, str]]:
    name = names.proxy_name(request["parent"]["metadata"]["name"])
    return [(kind, name) for kind in CHILD_KINDS]


# Times as RFC 3339 strings with an offset, on the first and last days a datetime holds: some are outside years 1 to
# 9999 once in UTC (0001-01-01T00:00:00+01:00 is in year 0).
offsets = st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23)))
extreme_times = st.builds(
    lambda when, offset: when.replace(tzinfo=offset).isoformat(),
    st.datetimes(max_value=datetime(1, 1, 2)) | st.datetimes(min_value=datetime(9999, 12, 31)),
    offsets,
)
# What a place may become: any JSON, an extreme time, a type Kubernetes never sends there, a long string.
odd_values = (
    json_values
    | extreme_times
    | st.sampled_from([None, True, 0, -1, 1.5, "", "x", [], {}, [1], {"a": 1}, 2**70, "x" * 5000])
)


class Mutated:
    """A captured request and what was changed in it; shown by its changes (the request is some 50 kB). Not a
    dataclass: hypothesis would print every field of one."""

    def __init__(self, case: str, request: dict[str, Any]) -> None:
        self.case, self.request, self.changes = case, request, list[str]()

    def __repr__(self) -> str:
        return f"Mutated({self.case!r}: {'; '.join(self.changes)})"


@st.composite
def mutated_captured(draw: st.DrawFn, min_changes: int = 1, max_changes: int = 3) -> Mutated:
    """A captured request with some places replaced by odd values or removed, in the body or in the report."""
    case = draw(st.sampled_from(SYNC_CASES))
    mutated = Mutated(case, captured(case))
    request = mutated.request
    for _ in range(draw(st.integers(min_value=min_changes, max_value=max_changes))):
        related = request.get("related")
        annotations = _report_holder(related.get("ConfigMap.v1") if isinstance(related, dict) else None)
        where = draw(st.sampled_from(["report", "observed", "anywhere"]))
        if where == "report" and annotations is not None:
            report = json.loads(annotations[names.ANNOTATION_CERTIFICATES])
            mutated.changes.append("in the report: " + _mutate(draw, report, places(report)))
            annotations[names.ANNOTATION_CERTIFICATES] = json.dumps(report)
        elif where == "observed":
            mutated.changes.append(_mutate(draw, request, [path for path in places(request) if _observed(path)]))
        else:
            mutated.changes.append(_mutate(draw, request, places(request)))
    return mutated


def _observed(path: tuple[Any, ...]) -> bool:
    """Whether `path` leads to what the hook reads of the observed world (a child or related object, its status,
    metadata and annotations; the previous status), rather than anywhere among the thousands of places."""
    if path[:1] in (("children",), ("related",)):
        status = path[3:4] == ("status",) and len(path) <= 5
        return len(path) <= 4 or status or path[3:5] == ("metadata", "annotations")
    return path[:2] == ("parent", "status") and len(path) <= 5


def _report_holder(configmaps: Any) -> dict[str, Any] | None:
    """The annotations holding a report that still parses as JSON, if the mutations so far left one."""
    for configmap in configmaps.values() if isinstance(configmaps, dict) else ():
        metadata = configmap.get("metadata") if isinstance(configmap, dict) else None
        annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
        if not isinstance(annotations, dict) or not isinstance(annotations.get(names.ANNOTATION_CERTIFICATES), str):
            continue
        try:
            report = json.loads(annotations[names.ANNOTATION_CERTIFICATES])
        except ValueError:
            continue
        if isinstance(report, (dict, list)) and report:
            return annotations
    return None


def _mutate(draw: st.DrawFn, value: dict[str, Any] | list[Any], found: list[tuple[Any, ...]]) -> str:
    """Replace or remove one of the places `found` in `value`; what was done."""
    if not found:
        return "nothing"
    path = draw(st.sampled_from(found))
    holder: Any = value
    for step in path[:-1]:
        holder = holder[step]
    where = ".".join(map(str, path))
    if draw(st.booleans()) and isinstance(holder, dict):
        del holder[path[-1]]
        return f"{where} removed"
    holder[path[-1]] = draw(odd_values)
    return f"{where} = {repr(holder[path[-1]])[:60]}"
