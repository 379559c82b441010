"""A Node whose pods run nothing: each is reported Running and Ready as soon as it is bound (a Job's
pod: Succeeded at once).

For benchmarks of the operator with many applications (``bench_scale``): their pods only need to
exist and be Ready for the Deployment, ReplicaSet and EndpointSlice controllers to do their real
work, while the process kubelet (one thread and one address of a /24 per pod) could run a few
hundred at most. The Node is tainted, so only pods that tolerate ``TAINT`` land on it; its
heartbeats are the process kubelet's (``NodeAgent``). Deleted pods are removed at once.
"""

from __future__ import annotations

import ipaddress
import itertools
import threading
from typing import Any

from projectorset.adapters.kubejson import JSON, STRATEGIC_MERGE_PATCH, KubeJson, is_status
from testbed.kubelet.common import HOST_IP, log, now_rfc3339
from testbed.kubelet.node import NodeAgent

NODE_NAME = "virtual-node"
TAINT = {"key": "projectorset.io/virtual-node", "value": "true", "effect": "NoSchedule"}
# Addresses for the pods' status only; nothing listens on them.
POD_RANGE = ipaddress.ip_network("10.250.0.0/16")


def pod_placement() -> dict[str, Any]:
    """What a pod template needs to run on the virtual node (``spec`` keys)."""
    return {
        "nodeSelector": {"kubernetes.io/hostname": NODE_NAME},
        "tolerations": [{**TAINT, "operator": "Equal"}],
    }


class _VirtualNodeAgent(NodeAgent):
    def _status(self) -> JSON:
        status = super()._status()
        for key in ("capacity", "allocatable"):
            status[key] = {**status[key], "pods": "5000"}
        return status


class VirtualNode:
    def __init__(self, kube: KubeJson) -> None:
        self.kube = kube
        self.agent = _VirtualNodeAgent(kube, NODE_NAME, taints=[TAINT])
        self._addresses = (str(address) for address in itertools.islice(POD_RANGE.hosts(), 1, None))
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> VirtualNode:
        self.agent.register()
        self._threads = [
            threading.Thread(target=self.agent.run, name="virtual-node-heartbeat", daemon=True),
            threading.Thread(target=self._run, name="virtual-node-pods", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.agent.stop()

    def _run(self) -> None:
        selector = f"spec.nodeName={NODE_NAME}"
        while not self.agent._stop.is_set():
            try:
                listing = self.kube.get("/api/v1/pods", fieldSelector=selector)
                for pod in listing["items"]:
                    self._handle(pod)
                version = listing["metadata"]["resourceVersion"]
                for event in self.kube.watch("/api/v1/pods", version, fieldSelector=selector):
                    if self.agent._stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._handle(event["object"])
            except Exception as error:
                log.warning("virtual node: pod watch failed: %s", error)
                self.agent._stop.wait(1)

    def _handle(self, pod: JSON) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        try:
            if meta.get("deletionTimestamp"):
                self.kube.request("DELETE", path, body={"gracePeriodSeconds": 0})
            elif pod["spec"].get("restartPolicy", "Always") != "Always":
                # A Job's pod (a replay stage, the migrate step): done at once, successfully.
                if (pod.get("status") or {}).get("phase") != "Succeeded":
                    self.kube.patch(f"{path}/status", {"status": self._succeeded(pod)}, STRATEGIC_MERGE_PATCH)
            elif (pod.get("status") or {}).get("phase") != "Running":
                self.kube.patch(f"{path}/status", {"status": self._running(pod)}, STRATEGIC_MERGE_PATCH)
        except Exception as error:
            if not is_status(error, 404):
                log.warning("virtual node: %s/%s: %s", meta["namespace"], meta["name"], error)

    def _succeeded(self, pod: JSON) -> JSON:
        now = now_rfc3339()
        status = self._running(pod)
        status["phase"] = "Succeeded"
        status["conditions"] = [
            {
                "type": kind,
                "status": "True" if kind in ("PodScheduled", "Initialized") else "False",
                "lastTransitionTime": now,
            }
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        for container in status["containerStatuses"]:
            container.update(ready=False, started=False)
            container["state"] = {
                "terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
            }
        return status

    def _running(self, pod: JSON) -> JSON:
        now = now_rfc3339()
        with self._lock:
            address = next(self._addresses)
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        return {
            "phase": "Running",
            "podIP": address,
            "podIPs": [{"ip": address}],
            "hostIP": HOST_IP,
            "startTime": now,
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
                for container in pod["spec"]["containers"]
            ],
        }
