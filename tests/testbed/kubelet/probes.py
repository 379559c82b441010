"""Probes: one httpGet/tcpSocket/exec attempt (``Prober``) and the timing and thresholds (``ProbeTracker``)."""

from __future__ import annotations

import http.client
import socket
import subprocess
from collections.abc import Mapping
from typing import Any

from projectorset.adapters.kubejson import JSON


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
