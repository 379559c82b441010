"""`make demo` stopped the way `timeout`, a CI runner or systemd stop it (SIGTERM), or a closed
terminal (SIGHUP), stops everything it started, as Ctrl-C does: the control plane, PostgreSQL,
the operator and the sample app's pods, although each runs in a session of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARKER = "PROJECTORSET_STOP_TEST"
# What a demo has running once v1 serves, each found by a word of its command line.
EXPECTED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "testbed.kubelet",
    "postgres",
    "projectorset-operator",
    "sampleapp.web",
)

pytestmark = [pytest.mark.database, pytest.mark.testbed, pytest.mark.timeout(1500)]


@dataclass(frozen=True)
class Process:
    pid: int
    start_time: str  # /proc/<pid>/stat field 22: a pid reused later is another process
    command: str


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:  # gone meanwhile
        return b""


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time), or None for a process that is gone or a zombie."""
    after_name = _read(f"/proc/{pid}/stat").rpartition(b")")[2].split()
    if len(after_name) < 20 or after_name[0] == b"Z":
        return None
    return int(after_name[1]), after_name[19].decode()


def live_processes() -> dict[int, tuple[int, str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            found[int(entry)] = stat
    return found


def started_by(root: int, marker: str) -> set[Process]:
    """The live processes below ``root`` by parentage, and any carrying ``marker`` in its
    environment (PostgreSQL's server is daemonized by pg_ctl, so it has no parent of ours)."""
    processes = live_processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.add(pid)
        stack += children.get(pid, [])
    needle = f"{MARKER}={marker}".encode()
    found |= {pid for pid in processes if needle in _read(f"/proc/{pid}/environ").split(b"\0")}
    return {
        Process(pid, processes[pid][1], _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace"))
        for pid in found
        if pid in processes
    }


def still_running(processes: set[Process]) -> list[Process]:
    live = live_processes()
    return [p for p in processes if p.pid in live and live[p.pid][1] == p.start_time]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_the_demo_stopped_mid_run_leaves_no_process_it_started(stop_signal: signal.Signals) -> None:
    marker = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}:{REPO / 'operator'}", **{MARKER: marker})
    # What `make demo` runs, in a session of its own so that only the signal sent here reaches it.
    demo = subprocess.Popen(
        [sys.executable, "-m", "testbed.demo", "--writers", "2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(demo.stdout or ()), daemon=True)
    reader.start()
    seen: set[Process] = set()
    try:
        deadline = time.monotonic() + 900
        while not any("starting 2 writers" in line for line in output):
            assert demo.poll() is None, "the demo ended early:\n" + "".join(output)
            assert time.monotonic() < deadline, "v1 did not serve in 900 s:\n" + "".join(output)
            time.sleep(0.5)
        seen = started_by(demo.pid, marker)
        missing = [name for name in EXPECTED if not any(name in p.command for p in seen)]
        assert not missing, f"not found running before the signal: {missing}"

        os.kill(demo.pid, stop_signal)  # the process alone, as `timeout` and make send it
        status = demo.wait(timeout=180)
        reader.join(timeout=10)
        left = set(still_running(seen)) | started_by(demo.pid, marker)
        assert not left, "left running: " + "; ".join(sorted(f"{p.pid} {p.command[:100]}" for p in left))
        log = "".join(output)
        assert status == 128 + stop_signal, log
        assert f"stopped by {stop_signal.name}" in log
    finally:
        for process in still_running(seen | started_by(demo.pid, marker)):
            os.kill(process.pid, signal.SIGKILL)
        if demo.poll() is None:
            demo.kill()
            demo.wait()
