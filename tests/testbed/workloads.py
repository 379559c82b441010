"""Manifests and waiting helpers for tests that run workloads on the local cluster's process kubelet."""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiClient

from projectorset.adapters.kubejson import JSON, KubeJson, is_status

# The test bed's processes share one client between many threads (a watch each, a worker per pod).
POOL_SIZE = 64


def api_client(kubeconfig: str) -> ApiClient:
    """The test bed's client for the cluster of ``kubeconfig`` (typed APIs and ``KubeJson`` alike)."""
    return KubeJson.connect(kubeconfig, pool_size=POOL_SIZE).api_client


# Images are ignored by the process kubelet; a realistic name keeps the manifests valid and honest.
IMAGE = "python:3.11-slim"


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` and the last error."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # keep polling: the API or the pod may not be there yet
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})")


def http_json(host: str, port: int, path: str = "/", timeout: float = 5.0) -> Any:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return json.loads(body)
    finally:
        conn.close()


def echo_container(
    *,
    version: str = "",
    readiness: bool = True,
    extra_env: list[JSON] | None = None,
    extra_args: list[str] | None = None,
) -> JSON:
    """A container running ``testbed.podapps serve`` on its pod IP, port 8080 (named ``http``)."""
    env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "VERSION", "value": version},
        *(extra_env or []),
    ]
    container: JSON = {
        "name": "app",
        "image": IMAGE,
        # The venv's interpreter by absolute path: images are ignored, the command must exist here.
        "command": [sys.executable, "-m", "testbed.podapps", "serve", "--port", "8080"],
        "args": extra_args or [],
        "env": env,
        "ports": [{"name": "http", "containerPort": 8080}],
    }
    if readiness:
        container["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 1,
            # Tolerate a slow answer or two on a busy machine instead of flapping the endpoint.
            "failureThreshold": 3,
            "timeoutSeconds": 2,
        }
    return container


def deployment(name: str, labels: dict[str, str], replicas: int, container: JSON) -> JSON:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 5},
            },
        },
    }


def service(name: str, selector: dict[str, str]) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


_PLURALS = {
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
}


def collection(kind: str, namespace: str) -> str:
    return _PLURALS[kind].format(ns=namespace)


def create(kube: KubeJson, namespace: str, manifest: JSON) -> JSON:
    return kube.request("POST", collection(manifest["kind"], namespace), body=manifest)


def get(kube: KubeJson, namespace: str, kind: str, name: str) -> JSON:
    return kube.get(f"{collection(kind, namespace)}/{name}")


def exists(kube: KubeJson, namespace: str, kind: str, name: str) -> bool:
    try:
        get(kube, namespace, kind, name)
        return True
    except Exception as error:
        if is_status(error, 404):
            return False
        raise


def pods(kube: KubeJson, namespace: str, selector: str = "") -> list[JSON]:
    query = {"labelSelector": selector} if selector else {}
    return kube.get(collection("Pod", namespace), **query)["items"]


def condition(obj: JSON, kind: str) -> JSON | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def is_true(obj: JSON, kind: str) -> bool:
    found = condition(obj, kind)
    return found is not None and found["status"] == "True"


def available_deployment(kube: KubeJson, namespace: str, name: str, replicas: int) -> Callable[[], JSON | None]:
    """A check for ``wait_until``: the Deployment with all replicas updated, ready and available."""

    def check() -> JSON | None:
        dep = get(kube, namespace, "Deployment", name)
        status = dep.get("status") or {}
        done = (
            status.get("observedGeneration") == dep["metadata"]["generation"]
            and status.get("updatedReplicas") == replicas
            and status.get("readyReplicas") == replicas
            and status.get("availableReplicas") == replicas
            and is_true(dep, "Available")
        )
        return dep if done else None

    return check


def ready_slice_addresses(kube: KubeJson, namespace: str, service_name: str) -> set[tuple[str, int]]:
    """(address, port) of the ready endpoints the EndpointSlice controller published for a Service."""
    path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
    found: set[tuple[str, int]] = set()
    for item in kube.get(path, labelSelector=f"kubernetes.io/service-name={service_name}")["items"]:
        ports = [p["port"] for p in item.get("ports") or []]
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready"):
                found.update((address, port) for address in endpoint["addresses"] for port in ports)
    return found
