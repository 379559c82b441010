"""The process kubelet's and the service proxy's pure parts, without a cluster."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.kubelet import (
    Container,
    IPAllocator,
    PodNetwork,
    Prober,
    ProbeTracker,
    expand,
    parse_taints,
    pod_phase,
    resolve_port,
    restart_delay,
    should_restart,
)
from testbed.proxy import ready_endpoints, select_port
from testbed.workloads import http_json, wait_until

# The test bed's own tests: `make unit` leaves them out, `make test` runs them.
pytestmark = pytest.mark.testbed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "one-two"),
        ("$$(A)", "$(A)"),
        ("$(MISSING) stays", "$(MISSING) stays"),
        ("cost: $5 and $", "cost: $5 and $"),
        ("$(A", "$(A"),
        ("$$$(A)", "$one"),
        ("no refs", "no refs"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "one", "B": "two"}) == expected


def test_ip_allocator_hands_out_distinct_addresses_and_reuses_freed_ones() -> None:
    ips = IPAllocator()
    first, second = ips.allocate("a"), ips.allocate("b")
    assert (first, second) == ("127.0.0.2", "127.0.0.3")
    assert ips.allocate("a") == first  # idempotent per owner
    ips.release("a")
    assert ips.allocate("c") == "127.0.0.2"
    assert ips.allocate("d", preferred="127.0.0.9") == "127.0.0.9"
    assert ips.allocate("e", preferred="127.0.0.9") == "127.0.0.4"  # taken: next free one


def test_ip_allocator_runs_out() -> None:
    ips = IPAllocator(first=2, last=3)
    ips.allocate("a")
    ips.allocate("b")
    with pytest.raises(RuntimeError):
        ips.allocate("c")


def test_ip_allocator_on_a_routed_network() -> None:
    ips = IPAllocator("198.18.3.0/24")
    assert ips.allocate("a") == "198.18.3.2"
    assert ips.allocate("b", preferred="198.18.3.77") == "198.18.3.77"
    assert ips.allocate("c", preferred="127.0.0.5") == "198.18.3.3"  # not in this network


class FakeIp:
    """Stands in for the `ip` command: routes in ``taken`` exist already; ``denied`` fails all."""

    def __init__(self, taken: tuple[str, ...] = (), denied: bool = False) -> None:
        self.taken, self.denied = set(taken), denied
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> tuple[int, str]:
        self.calls.append(argv)
        if self.denied:
            return 2, "RTNETLINK answers: Operation not permitted"
        if argv[:2] == ["route", "add"] and argv[3] in self.taken:
            return 2, "RTNETLINK answers: File exists"
        return 0, ""


def test_pod_network_skips_ranges_of_live_kubelets_and_takes_over_leftovers(tmp_path: Path) -> None:
    # 198.18.0.0/24 belongs to a live kubelet (it holds the lock); 198.18.1.0/24 has a route that
    # a killed kubelet left behind (no lock): that one is taken over.
    live = PodNetwork(run=FakeIp(), lock_dir=tmp_path)
    assert str(live.setup().network) == "198.18.0.0/24"
    ip = FakeIp(taken=("198.18.0.0/24", "198.18.1.0/24"))
    network = PodNetwork(run=ip, lock_dir=tmp_path)
    assert str(network.setup().network) == "198.18.1.0/24"
    network.teardown()
    assert ip.calls[-1] == ["route", "del", "local", "198.18.1.0/24", "dev", "lo"]
    # Once released, the range is free for the next kubelet.
    assert str(PodNetwork(run=FakeIp(), lock_dir=tmp_path).setup().network) == "198.18.1.0/24"
    live.teardown()


def test_pod_network_falls_back_to_loopback_without_permission(tmp_path: Path) -> None:
    ip = FakeIp(denied=True)
    network = PodNetwork(run=ip, lock_dir=tmp_path)
    assert str(network.setup().network) == "127.0.0.0/24"
    network.teardown()
    assert len(ip.calls) == 1  # no route added, none removed


def test_pod_network_given_explicitly() -> None:
    ip = FakeIp(taken=("10.77.0.0/24",))
    network = PodNetwork("10.77.0.0/24", run=ip)
    assert network.setup().allocate("x") == "10.77.0.2"
    network.teardown()
    assert len(ip.calls) == 1  # a route that existed before is not ours to remove
    with pytest.raises(RuntimeError):
        PodNetwork("10.78.0.0/24", run=FakeIp(denied=True)).setup()


def test_probe_tracker_applies_thresholds_and_period() -> None:
    tracker = ProbeTracker({"initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 2}, True, 100.0)
    assert not tracker.due(104.9)
    assert tracker.due(105.0)
    assert tracker.record(False, 105.0) is True  # one failure is below the threshold
    assert not tracker.due(106.0)
    assert tracker.record(False, 107.0) is False
    assert tracker.record(True, 109.0) is True

    readiness = ProbeTracker({"successThreshold": 2}, False, 0.0)
    assert readiness.record(True, 0.0) is False
    assert readiness.record(True, 10.0) is True


def test_restart_rules() -> None:
    assert should_restart("Always", 0) and should_restart("Always", 1)
    assert should_restart("OnFailure", 1) and not should_restart("OnFailure", 0)
    assert not should_restart("Never", 1)
    assert [restart_delay(n, 1, 60) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_resolve_port_by_number_and_name() -> None:
    container = {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}
    assert resolve_port(80, container) == 80
    assert resolve_port("http", container) == 8080
    with pytest.raises(ValueError):
        resolve_port("grpc", container)


@pytest.fixture
def http_server() -> Iterator[tuple[str, int]]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 500)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.7", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.7", server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http_probe_uses_pod_ip_and_named_port(http_server: tuple[str, int]) -> None:
    ip, port = http_server
    container = {"name": "app", "ports": [{"name": "web", "containerPort": port}]}
    assert Prober.run({"httpGet": {"path": "/ok", "port": "web"}}, ip, container, {})[0]
    ok, message = Prober.run({"httpGet": {"path": "/broken", "port": port}}, ip, container, {})
    assert not ok and "500" in message
    # Nothing listens on another loopback address: the pod IP really is the default host.
    assert not Prober.run({"httpGet": {"path": "/ok", "port": port}}, "127.0.0.8", container, {})[0]


def test_tcp_and_exec_probes(http_server: tuple[str, int], tmp_path: Path) -> None:
    ip, port = http_server
    assert Prober.run({"tcpSocket": {"port": port}}, ip, {"name": "c"}, {})[0]
    assert not Prober.run({"tcpSocket": {"port": port}}, "127.0.0.8", {"name": "c"}, {})[0]
    marker = tmp_path / "healthy"
    probe = {"exec": {"command": ["sh", "-c", 'test -f "$MARKER"']}}
    env = {"PATH": os.environ["PATH"], "MARKER": str(marker)}
    assert not Prober.run(probe, ip, {"name": "c"}, env)[0]
    marker.touch()
    assert Prober.run(probe, ip, {"name": "c"}, env)[0]
    slow = {"exec": {"command": ["sleep", "5"]}, "timeoutSeconds": 1}
    started = time.monotonic()
    assert not Prober.run(slow, ip, {"name": "c"}, env)[0]
    assert time.monotonic() - started < 3


def test_container_runs_expanded_command_logs_output_and_stops_its_whole_group(tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('greeting', sys.argv[1], os.environ['GREETING'], flush=True)\n"
        "time.sleep(600)\n"
    )
    spec = {"name": "app", "command": [sys.executable, "-c", script], "args": ["$(WHO)"]}
    container = Container(spec, tmp_path / "logs" / "app.log")
    container.start({"PATH": os.environ["PATH"], "GREETING": "hello"}, {"WHO": "world"})
    assert container.state == "running"
    wait_until(
        "the container's child and greeting",
        lambda: child_pid_file.exists() and "greeting" in container.log_path.read_text(),
        10,
        0.05,
    )
    assert "greeting world hello" in container.log_path.read_text()
    child_pid = int(child_pid_file.read_text())

    container.stop(grace=5, reason="Error")
    assert container.state == "terminated"
    assert container.exit_code == 128 + 15  # SIGTERM
    wait_until("the container's child to end with it", lambda: not _alive(child_pid), 5, 0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie no one reaped is dead for our purposes.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_container_that_cannot_start_terminates_with_start_error(tmp_path: Path) -> None:
    container = Container({"name": "app", "command": ["/nonexistent/binary"]}, tmp_path / "app.log")
    container.start({}, {})
    assert container.state == "terminated"
    assert (container.exit_code, container.reason) == (128, "StartError")


def test_pod_phase_from_containers(tmp_path: Path) -> None:
    def container(state: str, exit_code: int | None = None, restarting: bool = False) -> Container:
        c = Container({"name": "c"}, tmp_path / "c.log", state=state, exit_code=exit_code)
        c.never_started = state == "waiting" and not restarting
        c.will_restart = restarting
        return c

    assert pod_phase("Always", [container("waiting")]) == "Pending"
    assert pod_phase("Always", [container("running")]) == "Running"
    assert pod_phase("Always", [container("terminated", 1, restarting=True)]) == "Running"
    assert pod_phase("Never", [container("terminated", 0), container("terminated", 0)]) == "Succeeded"
    assert pod_phase("Never", [container("terminated", 0), container("terminated", 2)]) == "Failed"
    assert pod_phase("Never", [container("terminated", 0), container("running")]) == "Running"


def test_ready_endpoints_follow_port_name_and_ready_condition() -> None:
    slices = {
        "s1": {
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["127.0.0.3"], "conditions": {"ready": True}},
                {"addresses": ["127.0.0.2"], "conditions": {"ready": False}},
                {"addresses": ["127.0.0.4"], "conditions": {}},
            ],
        },
        "s2": {"ports": [{"name": "metrics", "port": 9090}], "endpoints": [{"addresses": ["127.0.0.5"]}]},
    }
    assert ready_endpoints(slices, "http") == [("127.0.0.3", 8080), ("127.0.0.4", 8080)]
    assert ready_endpoints(slices, "") == []


def test_select_port() -> None:
    service = {"metadata": {"name": "s"}, "spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}}
    assert select_port(service, None)["name"] == "a"
    assert select_port(service, "b")["port"] == 81
    assert select_port(service, 81)["name"] == "b"
    with pytest.raises(ValueError):
        select_port(service, 99)


def test_parse_taints() -> None:
    assert parse_taints("") == []
    assert parse_taints("a=b:NoSchedule, c:NoExecute") == [
        {"key": "a", "value": "b", "effect": "NoSchedule"},
        {"key": "c", "effect": "NoExecute"},
    ]
    with pytest.raises(ValueError):
        parse_taints("a=b:Sometimes")


def test_loopback_addresses_are_usable() -> None:
    # The kubelet's pod IPs rely on Linux routing all of 127/8 to lo.
    with socket.create_server(("127.0.0.42", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.42", port), timeout=2):
            pass


def test_podapps_server_binds_to_pod_ip_fails_health_on_demand_and_records_sigterm(tmp_path: Path) -> None:
    events = tmp_path / "events"
    tests_dir = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": tests_dir, "POD_IP": "127.0.0.9", "VERSION": "v1", "HOSTNAME": "pod-1"}
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.9", 0))
        port = probe_socket.getsockname()[1]
    argv = [sys.executable, "-m", "testbed.podapps", "serve", "--port", str(port)]
    argv += ["--healthy-checks", "1", "--events-file", str(events)]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        container = {"name": "app"}
        wait_until(
            "the app to listen",
            lambda: Prober.run({"tcpSocket": {"port": port}}, "127.0.0.9", container, {})[0],
            10,
            0.05,
        )
        answer = http_json("127.0.0.9", port)
        assert answer == {"pod": "pod-1", "version": "v1", "greeting": "", "pid": process.pid, "ip": "127.0.0.9"}
        health = {"httpGet": {"path": "/healthz", "port": port}}
        assert Prober.run(health, "127.0.0.9", container, {})[0]
        assert not Prober.run(health, "127.0.0.9", container, {})[0]
    finally:
        process.terminate()
        assert process.wait(5) == 0
    assert events.read_text().split("\n")[:2] == [f"started {process.pid}", f"terminated {process.pid}"]
