"""One pod, run by a thread: init containers, containers, probes, restarts, status reports, deletion."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from projectorset.adapters.kubejson import JSON, STRATEGIC_MERGE_PATCH, KubeJson, is_status
from testbed.kubelet.common import HOST_IP, log, now_rfc3339
from testbed.kubelet.containers import Container, should_restart
from testbed.kubelet.environment import EnvResolver, process_environment
from testbed.kubelet.events import EventRecorder
from testbed.kubelet.probes import Prober, ProbeTracker

# Graceful stops never wait longer than this, whatever the pod asks for: tests must not hang.
MAX_GRACE_SECONDS = 30


def pod_phase(restart_policy: str, containers: list[Container]) -> str:
    """The pod phase from its containers, as the kubelet's getPhase computes it."""
    if any(c.never_started for c in containers):
        return "Pending"
    if any(c.state == "running" or c.will_restart for c in containers):
        return "Running"
    # Every container has terminated for good.
    if all(c.exit_code == 0 for c in containers):
        return "Succeeded"
    return "Failed"


@dataclass
class KubeletConfig:
    node_name: str
    state_dir: Path
    restart_backoff: float = 1.0
    max_restart_backoff: float = 60.0


class PodWorker:
    """Runs one pod: init containers, then the containers, probes, restarts, status, deletion."""

    TICK = 0.1

    def __init__(
        self,
        pod: JSON,
        pod_ip: str,
        kube: KubeJson,
        config: KubeletConfig,
        on_exit: Callable[[PodWorker], None],
    ) -> None:
        meta = pod["metadata"]
        # Composition, not a Thread subclass: Thread's own private methods must not be shadowed.
        self.thread = threading.Thread(target=self.run, name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.pod_ip = pod_ip
        self.kube = kube
        self.config = config
        self.env_resolver = EnvResolver(kube)
        self.events = EventRecorder(kube, config.node_name)
        self.on_exit = on_exit
        self.restart_policy: str = pod["spec"].get("restartPolicy") or "Always"
        log_dir = config.state_dir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid}"
        self.init_containers = [
            Container(c, log_dir / f"{c['name']}.log") for c in pod["spec"].get("initContainers") or []
        ]
        self.containers = [Container(c, log_dir / f"{c['name']}.log") for c in pod["spec"]["containers"]]
        self.start_time = now_rfc3339()
        self.initialized = not self.init_containers
        self.terminal = False
        self._conditions: dict[str, JSON] = {}
        self._last_sent: JSON | None = None
        self._stop = threading.Event()
        self._stop_grace = 0.0
        self._delete_after_stop = False
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}"

    # -- requests from the manager ----------------------------------------------------------

    def update_pod(self, pod: JSON) -> None:
        with self._lock:
            self.pod = pod

    def request_stop(self, grace: float, delete: bool) -> None:
        """Stop the containers (SIGTERM, SIGKILL after ``grace``); delete the pod object after."""
        self._stop_grace = min(max(grace, 0.0), MAX_GRACE_SECONDS)
        self._delete_after_stop = self._delete_after_stop or delete
        self._stop.set()

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._report()
            while not self._stop.is_set() and not self.terminal:
                if not self.initialized:
                    self._step_init()
                else:
                    self._step()
                self._report()
                self._stop.wait(self.TICK)
            self._shutdown()
        except Exception:
            log.exception("pod worker %s/%s failed", self.namespace, self.pod_name)
            self._kill_all()
        finally:
            self.on_exit(self)

    def _start(self, container: Container) -> None:
        with self._lock:
            pod = self.pod
        try:
            variables = self.env_resolver.pod_variables(pod, container.spec, self.pod_ip)
        except Exception as error:
            # Missing Secret/ConfigMap, or the Node authorizer has not seen the pod's references
            # yet (403 for a moment): wait and try again, as the kubelet does.
            message = str(error)[:300]
            if container.message != message:
                self._event("Warning", "Failed", f"Error: {message}", container)
            container.reason, container.message = "CreateContainerConfigError", message
            container.next_start = time.monotonic() + 1
            return
        container.start(process_environment(pod, variables), variables)
        if container.state == "terminated":
            self._event("Warning", "Failed", f"Error: {container.message}", container)
        else:
            self._event("Normal", "Started", f"Started container {container.name}", container)
        log.info(
            "started %s/%s container %s (pid %s, ip %s)",
            self.namespace,
            self.pod_name,
            container.name,
            container.process.pid if container.process else "-",
            self.pod_ip,
        )

    def _event(self, kind: str, reason: str, message: str, container: Container) -> None:
        with self._lock:
            pod = self.pod
        self.events.pod(pod, kind, reason, message, container.name)

    def _after_exit(self, container: Container, policy: str) -> None:
        assert container.exit_code is not None
        if should_restart(policy, container.exit_code):
            container.schedule_restart(self.config.restart_backoff, self.config.max_restart_backoff)
            if container.exit_code != 0:
                self._event("Warning", "BackOff", f"Back-off restarting failed container {container.name}", container)

    def _step_init(self) -> None:
        """Init containers run one after the other; each must exit 0 before the next starts."""
        for container in self.init_containers:
            if container.state == "terminated" and container.exit_code == 0:
                continue
            now = time.monotonic()
            waiting = container.state != "running" and (container.never_started or container.will_restart)
            if waiting and now >= container.next_start:
                self._start(container)
            if container.poll() or (container.state == "terminated" and not container.will_restart):
                if container.exit_code == 0:
                    continue
                # A failed init container restarts unless the pod never restarts anything.
                policy = "Never" if self.restart_policy == "Never" else "OnFailure"
                self._after_exit(container, policy)
                if not container.will_restart:
                    self.terminal = True
            return
        self.initialized = True

    def _step(self) -> None:
        now = time.monotonic()
        for container in self.containers:
            if container.state != "running" and (container.never_started or container.will_restart):
                if now >= container.next_start:
                    self._start(container)
                    if container.state == "terminated":  # could not even start
                        self._after_exit(container, self.restart_policy)
                continue
            if container.poll():
                log.info(
                    "%s/%s container %s exited with %s",
                    self.namespace,
                    self.pod_name,
                    container.name,
                    container.exit_code,
                )
                self._after_exit(container, self.restart_policy)
                continue
            if container.state == "running":
                self._probe(container, now)
        if all(c.state == "terminated" and not c.will_restart for c in self.containers):
            self.terminal = True

    def _probe(self, container: Container, now: float) -> None:
        if container.startup is not None and not container.started:
            if container.startup.due(now):
                ok, message = Prober.run(container.startup.probe, self.pod_ip, container.spec, container.env)
                if container.startup.record(ok, now, message):
                    container.started = True
                elif container.startup.failures >= container.startup.failure_threshold:
                    self._kill_for_restart(container, container.startup, "startup", message)
            return
        if container.liveness is not None and container.liveness.due(now):
            ok, message = Prober.run(container.liveness.probe, self.pod_ip, container.spec, container.env)
            alive = container.liveness.record(ok, now, message)
            self._probe_failed(container, container.liveness, "Liveness")
            if not alive:
                self._kill_for_restart(container, container.liveness, "liveness", message)
                return
        if container.readiness is not None:
            if container.readiness.due(now):
                ok, message = Prober.run(container.readiness.probe, self.pod_ip, container.spec, container.env)
                container.readiness.record(ok, now, message)
                self._probe_failed(container, container.readiness, "Readiness")
            container.ready = container.readiness.result
        else:
            container.ready = container.started

    def _probe_failed(self, container: Container, tracker: ProbeTracker, kind: str) -> None:
        # One event per run of failures, not one per attempt: enough to see why, without a flood.
        if tracker.failures == 1:
            self._event("Warning", "Unhealthy", f"{kind} probe failed: {tracker.last_message}", container)

    def _kill_for_restart(self, container: Container, tracker: ProbeTracker, kind: str, message: str) -> None:
        self._event(
            "Normal", "Killing", f"Container {container.name} failed {kind} probe, will be restarted", container
        )
        log.info(
            "%s/%s container %s failed %s probe (%s): restarting",
            self.namespace,
            self.pod_name,
            container.name,
            kind,
            message,
        )
        grace = tracker.probe.get("terminationGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        container.stop(min(float(grace), MAX_GRACE_SECONDS), "Error")
        self._after_exit(container, self.restart_policy)

    def _shutdown(self) -> None:
        if self._stop.is_set():
            everything = self.init_containers + self.containers
            for container in everything:
                if self._delete_after_stop and container.state == "running":
                    self._event("Normal", "Killing", f"Stopping container {container.name}", container)
                container.begin_stop("Error")
            deadline = time.monotonic() + self._stop_grace
            while time.monotonic() < deadline and any(c.state == "running" for c in everything):
                for container in everything:
                    container.poll()
                time.sleep(0.05)
            self._kill_all()
            for container in everything:
                container.will_restart = False
            if self._delete_after_stop:
                # Report the final container states, then remove the object as the kubelet does.
                self._report()
                self._delete()
            # On kubelet shutdown the pod objects keep their last status, as with a real kubelet.
            return
        self._report()

    def _kill_all(self) -> None:
        for container in self.init_containers + self.containers:
            with contextlib.suppress(Exception):
                container.finish_stop()

    def _delete(self) -> None:
        delete_pod(self.kube, self.namespace, self.pod_name, self.uid)

    # -- status -------------------------------------------------------------------------------

    def _condition(self, kind: str, value: bool, reason: str = "") -> JSON:
        status = "True" if value else "False"
        previous = self._conditions.get(kind)
        if previous is None or previous["status"] != status:
            previous = {"type": kind, "status": status, "lastTransitionTime": now_rfc3339()}
            if reason:
                previous["reason"] = reason
            self._conditions[kind] = previous
        return previous

    def build_status(self) -> JSON:
        if not self.initialized:
            phase = "Failed" if self.terminal else "Pending"
        else:
            phase = pod_phase(self.restart_policy, self.containers)
        terminal = phase in ("Succeeded", "Failed")
        all_ready = all(c.ready for c in self.containers) and phase == "Running"
        not_ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        conditions = [
            self._condition("PodScheduled", True),
            self._condition(
                "Initialized", self.initialized or terminal, "" if self.initialized else "ContainersNotInitialized"
            ),
            self._condition("ContainersReady", all_ready, "" if all_ready else not_ready_reason),
            self._condition("Ready", all_ready, "" if all_ready else not_ready_reason),
        ]
        status: JSON = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        return status

    def _report(self) -> None:
        status = self.build_status()
        if status == self._last_sent:
            return
        try:
            self.kube.patch(
                f"{self.path}/status", {"metadata": {"uid": self.uid}, "status": status}, STRATEGIC_MERGE_PATCH
            )
            self._last_sent = status
        except Exception as error:
            if is_status(error, 404):
                # The pod object is gone (force deletion): nothing to report to, stop its processes.
                self.request_stop(0, delete=False)
            elif not is_status(error, 409):
                log.warning("status of %s/%s: %s", self.namespace, self.pod_name, error)


def delete_pod(kube: KubeJson, namespace: str, name: str, uid: str) -> None:
    """As the kubelet does once the containers are gone: the object goes away for good."""
    body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
    log.info("deleting pod %s/%s", namespace, name)
    try:
        kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)
    except Exception as error:
        if not is_status(error, 404, 409):
            log.warning("deleting pod %s/%s: %s", namespace, name, error)
