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
    replay_event_overhead_ms: float | None = 0.0,
) -> dict[str, Any]:
    """A ProjectorSet running release ``version`` (v1, v2 or v3) of the sample application. With
    ``owns``, it lists only those projectors as its own, the release's others as requiredProjectors
    (another set on the same event store owns them).

    ``replay_event_overhead_ms``: the sample app's per-event cost of catch-up and golive beyond
    its SQL (``SAMPLEAPP_REPLAY_EVENT_OVERHEAD_MS``). The tests run with none: on a loaded 2-core
    machine, a catch-up at Sequent's cost fell behind the tests' unthrottled writers and failed
    rollouts with CatchupDidNotConverge, a flake that proves nothing about the operator. The demo
    and the benchmarks pass None, the sample app's calibrated default, to measure what users get."""
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
    if replay_event_overhead_ms is not None:
        # Under the tests' four unthrottled writers on a loaded 2-core machine, catch-up one event at
        # a time stays 2,000 to 3,500 events behind (seen: CatchupDidNotConverge after 10 rounds at
        # the default bound of 1,000); the tests check correctness, so golive may take a longer tail.
        body["replay"]["catchup"] = {"maxLag": 5000, "maxRounds": 20}
        for container in body["template"]["spec"]["containers"] + body["template"]["spec"].get("initContainers", []):
            container["env"].append(
                {"name": "SAMPLEAPP_REPLAY_EVENT_OVERHEAD_MS", "value": f"{replay_event_overhead_ms:g}"}
            )
    body.update(spec or {})
    return {"apiVersion": "projectorset.io/v1alpha1", "kind": "ProjectorSet", "metadata": metadata, "spec": body}
