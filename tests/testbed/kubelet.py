"""A process kubelet: runs the containers of pods bound to one Node as local processes.

Run as ``python -m testbed.kubelet --kubeconfig PATH --node-name local-node --state-dir DIR``.

There is no container runtime on the test machines, so a container is a process group started from
the container's ``command``/``args`` (the image is ignored), with the environment the pod spec
describes. Each pod gets its own IP on this machine, so two replicas can listen on the same port:
an address of a /24 that the kubelet routes to ``lo`` (see ``PodNetwork``: loopback addresses
would do for the processes, but the API rejects them in EndpointSlices). Apps bind to the pod IP,
which they get from a ``status.podIP`` fieldRef as in any cluster. A container's output goes to
``<state-dir>/pods/<namespace>_<pod>_<uid>/<container>.log``. Everything else follows the real
kubelet closely enough for the Deployment, ReplicaSet, Job and EndpointSlice controllers to work:
Node registration and heartbeats (Lease and status), probes, restarts with back-off, pod phase,
conditions and container statuses, graceful deletion.

The parts, one class per concern:

- ``NodeAgent`` registers the Node and keeps it Ready (Lease renewal and status heartbeats).
- ``PodManager`` lists and watches the pods bound to the node and owns one ``PodWorker`` each.
- ``PodWorker`` (a thread per pod) starts, probes, restarts and stops the pod's containers and
  reports the pod status.
- ``Container`` is one container's process and its observed state.
- ``Prober`` runs a single httpGet/tcpSocket/exec probe; ``ProbeTracker`` applies the thresholds.
- ``PodNetwork`` picks and routes the pod IP range; ``IPAllocator`` hands out its addresses.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import http.client
import http.server
import ipaddress
import logging
import os
import platform
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from testbed.kuberaw import JSON, Gone, RawKube, is_status, load_api_client

log = logging.getLogger("testbed.kubelet")

HOST_IP = "127.0.0.1"
# Graceful stops never wait longer than this, whatever the pod asks for: tests must not hang.
MAX_GRACE_SECONDS = 30
# Variables a container inherits from the kubelet itself, so `python -m ...` and tools on PATH work.
INHERITED_ENV = ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$(\$|\(([^)]*)\))")


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` escapes, unknown references stay as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        name = match.group(2)
        if name in variables:
            return variables[name]
        return match.group(0)

    return _VAR_REF.sub(replace, text)


class IPAllocator:
    """Pod IPs from one /24 (.2 to .254); the lowest free address is handed out first."""

    def __init__(self, network: str = "127.0.0.0/24", first: int = 2, last: int = 254) -> None:
        self.network = ipaddress.ip_network(network)
        self._base = int(self.network.network_address)
        self._free = list(range(first, min(last, self.network.num_addresses - 2) + 1))
        self._owners: dict[str, int] = {}
        self._lock = threading.Lock()

    def _address(self, host: int) -> str:
        return str(ipaddress.ip_address(self._base + host))

    def allocate(self, owner: str, preferred: str | None = None) -> str:
        with self._lock:
            if owner in self._owners:
                return self._address(self._owners[owner])
            wanted = None
            with contextlib.suppress(ValueError):
                if preferred and ipaddress.ip_address(preferred) in self.network:
                    wanted = int(ipaddress.ip_address(preferred)) - self._base
            if wanted is None or wanted not in self._free:
                if not self._free:
                    raise RuntimeError(f"no free pod IP left in {self.network}")
                wanted = min(self._free)
            self._free.remove(wanted)
            self._owners[owner] = wanted
            return self._address(wanted)

    def release(self, owner: str) -> None:
        with self._lock:
            number = self._owners.pop(owner, None)
            if number is not None:
                self._free.append(number)

    def in_use(self) -> dict[str, str]:
        with self._lock:
            return {owner: self._address(n) for owner, n in self._owners.items()}


class PodNetwork:
    """Where pod IPs come from: a /24 routed to ``lo``, or loopback addresses as a fallback.

    Linux delivers all of 127/8 locally, but the API rejects loopback addresses in EndpointSlices,
    so Services would have no endpoints. A ``local`` route (``ip route add local NET dev lo``)
    makes a whole non-loopback range local the same way, without any interface or namespace.
    The default range is a free /24 of 198.18.0.0/15 (RFC 2544, reserved for tests and never on a
    real network); the route is removed on exit. Without CAP_NET_ADMIN the kubelet falls back to
    127.0.0.N: pods still run and are reachable, but their Services get no endpoints.

    Several clusters may run at once (a test run and the demo): each kubelet holds an flock on
    its range's lock file for as long as it lives, so ranges are never shared, and the range of a
    kubelet that was killed (its route left behind) is taken over by the next one.
    """

    AUTO_RANGE = ipaddress.ip_network("198.18.0.0/15")

    def __init__(
        self,
        cidr: str | None = None,
        run: Callable[[list[str]], tuple[int, str]] | None = None,
        lock_dir: Path | None = None,
    ) -> None:
        self.cidr = cidr
        self.run = run or self._ip
        self.lock_dir = lock_dir or Path(tempfile.gettempdir()) / "testbed-pod-networks"
        self.added: str | None = None
        self._lock_file: IO[str] | None = None

    @staticmethod
    def _ip(argv: list[str]) -> tuple[int, str]:
        try:
            result = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            return 127, "the ip command (iproute2) is not installed"
        return result.returncode, result.stderr.strip()

    def _claim(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        """Lock the range for this process's lifetime; the kernel drops the lock when it dies."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.lock_dir / f"{network.network_address}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            return False
        self._lock_file = lock_file
        return True

    def _unclaim(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def setup(self) -> IPAllocator:
        if self.cidr == "loopback":
            return IPAllocator("127.0.0.0/24")
        if self.cidr:
            code, error = self.run(["route", "add", "local", self.cidr, "dev", "lo"])
            if code == 0:
                self.added = self.cidr
            elif "File exists" not in error:  # an existing route is someone's deliberate setup
                raise RuntimeError(f"cannot route pod network {self.cidr} to lo: {error}")
            return IPAllocator(self.cidr)
        for candidate in self.AUTO_RANGE.subnets(new_prefix=24):
            if not self._claim(candidate):
                continue  # a live kubelet uses it
            code, error = self.run(["route", "add", "local", str(candidate), "dev", "lo"])
            if code == 0 or "File exists" in error:  # "exists": left by a kubelet that was killed
                self.added = str(candidate)
                return IPAllocator(self.added)
            self._unclaim()
            log.warning(
                "cannot route a pod network to lo (%s): pods get 127.0.0.N addresses, which "
                "EndpointSlices reject, so Services will have no endpoints",
                error,
            )
            break
        return IPAllocator("127.0.0.0/24")

    def teardown(self) -> None:
        if self.added:
            self.run(["route", "del", "local", self.added, "dev", "lo"])
            self.added = None
        self._unclaim()


class ConfigError(Exception):
    """A Secret, ConfigMap or key the container needs is missing (CreateContainerConfigError)."""


def resolve_port(port: Any, container: JSON) -> int:
    """A probe port is a number or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container {container.get('name')} has no port named {port!r}")


class Prober:
    """Runs one probe attempt. Returns (success, message)."""

    @staticmethod
    def run(probe: JSON, pod_ip: str, container: JSON, env: Mapping[str, str]) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds") or 1)
        try:
            if "httpGet" in probe:
                return Prober._http(probe["httpGet"], pod_ip, container, timeout)
            if "tcpSocket" in probe:
                spec = probe["tcpSocket"]
                host = spec.get("host") or pod_ip
                with socket.create_connection((host, resolve_port(spec["port"], container)), timeout=timeout):
                    return True, ""
            if "exec" in probe:
                result = subprocess.run(
                    probe["exec"].get("command") or [],
                    env=dict(env),
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
                output = (result.stdout + result.stderr).decode(errors="replace")[:200]
                return result.returncode == 0, output
            return False, "unsupported probe handler"
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout}s"
        except (OSError, ValueError, http.client.HTTPException) as error:
            return False, str(error)

    @staticmethod
    def _http(spec: JSON, pod_ip: str, container: JSON, timeout: float) -> tuple[bool, str]:
        host = spec.get("host") or pod_ip
        port = resolve_port(spec["port"], container)
        scheme = (spec.get("scheme") or "HTTP").upper()
        if scheme == "HTTPS":
            import ssl

            context = ssl._create_unverified_context()  # the real kubelet skips verification too
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        headers = {"User-Agent": "kube-probe/process-kubelet", "Accept": "*/*"}
        for header in spec.get("httpHeaders") or []:
            headers[header["name"]] = header["value"]
        try:
            conn.request("GET", spec.get("path") or "/", headers=headers)
            response = conn.getresponse()
            response.read(1024)
            return 200 <= response.status < 400, f"HTTP {response.status}"
        finally:
            conn.close()


class ProbeTracker:
    """Applies a probe's timing and thresholds to the attempts' results."""

    def __init__(self, probe: JSON, initial: bool, started_at: float) -> None:
        self.probe = probe
        self.result = initial
        self.initial_delay = float(probe.get("initialDelaySeconds") or 0)
        self.period = float(probe.get("periodSeconds") or 10)
        self.success_threshold = int(probe.get("successThreshold") or 1)
        self.failure_threshold = int(probe.get("failureThreshold") or 3)
        self.next_at = started_at + self.initial_delay
        self.successes = 0
        self.failures = 0
        self.last_message = ""

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, now: float, message: str = "") -> bool:
        """Count one attempt; return the (possibly new) result."""
        self.next_at = now + self.period
        self.last_message = message
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.success_threshold:
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.failure_threshold:
                self.result = False
        return self.result


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


def restart_delay(restart_count: int, base: float, cap: float) -> float:
    """Exponential back-off before the next restart: base, 2*base, 4*base ... up to cap."""
    return min(base * (2**restart_count), cap)


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


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


class EnvResolver:
    """Builds a container's environment from env/envFrom, reading Secrets and ConfigMaps."""

    def __init__(self, kube: RawKube) -> None:
        self.kube = kube

    def _object(self, namespace: str, kind: str, name: str, optional: bool) -> JSON | None:
        try:
            return self.kube.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        except Exception as error:
            if is_status(error, 404):
                if optional:
                    return None
                raise ConfigError(f'{kind[:-1]} "{name}" not found') from error
            raise

    @staticmethod
    def _data(obj: JSON, kind: str) -> dict[str, str]:
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data = dict(obj.get("data") or {})
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value).decode(errors="replace")
        return data

    def _key(self, namespace: str, kind: str, ref: JSON) -> str | None:
        optional = bool(ref.get("optional"))
        obj = self._object(namespace, kind, ref["name"], optional)
        if obj is None:
            return None
        data = self._data(obj, kind)
        if ref["key"] not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {ref['key']} in {kind[:-1]} {namespace}/{ref['name']}")
        return data[ref["key"]]

    @staticmethod
    def _field(pod: JSON, path: str, pod_ip: str) -> str:
        meta = pod["metadata"]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
        if match:
            return (meta.get(match.group(1)) or {}).get(match.group(2), "")
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": pod_ip,
            "status.podIPs": pod_ip,
            "status.hostIP": HOST_IP,
            "status.hostIPs": HOST_IP,
        }
        if path not in values:
            raise ConfigError(f"unsupported fieldRef {path}")
        return values[path]

    @staticmethod
    def _resource(container: JSON, ref: JSON) -> str:
        # Enough for apps that read their limits: the raw quantity, or "0" when unset.
        kind, _, resource = ref["resource"].partition(".")
        return str(((container.get("resources") or {}).get(kind) or {}).get(resource, "0"))

    def pod_variables(self, pod: JSON, container: JSON, pod_ip: str) -> dict[str, str]:
        """The variables the pod spec defines for this container (envFrom, then env)."""
        namespace = pod["metadata"]["namespace"]
        variables: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, key in (("secrets", "secretRef"), ("configmaps", "configMapRef")):
                if key in source:
                    ref = source[key]
                    obj = self._object(namespace, kind, ref["name"], bool(ref.get("optional")))
                    if obj is not None:
                        for key_name, data_value in self._data(obj, kind).items():
                            variables[prefix + key_name] = data_value
        for entry in container.get("env") or []:
            name = entry["name"]
            if "valueFrom" not in entry:
                variables[name] = expand(entry.get("value", ""), variables)
                continue
            source = entry["valueFrom"]
            value: str | None
            if "secretKeyRef" in source:
                value = self._key(namespace, "secrets", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = self._key(namespace, "configmaps", source["configMapKeyRef"])
            elif "fieldRef" in source:
                value = self._field(pod, source["fieldRef"]["fieldPath"], pod_ip)
            elif "resourceFieldRef" in source:
                value = self._resource(container, source["resourceFieldRef"])
            else:
                raise ConfigError(f"unsupported valueFrom for {name}")
            if value is not None:
                variables[name] = value
        return variables


def process_environment(pod: JSON, variables: Mapping[str, str]) -> dict[str, str]:
    """What the process sees: a few of the kubelet's own variables, overridden by the pod's."""
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env["HOSTNAME"] = pod["metadata"]["name"]
    env.update(variables)
    return env


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclass
class Container:
    spec: JSON
    log_path: Path
    restart_count: int = 0
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    started_mono: float = 0.0
    finished_at: str = ""
    exit_code: int | None = None
    last_state: JSON = field(default_factory=dict)
    never_started: bool = True
    will_restart: bool = False
    next_start: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    readiness: ProbeTracker | None = None
    liveness: ProbeTracker | None = None
    startup: ProbeTracker | None = None
    stop_reason: str = ""

    @property
    def name(self) -> str:
        return self.spec["name"]

    def start(self, env: dict[str, str], variables: Mapping[str, str]) -> None:
        """Start the process in its own session so the whole group can be signalled."""
        argv = [expand(a, variables) for a in (self.spec.get("command") or []) + (self.spec.get("args") or [])]
        self.env = env
        self.never_started = False
        self.will_restart = False
        self.stop_reason = ""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not argv:
                raise OSError("no command: images are not run, the pod must give a command")
            with open(self.log_path, "ab") as log_file:
                self.process = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=self.spec.get("workingDir") or None,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as error:
            # Like a runtime that cannot start the entrypoint: terminated with 128, StartError.
            self.process = None
            self.state, self.reason, self.message = "terminated", "StartError", str(error)
            self.exit_code = 128
            self.started_at = self.finished_at = now_rfc3339()
            return
        self.state, self.reason, self.message = "running", "", ""
        self.exit_code = None
        self.started_at = now_rfc3339()
        self.started_mono = time.monotonic()
        self.finished_at = ""
        self.ready = False
        self.started = "startupProbe" not in self.spec
        now = time.monotonic()
        self.readiness = (
            ProbeTracker(self.spec["readinessProbe"], False, now) if "readinessProbe" in self.spec else None
        )
        self.liveness = ProbeTracker(self.spec["livenessProbe"], True, now) if "livenessProbe" in self.spec else None
        self.startup = ProbeTracker(self.spec["startupProbe"], False, now) if "startupProbe" in self.spec else None

    def poll(self) -> bool:
        """Notice the process's exit; return True when it has just terminated."""
        if self.state != "running" or self.process is None:
            return False
        code = self.process.poll()
        if code is None:
            return False
        self._terminated(code)
        return True

    def _terminated(self, code: int) -> None:
        # Leftover children die with the main process, as they would with its PID namespace.
        self._signal_group(signal.SIGKILL)
        self.state = "terminated"
        self.exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128+N
        if self.stop_reason:
            self.reason = self.stop_reason
        else:
            self.reason = "Completed" if self.exit_code == 0 else "Error"
        self.finished_at = now_rfc3339()
        self.ready = False

    def _signal_group(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def begin_stop(self, reason: str) -> None:
        if self.state == "running":
            self.stop_reason = reason
            self._signal_group(signal.SIGTERM)

    def finish_stop(self) -> None:
        """SIGKILL whatever is left and record the exit."""
        if self.state == "running" and self.process is not None:
            self._signal_group(signal.SIGKILL)
            self._terminated(self.process.wait())

    def stop(self, grace: float, reason: str) -> None:
        self.begin_stop(reason)
        deadline = time.monotonic() + grace
        while self.state == "running" and time.monotonic() < deadline:
            if self.poll():
                return
            time.sleep(0.05)
        self.finish_stop()

    def status(self) -> JSON:
        state: JSON
        if self.state == "running":
            state = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated" and not self.will_restart:
            state = {"terminated": self._terminated_state()}
        else:
            waiting: JSON = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        status: JSON = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.state == "running" and self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": self.last_state,
        }
        if self.process is not None:
            status["containerID"] = f"process://{self.process.pid}"
        return status

    def _terminated_state(self) -> JSON:
        terminated: JSON = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.message:
            terminated["message"] = self.message
        if self.process is not None:
            terminated["containerID"] = f"process://{self.process.pid}"
        return terminated

    def schedule_restart(self, base: float, cap: float) -> None:
        """Keep the terminated state as lastState and wait out the back-off."""
        self.last_state = {"terminated": self._terminated_state()}
        self.will_restart = True
        self.next_start = time.monotonic() + restart_delay(self.restart_count, base, cap)
        self.reason, self.message = "CrashLoopBackOff", f"back-off restarting failed container {self.name}"
        self.restart_count += 1


# --------------------------------------------------------------------------------------------
# Pods
# --------------------------------------------------------------------------------------------


class EventRecorder:
    """Posts core/v1 Events about pods, as the kubelet does, for `kubectl describe` and `get events`."""

    def __init__(self, kube: RawKube, node_name: str) -> None:
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
        kube: RawKube,
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
            self.kube.patch(f"{self.path}/status", {"metadata": {"uid": self.uid}, "status": status})
            self._last_sent = status
        except Exception as error:
            if is_status(error, 404):
                # The pod object is gone (force deletion): nothing to report to, stop its processes.
                self.request_stop(0, delete=False)
            elif not is_status(error, 409):
                log.warning("status of %s/%s: %s", self.namespace, self.pod_name, error)


def delete_pod(kube: RawKube, namespace: str, name: str, uid: str) -> None:
    """As the kubelet does once the containers are gone: the object goes away for good."""
    body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
    log.info("deleting pod %s/%s", namespace, name)
    try:
        kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)
    except Exception as error:
        if not is_status(error, 404, 409):
            log.warning("deleting pod %s/%s: %s", namespace, name, error)


