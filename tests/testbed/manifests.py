"""ProjectorSet manifests of the sample application, for the tests, the demo and the benchmarks."""

from __future__ import annotations

import sys
from typing import Any

from sampleapp.releases import get_release

APP_PORT = 8080


def stage_commands(python: str = sys.executable) -> dict[str, list[str]]:
    """The sample application's replay stages, in the operator's command placeholders."""
    replay = [python, "-m", "sampleapp.replay"]
    return {
        "prepare": [*replay, "prepare", "{projectors}"],
        "replay": [*replay, "replay", "{groupSize}", "{processes}"],
        "catchup": [*replay, "catchup", "{groupSize}", "{processes}"],
        "optimize": [*replay, "optimize"],
        "golive": [*replay, "golive"],
        "abort": [*replay, "abort", "{projectors}"],
    }


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
) -> dict[str, Any]:
    """A ProjectorSet running release ``version`` (v1, v2 or v3) of the sample application."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    body: dict[str, Any] = {
        "version": version,
        "replicas": replicas,
        "service": {"name": service},
        "database": {"secretRef": {"name": secret, "key": "uri"}},
        "projectors": [{"name": n, "version": v} for n, v in sorted(get_release(version).versions.items())],
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": f"sampleapp:{version}",
                        "command": [python, "-m", "sampleapp.web"],
                        "env": [
                            {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": secret, "key": "uri"}}},
                            {"name": "SAMPLEAPP_RELEASE", "value": version},
                            {"name": "LISTEN_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "LISTEN_PORT", "value": str(APP_PORT)},
                        ],
                        "ports": [{"name": "http", "containerPort": APP_PORT}],
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz", "port": APP_PORT},
                            "periodSeconds": 1,
                            "failureThreshold": 2,
                        },
                    }
                ]
            },
        },
        "replay": {"commands": stage_commands(python), "groupSize": 500, "stageTimeoutSeconds": 600, "stageRetries": 0},
        "strategy": {"scaleDownDelaySeconds": 5},
    }
    body.update(spec or {})
    return {"apiVersion": "projectorset.io/v1alpha1", "kind": "ProjectorSet", "metadata": metadata, "spec": body}
