"""The pods bound to the node: list and watch them, keep one ``PodWorker`` per pod."""

from __future__ import annotations

import threading
import time

from projectorset.adapters.kubejson import JSON, Gone, KubeJson
from testbed.kubelet.addresses import IPAllocator
from testbed.kubelet.common import HOST_IP, log
from testbed.kubelet.pod_worker import KubeletConfig, PodWorker, delete_pod


class PodManager:
    """Lists and watches the pods bound to this node and keeps one worker per pod."""

    def __init__(self, kube: KubeJson, config: KubeletConfig, ips: IPAllocator) -> None:
        self.kube = kube
        self.config = config
        self.ips = ips
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()  # uids whose worker ended: never start those again
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def _worker_exit(self, worker: PodWorker) -> None:
        # A pod's IP is free once its processes are gone (terminal pods keep it only in status).
        self.ips.release(worker.uid)
        with self._lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]
            self.finished.add(worker.uid)

    def handle(self, kind: str, pod: JSON) -> None:
        if self._stopping.is_set():
            return
        meta = pod["metadata"]
        uid = meta["uid"]
        phase = (pod.get("status") or {}).get("phase")
        with self._lock:
            worker = self.workers.get(uid)
            finished = uid in self.finished
        if kind == "DELETED":
            if worker is not None:
                worker.request_stop(0, delete=False)
            with self._lock:
                self.finished.discard(uid)
            return
        deleting = meta.get("deletionTimestamp") is not None
        if worker is not None:
            worker.update_pod(pod)
            if deleting:
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                worker.request_stop(float(grace), delete=True)
            return
        if deleting:
            # Nothing runs for it (finished, or never started): the object can go at once.
            delete_pod(self.kube, meta["namespace"], meta["name"], uid)
            return
        if finished or phase in ("Succeeded", "Failed"):
            return
        self._start_worker(pod)

    def is_running(self, namespace: str, name: str) -> bool:
        with self._lock:
            return any(w.namespace == namespace and w.pod_name == name for w in self.workers.values())

    def _start_worker(self, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        if pod["spec"].get("hostNetwork"):
            pod_ip = HOST_IP
        else:
            # A re-adopted pod keeps its address when it is free: the API does not let it change.
            pod_ip = self.ips.allocate(uid, preferred=(pod.get("status") or {}).get("podIP"))
        worker = PodWorker(pod, pod_ip, self.kube, self.config, self._worker_exit)
        with self._lock:
            self.workers[uid] = worker
        worker.thread.start()

    def run(self) -> None:
        """List, then watch from the list's resourceVersion; list again on 410 Gone."""
        selector = f"spec.nodeName={self.config.node_name}"
        while not self._stopping.is_set():
            try:
                listing = self.kube.get("/api/v1/pods", fieldSelector=selector)
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self.handle("ADDED", pod)
                with self._lock:
                    vanished = [w for uid, w in self.workers.items() if uid not in seen]
                for worker in vanished:
                    self.handle("DELETED", worker.pod)
                version = listing["metadata"]["resourceVersion"]
                while not self._stopping.is_set():
                    for event in self.kube.watch("/api/v1/pods", version, fieldSelector=selector):
                        obj = event["object"]
                        version = obj["metadata"].get("resourceVersion", version)
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self.handle(event["type"], obj)
                        if self._stopping.is_set():
                            return
            except Gone:
                log.info("pod watch expired: listing again")
            except Exception as error:
                if self._stopping.is_set():
                    return
                log.warning("pod watch failed (%s): retrying", error)
                time.sleep(1)

    def stop_all(self, grace: float) -> None:
        """Kubelet shutdown: stop every container, leave the pod objects alone."""
        self._stopping.set()
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.request_stop(grace, delete=False)
        for worker in workers:
            worker.thread.join(grace + 5)
