"""JSON in an annotation, as the job writes its reports on `<N>-ca-cert` and the hook reads them back. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeVar

from pydantic import TypeAdapter, ValidationError

T = TypeVar("T")
_MAX_PLACE: Final = 100  # characters of a refused field's place named in an error


class AnnotationError(ValueError):
    """The annotation is there but does not parse: written by something else, or by hand."""


def parsed(annotations: object, key: str, adapter: TypeAdapter[T]) -> T | None:
    """The annotation `key` of `annotations` read by `adapter`; None when there is none; `AnnotationError`, naming the
    first place that does not fit, when it cannot be read."""
    if not isinstance(annotations, Mapping) or key not in annotations:
        return None
    text = annotations[key]
    if not isinstance(text, str):
        raise AnnotationError(f"annotation {key} is not a string")
    try:
        return adapter.validate_json(text)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(step) for step in first["loc"])[:_MAX_PLACE]
        raise AnnotationError(f"annotation {key} does not parse: {where}: {first['msg']}") from None
