"""The local control plane is the real thing: pinned version, RBAC, storage, helm, clean stop."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from kubernetes import client

from testbed import toolchain
from testbed.cluster import COMPONENTS, LocalCluster, _alive


def test_server_reports_the_pinned_version(kubectl) -> None:
    result = kubectl("version", "-o", "json", check=True)
    versions = json.loads(result.stdout)
    assert versions["serverVersion"]["gitVersion"] == toolchain.KUBERNETES_VERSION
    assert versions["clientVersion"]["gitVersion"] == toolchain.KUBERNETES_VERSION


def test_rbac_is_enforced(kubectl) -> None:
    admin = kubectl("auth", "can-i", "create", "configmaps", "-n", "default")
    assert admin.stdout.strip() == "yes"
    nobody = kubectl("auth", "can-i", "create", "configmaps", "-n", "default", "--as=someone")
    assert nobody.stdout.strip() == "no", nobody.stderr
    assert nobody.returncode == 1
    # And a real request as that user is refused by the server, not only by the review.
    denied = kubectl("get", "configmaps", "-n", "default", "--as=someone")
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr


def test_namespace_and_configmap_round_trip(local_cluster: LocalCluster, kube_api: client.ApiClient) -> None:
    namespace = f"roundtrip-{uuid.uuid4().hex[:8]}"
    local_cluster.create_namespace(namespace)
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings"), data={"answer": "42"})
    )
    read = core.read_namespaced_config_map("settings", namespace)
    assert read.data == {"answer": "42"}
    # The namespace's default ServiceAccount exists, so pods can be admitted there.
    account = core.read_namespaced_service_account("default", namespace)
    assert account.metadata is not None and account.metadata.name == "default"
    core.delete_namespace(namespace)


def test_helm_runs() -> None:
    result = subprocess.run(
        [str(toolchain.binary("helm")), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().startswith(toolchain.HELM_VERSION)


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(cmdline)
    return found


def test_stop_leaves_no_process_and_no_directory() -> None:
    # A second, separate cluster, so the session's cluster is not disturbed.
    cluster = LocalCluster.start()
    workdir = cluster.workdir
    try:
        assert sorted(cluster.running()) == sorted(COMPONENTS)
        started = [(c.pid, c.start_time) for c in cluster.components]
        # Every component's flags name the workdir; a pod's process is found by its marker.
        assert _processes_mentioning(str(workdir))
        marker = f"pod-marker-{uuid.uuid4().hex}"
        cluster.create_namespace("stoptest")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper"},
            "spec": {
                "containers": [
                    {
                        "name": "sleeper",
                        "image": "ignored",
                        "command": [sys.executable, "-c", "import time; time.sleep(3600)", marker],
                    }
                ]
            },
        }
        status, reply = cluster.request("POST", "/api/v1/namespaces/stoptest/pods", pod)
        assert status == 201, reply
        deadline = time.monotonic() + 60
        while not _processes_mentioning(marker):
            assert time.monotonic() < deadline, "the kubelet never started the pod's process"
            time.sleep(0.2)
    finally:
        cluster.stop()
    assert _processes_mentioning(str(workdir)) == []
    assert _processes_mentioning(marker) == []
    assert [pid for pid, start_time in started if _alive(pid, start_time)] == []
    assert not workdir.exists()
