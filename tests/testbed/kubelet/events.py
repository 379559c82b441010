"""core/v1 Events about pods, as the kubelet posts them (what ``kubectl describe pod`` shows)."""

from __future__ import annotations

from projectorset.adapters.kubejson import JSON, KubeJson
from testbed.kubelet.common import log, now_rfc3339


class EventRecorder:
    """Posts core/v1 Events about pods, as the kubelet does, for `kubectl describe` and `get events`."""

    def __init__(self, kube: KubeJson, node_name: str) -> None:
        self.kube = kube
        self.node_name = node_name

    def pod(self, pod: JSON, kind: str, reason: str, message: str, container: str = "") -> None:
        meta = pod["metadata"]
        now = now_rfc3339()
        involved: JSON = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": involved,
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.kube.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)
        except Exception as error:  # events are best effort, as in the kubelet
            log.debug("event %s for %s/%s not recorded: %s", reason, meta["namespace"], meta["name"], error)
