"""The local service proxy on the real control plane: traffic follows the Service's EndpointSlices."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from projectorset.adapters.kubejson import KubeJson
from testbed.proxy import ServiceProxy
from testbed.workloads import (
    available_deployment,
    create,
    deployment,
    echo_container,
    http_json,
    pods,
    ready_slice_addresses,
    service,
    wait_until,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def kube(kube_api) -> KubeJson:
    """The session's API client, speaking plain JSON (objects read as `kubectl get -o json` shows them)."""
    return KubeJson(kube_api)


@pytest.fixture
def namespace(local_cluster, kube: KubeJson) -> Iterator[str]:
    name = f"proxy-{uuid.uuid4().hex[:8]}"
    local_cluster.create_namespace(name)
    yield name
    kube.request("DELETE", f"/api/v1/namespaces/{name}")


def _ask(port: int) -> dict:
    """One request on a new connection through the proxy."""
    return http_json("127.0.0.1", port)


def test_proxy_forwards_to_ready_pods_and_follows_a_selector_switch(kube_api, kube: KubeJson, namespace: str) -> None:
    for version in ("a", "b"):
        labels = {"app": "shop", "version": version}
        create(kube, namespace, deployment(f"shop-{version}", labels, 2, echo_container(version=version)))
    create(kube, namespace, service("shop", {"app": "shop", "version": "a"}))
    for version in ("a", "b"):
        wait_until(f"shop-{version} Available", available_deployment(kube, namespace, f"shop-{version}", 2), timeout=90)
    pod_names = {
        version: {p["metadata"]["name"] for p in pods(kube, namespace, f"app=shop,version={version}")}
        for version in ("a", "b")
    }
    a_ips = {p["status"]["podIP"] for p in pods(kube, namespace, "version=a")}
    wait_until(
        "the slices to list the a pods",
        lambda: ready_slice_addresses(kube, namespace, "shop") == {(ip, 8080) for ip in a_ips},
    )

    proxy = ServiceProxy(kube_api, namespace, "shop").start()
    try:
        answers = [_ask(proxy.port) for _ in range(6)]
        assert {a["version"] for a in answers} == {"a"}
        assert {a["pod"] for a in answers} == pod_names["a"]  # round-robin reaches both replicas

        # A connection opened before the switch (HTTP keep-alive) stays with its pod.
        held = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        held.request("GET", "/")
        before = json.loads(held.getresponse().read())
        assert before["version"] == "a"

        kube.patch(
            f"/api/v1/namespaces/{namespace}/services/shop", {"spec": {"selector": {"app": "shop", "version": "b"}}}
        )
        switched = time.monotonic()
        wait_until("a request to reach a b pod", lambda: _ask(proxy.port)["version"] == "b", interval=0.05)
        print(f"proxied traffic reached version b {time.monotonic() - switched:.2f} s after the selector patch")
        # Once the slices list only b pods, every new connection goes to b.
        b_ips = {p["status"]["podIP"] for p in pods(kube, namespace, "version=b")}
        wait_until("the proxy to drop the a endpoints", lambda: set(proxy.endpoints) == {(ip, 8080) for ip in b_ips})
        answers = [_ask(proxy.port) for _ in range(10)]
        assert {a["version"] for a in answers} == {"b"}
        assert {a["pod"] for a in answers} == pod_names["b"]

        held.request("GET", "/")
        assert json.loads(held.getresponse().read())["pod"] == before["pod"]
        held.close()
    finally:
        proxy.stop()


def test_proxy_rejects_connections_when_no_endpoint_is_ready(kube_api, kube: KubeJson, namespace: str) -> None:
    create(kube, namespace, service("nobody", {"app": "nobody"}))
    with ServiceProxy(kube_api, namespace, "nobody") as proxy:
        assert proxy.endpoints == []
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
            started = time.monotonic()
            try:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = conn.recv(1024)
            except ConnectionResetError:
                data = b""
            assert data == b""  # closed without an answer
            assert time.monotonic() - started < 5  # at once, not after a connect timeout
    # Stopping ends the proxy's threads, its endpoint watch included.
    assert not [t for t in threading.enumerate() if t.name.endswith("-nobody") and t.is_alive()]

    # A Service that does not exist (yet) has no endpoints either: the proxy starts and rejects.
    started = time.monotonic()
    with ServiceProxy(kube_api, namespace, "missing") as proxy:
        assert time.monotonic() - started < 10
        conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        with conn, contextlib.suppress(ConnectionResetError):  # a reset is a rejection too
            assert conn.recv(1024) == b""


def test_proxy_runs_as_a_command(local_cluster, kube: KubeJson, namespace: str) -> None:
    create(kube, namespace, deployment("solo", {"app": "solo"}, 1, echo_container(version="cli")))
    create(kube, namespace, service("solo", {"app": "solo"}))
    wait_until("solo Available", available_deployment(kube, namespace, "solo", 1), timeout=90)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tests_dir = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-m", "testbed.proxy", f"--kubeconfig={local_cluster.kubeconfig}"]
    argv += [f"--namespace={namespace}", "--service=solo", f"--port={port}"]
    process = subprocess.Popen(
        argv,
        env={**os.environ, "PYTHONPATH": str(tests_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert f"proxying 127.0.0.1:{port}" in process.stdout.readline()
        answer = wait_until("an answer through the proxy command", lambda: _ask(port))
        assert answer["version"] == "cli"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
