"""Metacontroller's hook bodies, as pydantic models: liberal on input (unknown fields ignored), exact on output.

Shapes from Metacontroller v4.17 (`pkg/controller/composite/api/v1` and `pkg/controller/common/customize/api/v1`).
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

# Child and related maps are keyed "<Kind>.<apiVersion>" (core) or "<Kind>.<group>/<version>", then "namespace/name".
DEPLOYMENTS: Final = "Deployment.apps/v1"
SERVICES: Final = "Service.v1"
DISRUPTION_BUDGETS: Final = "PodDisruptionBudget.policy/v1"
CONFIGMAPS: Final = "ConfigMap.v1"

ObjectMap = dict[str, dict[str, Any]]


class Parent(BaseModel):
    """Only what must be there for the hook to talk about the object at all; `spec.parse` checks the rest."""

    model_config = ConfigDict(extra="allow")

    metadata: dict[str, Any]
    spec: Any = None
    status: Any = None


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    controller: dict[str, Any] = Field(default_factory=dict)
    parent: Parent
    children: dict[str, ObjectMap]
    related: dict[str, ObjectMap] = Field(default_factory=dict)
    finalizing: bool = False


class SyncResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: dict[str, Any]
    children: list[dict[str, Any]]
    resyncAfterSeconds: float = 0
    finalized: bool | None = None  # only in answers to a finalize call


class CustomizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    controller: dict[str, Any] = Field(default_factory=dict)
    parent: Parent


class RelatedResourceRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    apiVersion: str
    resource: str
    namespace: str
    names: list[str]


class CustomizeResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    relatedResources: list[RelatedResourceRule]
