"""The Node: registration (with taints), Lease renewals and status heartbeats that keep it Ready."""

from __future__ import annotations

import os
import platform
import threading
import uuid
from datetime import UTC, datetime

from projectorset.adapters.kubejson import JSON, STRATEGIC_MERGE_PATCH, KubeJson, is_status
from testbed.kubelet.common import HOST_IP, log, now_rfc3339


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeAgent:
    """Registers the Node and keeps it Ready: Lease renewals and status heartbeats."""

    LEASE_SECONDS = 40

    def __init__(
        self,
        kube: KubeJson,
        node_name: str,
        heartbeat: float = 10.0,
        taints: list[JSON] | None = None,
        kubelet_port: int = 10250,
    ) -> None:
        self.kube = kube
        self.node_name = node_name
        self.taints = taints or []
        self.kubelet_port = kubelet_port
        self.heartbeat = heartbeat
        self.boot_id = str(uuid.uuid4())
        self._stop = threading.Event()
        self._ready_since = now_rfc3339()

    def _status(self) -> JSON:
        now = now_rfc3339()
        cpu = str(os.cpu_count() or 4)
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki"
        resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}

        def condition(kind: str, status: str, reason: str, message: str, since: str) -> JSON:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": since,
            }

        uname = platform.uname()
        return {
            "capacity": resources,
            "allocatable": resources,
            # InternalIP only: the API server reaches the kubelet (`kubectl logs`) at the first
            # address of its preferred types, and a Hostname would have to resolve.
            "addresses": [{"type": "InternalIP", "address": HOST_IP}],
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "enough memory", self._ready_since),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure", self._ready_since),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "enough PIDs", self._ready_since),
                condition(
                    "Ready", "True", "KubeletReady", "process kubelet is posting ready status", self._ready_since
                ),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": self.boot_id.replace("-", ""),
                "systemUUID": self.boot_id,
                "bootID": self.boot_id,
                "kernelVersion": uname.release,
                "osImage": "process kubelet",
                "containerRuntimeVersion": "process://1.0",
                "kubeletVersion": "v0.0.0-process",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(uname.machine, uname.machine),
            },
        }

    def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": self._status()["nodeInfo"]["architecture"],
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
            # Like the kubelet's --register-with-taints: only applied when the Node is created.
            "spec": {"taints": self.taints},
        }
        try:
            self.kube.request("POST", "/api/v1/nodes", body=body)
        except Exception as error:
            if not is_status(error, 409):
                raise
        # The Lease first: a node that reports Ready already has its heartbeat (as in run()).
        self.renew_lease()
        self.update_status()

    def update_status(self) -> None:
        self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._status()}, STRATEGIC_MERGE_PATCH)

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": self.LEASE_SECONDS,
            "renewTime": now_micro(),
        }
        try:
            self.kube.patch(path, {"spec": spec})
        except Exception as error:
            if not is_status(error, 404):
                raise
            node = self.kube.get(f"/api/v1/nodes/{self.node_name}")
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node_name,
                    "namespace": "kube-node-lease",
                    # Owned by the Node, as the real kubelet's lease is, so it goes with it.
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node["metadata"]["uid"]}
                    ],
                },
                "spec": spec,
            }
            self.kube.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body=body)

    def run(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.renew_lease()
                self.update_status()
            except Exception as error:
                log.warning("node heartbeat failed: %s", error)

    def stop(self) -> None:
        self._stop.set()


def parse_taints(text: str) -> list[JSON]:
    """``key=value:Effect,key:Effect`` as the kubelet's --register-with-taints takes them."""
    taints = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_value, _, effect = item.rpartition(":")
        if not key_value or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError(f"invalid taint {item!r}: expected key[=value]:Effect")
        key, _, value = key_value.partition("=")
        taint: JSON = {"key": key, "effect": effect}
        if value:
            taint["value"] = value
        taints.append(taint)
    return taints
