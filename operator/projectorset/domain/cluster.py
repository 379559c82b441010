"""The cluster as the controller sees it: the ``Cluster`` interface and the plain data it speaks.

``kube.KubernetesCluster`` implements it over the official client; unit tests use an
in-memory one. Both depend on this module, not on the controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from projectorset.api import ProjectorSetSpec
from projectorset.api.conditions import Reason, ReportedError
from projectorset.domain.observation import ClusterAction, ClusterView, Event


@dataclass(frozen=True)
class Owner:
    """The ProjectorSet that owns an object (for owner references, labels and Events)."""

    name: str
    namespace: str
    uid: str


class ClusterError(ReportedError):
    """A Kubernetes API call failed; ``reason`` says how (Forbidden, NotFound, ...)."""

    reason = Reason.KUBERNETES_API_ERROR


class ServiceRefused(ClusterError):
    """The Service named in the spec belongs to another ProjectorSet (or was never this set's):
    reported once, retried slowly, never patched."""

    reason = Reason.SERVICE_OWNED_BY_OTHER
    retry_after = 60.0


class Cluster(Protocol):
    def observe(self, owner: Owner, spec: ProjectorSetSpec) -> tuple[ClusterView, str | None]:
        """What the cluster shows for this ProjectorSet, and the database URI from its Secret."""

    def apply(self, owner: Owner, spec: ProjectorSetSpec, action: ClusterAction) -> None:
        """Carry out one Kubernetes action; raises ClusterError."""

    def forget_database_uri(self, owner: Owner, spec: ProjectorSetSpec) -> None:
        """The database refused the URI observe() gave, or did not answer: read the Secret again."""

    def patch_status(self, owner: Owner, status: dict[str, Any]) -> None: ...

    def emit(self, owner: Owner, event: Event) -> None: ...
