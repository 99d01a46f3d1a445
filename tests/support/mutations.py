"""Random JSON, and real hook requests with random places replaced or removed, for property tests of the hook."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from tests.support.objects import ORIGINAL_EXAMPLE, sync_request

# Integers of any size (orjson turns those beyond 64 bits into floats) and infinities (which orjson refuses to read).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**66)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def places(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `value`, as keys and indexes."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += places(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += places(item, (*prefix, index))
    return found


@st.composite
def mutated_requests(draw: st.DrawFn, min_changes: int = 1, max_changes: int = 3) -> dict[str, Any]:
    """The original example's sync request with some places replaced by random JSON or removed."""
    request = sync_request(copy.deepcopy(ORIGINAL_EXAMPLE))
    for _ in range(draw(st.integers(min_value=min_changes, max_value=max_changes))):
        path = draw(st.sampled_from(places(request)))
        holder = request
        for step in path[:-1]:
            holder = holder[step]
        if draw(st.booleans()) and isinstance(holder, dict):
            del holder[path[-1]]
        else:
            holder[path[-1]] = draw(json_values)
    return request
