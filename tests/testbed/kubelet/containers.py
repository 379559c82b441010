"""One container: its process group, observed state, reported status, and restart policy with back-off."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from projectorset.adapters.kubejson import JSON
from testbed.kubelet.common import now_rfc3339
from testbed.kubelet.environment import expand
from testbed.kubelet.probes import ProbeTracker


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


def restart_delay(restart_count: int, base: float, cap: float) -> float:
    """Exponential back-off before the next restart: base, 2*base, 4*base ... up to cap."""
    return min(base * (2**restart_count), cap)


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
        if self.exit_code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            self.message = self._log_tail()
        self.finished_at = now_rfc3339()
        self.ready = False

    def _log_tail(self, max_bytes: int = 2048, max_lines: int = 80) -> str:
        """What a kubelet takes as the termination message with FallbackToLogsOnError: the end of
        the container's log, at most 2048 bytes and 80 lines."""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(0, os.SEEK_END)
                log_file.seek(max(0, log_file.tell() - max_bytes))
                tail = log_file.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(tail.splitlines()[-max_lines:])

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