class PodManager:
    """Lists and watches the pods bound to this node and keeps one worker per pod."""

    def __init__(self, kube: RawKube, config: KubeletConfig, ips: IPAllocator) -> None:
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


# --------------------------------------------------------------------------------------------
# Node
# --------------------------------------------------------------------------------------------


class NodeAgent:
    """Registers the Node and keeps it Ready: Lease renewals and status heartbeats."""

    LEASE_SECONDS = 40

    def __init__(
        self,
        kube: RawKube,
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
        self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._status()})

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": self.LEASE_SECONDS,
            "renewTime": now_micro(),
        }
        try:
            self.kube.patch(path, {"spec": spec}, merge="merge")
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


# --------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "process-kubelet")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now.replace(year=now.year + 1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST_IP))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class LogServer:
    """The kubelet's ``/containerLogs`` endpoint, so ``kubectl logs [-f] [--tail N]`` works.

    The API server proxies those requests to the node's ``daemonEndpoints`` port over HTTPS. It
    verifies the kubelet's certificate only when started with --kubelet-certificate-authority, so
    a self-signed one does; it listens on 127.0.0.1 only, on a free port the Node status reports.
    """

    def __init__(self, state_dir: Path, is_running: Callable[[str, str], bool]) -> None:
        self.state_dir = state_dir
        self.is_running = is_running
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def log_file(self, namespace: str, pod: str, container: str) -> Path | None:
        # The newest pod of that name: a name is reused by a new pod once the old one is gone.
        dirs = sorted(
            (self.state_dir / "pods").glob(f"{namespace}_{pod}_*"), key=lambda d: d.stat().st_mtime, reverse=True
        )
        for directory in dirs:
            if (directory / f"{container}.log").exists():
                return directory / f"{container}.log"
        return None

    def start(self) -> LogServer:
        import ssl

        cert, key = _self_signed_certificate(self.state_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("log server: " + format, *args)

        server = http.server.ThreadingHTTPServer((HOST_IP, 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, name="log-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _serve(self, request: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(request.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            request.send_error(404, "only /containerLogs/<namespace>/<pod>/<container> is served")
            return
        _, namespace, pod, container = parts
        query = urllib.parse.parse_qs(url.query)
        path = self.log_file(namespace, pod, container)
        if path is None:
            request.send_error(404, f"no log for container {container} of pod {namespace}/{pod}")
            return
        data = path.read_bytes()
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"][0]) :]) if int(query["tailLines"][0]) > 0 else b""
        request.send_response(200)
        request.send_header("Content-Type", "text/plain")
        request.end_headers()  # no length: the body ends when the connection closes
        try:
            request.wfile.write(data)
            request.wfile.flush()
            if query.get("follow", ["false"])[0] == "true":
                self._follow(request, path, namespace, pod)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _follow(self, request: http.server.BaseHTTPRequestHandler, path: Path, namespace: str, pod: str) -> None:
        with open(path, "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            while True:
                chunk = log_file.read()
                if chunk:
                    request.wfile.write(chunk)
                    request.wfile.flush()
                elif not self.is_running(namespace, pod):
                    return  # as the kubelet ends a follow when the container is gone
                else:
                    time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", default="local-node")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0)
    # KEP-4603's shorter crash-loop back-off (1 s doubling up to 60 s) keeps tests quick.
    parser.add_argument("--restart-backoff-seconds", type=float, default=1.0)
    parser.add_argument("--max-restart-backoff-seconds", type=float, default=60.0)
    parser.add_argument("--register-with-taints", default="", help="key=value:Effect,... as the kubelet's flag")
    parser.add_argument(
        "--pod-cidr",
        default=None,
        help="a /24 for pod IPs, routed to lo; 'loopback' for 127.0.0.N; default: a free /24 of 198.18.0.0/15",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    args.state_dir.mkdir(parents=True, exist_ok=True)
    kube = RawKube(load_api_client(args.kubeconfig))
    config = KubeletConfig(
        node_name=args.node_name,
        state_dir=args.state_dir,
        restart_backoff=args.restart_backoff_seconds,
        max_restart_backoff=args.max_restart_backoff_seconds,
    )
    network = PodNetwork(args.pod_cidr)
    ips = network.setup()
    log.info("pod IPs come from %s", ips.network)
    manager = PodManager(kube, config, ips)
    logs = LogServer(args.state_dir, manager.is_running).start()
    taints = parse_taints(args.register_with_taints)
    node = NodeAgent(kube, args.node_name, args.heartbeat_seconds, taints, kubelet_port=logs.port)

    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping all containers", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        # The API server may still be coming up when the launcher starts us.
        deadline = time.monotonic() + 60
        while not stopping.is_set():
            try:
                node.register()
                break
            except Exception as error:
                if time.monotonic() > deadline:
                    raise
                log.info("registering node: %s (retrying)", error)
                time.sleep(0.5)
        log.info("node %s registered", args.node_name)

        threading.Thread(target=node.run, name="node-heartbeat", daemon=True).start()
        threading.Thread(target=manager.run, name="pod-watch", daemon=True).start()
        stopping.wait()
        node.stop()
        manager.stop_all(grace=5)
    finally:
        logs.stop()
        network.teardown()
    log.info("kubelet stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
