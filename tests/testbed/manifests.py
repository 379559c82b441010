"""ProjectorSet manifests of the sample application, for the tests, the demo and the benchmarks."""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import Any

from sampleapp.manifests import pod_template, projectors, replay_commands, split_projectors


def sample_projectorset(
    version: str,
    *,
    name: str = "accounts",
    namespace: str | None = None,
    secret: str = "accounts-db",
    service: str = "accounts",
    replicas: int = 1,
    python: str = sys.executable,
    spec: dict[str, Any] | None = None,
    owns: Collection[str] | None = None,
) -> dict[str, Any]:
    """A ProjectorSet running release ``version`` (v1, v2 or v3) of the sample application. With
    ``owns``, it lists only those projectors as its own, the release's others as requiredProjectors
    (another set on the same event store owns them)."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    body: dict[str, Any] = {
        "version": version,
        "replicas": replicas,
        "service": {"name": service},
        "database": {"secretRef": {"name": secret, "key": "uri"}},
        "projectors": sorted(projectors(version), key=lambda p: p["name"]),
        "template": pod_template(version, secret_name=secret, labels={"app": name}, python=python),
        "replay": {
            # The operator runs the release's migrations first (init containers run them in pods too).
            "commands": replay_commands(python, migrate=True),
            "groupSize": 500,
            "stageTimeoutSeconds": 600,
            "stageRetries": 0,
        },
        "strategy": {"scaleDownDelaySeconds": 5},
    }
    if owns is not None:
        body["projectors"], body["requiredProjectors"] = split_projectors(version, owns)
    body.update(spec or {})
    return {"apiVersion": "projectorset.io/v1alpha1", "kind": "ProjectorSet", "metadata": metadata, "spec": body}
