"""The process kubelet on the real control plane: the Deployment, ReplicaSet, Job and EndpointSlice
controllers and the scheduler do their part, the kubelet runs the pods as local processes."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from projectorset.adapters.kubejson import KubeJson
from testbed.workloads import (
    IMAGE,
    available_deployment,
    create,
    deployment,
    echo_container,
    exists,
    get,
    http_json,
    is_true,
    pods,
    ready_slice_addresses,
    service,
    wait_until,
)

pytestmark = pytest.mark.cluster

POD_RANGE = ipaddress.ip_network("198.18.0.0/15")


@pytest.fixture
def kube(kube_api) -> KubeJson:
    """The session's API client, speaking plain JSON (objects read as `kubectl get -o json` shows them)."""
    return KubeJson(kube_api)


@pytest.fixture
def namespace(local_cluster, kube: KubeJson) -> Iterator[str]:
    name = f"kubelet-{uuid.uuid4().hex[:8]}"
    local_cluster.create_namespace(name)
    yield name
    kube.request("DELETE", f"/api/v1/namespaces/{name}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _events(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(word, int(pid)) for word, pid in (line.split() for line in path.read_text().splitlines())]


def test_deployment_becomes_available_on_distinct_pod_ips_with_env_from_a_secret(
    kubectl, kube: KubeJson, namespace: str
) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "greeting"},
        "data": {"text": base64.b64encode(b"hello from a secret").decode()},
    }
    create(kube, namespace, secret)
    create(kube, namespace, service("web", {"app": "web"}))
    greeting = {"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "greeting", "key": "text"}}}
    started = time.monotonic()
    create(kube, namespace, deployment("web", {"app": "web"}, 2, echo_container(extra_env=[greeting])))

    wait_until("Deployment web to be Available", available_deployment(kube, namespace, "web", 2), timeout=90)
    print(f"Deployment of 2 replicas Available after {time.monotonic() - started:.1f} s")
    rollout = kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=10s", check=True)
    assert 'deployment "web" successfully rolled out' in rollout.stdout

    running = pods(kube, namespace, "app=web")
    assert len(running) == 2
    ips = [p["status"]["podIP"] for p in running]
    assert len(set(ips)) == 2, ips
    for pod, ip in zip(running, ips, strict=True):
        status = pod["status"]
        # From the kubelet's pod network (routed to lo); not loopback, which EndpointSlices reject.
        assert ipaddress.ip_address(ip) in POD_RANGE
        assert status["podIPs"] == [{"ip": ip}]
        assert status["hostIP"] == "127.0.0.1"
        assert status["phase"] == "Running"
        assert is_true(pod, "Ready") and is_true(pod, "ContainersReady")
        (container,) = status["containerStatuses"]
        assert container["ready"] and container["started"] and "running" in container["state"]
        # The process behind the pod IP is this pod's, and it got the Secret's value.
        answer = http_json(ip, 8080)
        assert answer == {
            "pod": pod["metadata"]["name"],
            "version": "",
            "greeting": "hello from a secret",
            "pid": answer["pid"],
            "ip": ip,
        }

        # Its output, through the API server and the kubelet's log endpoint.
        name = pod["metadata"]["name"]
        logs = kubectl("logs", name, "-n", namespace, check=True).stdout
        assert logs.startswith(f"serving on {ip}:8080\n") and '"GET / HTTP/1.1" 200' in logs
        last = kubectl("logs", name, "-n", namespace, "--tail=1", check=True).stdout
        # One line (the probes keep logging, so which one depends on timing).
        assert last.count("\n") == 1 and '" 200 ' in last

    # The EndpointSlice controller publishes exactly the ready pods, on the resolved target port.
    wait_until(
        "EndpointSlices of Service web to list both pods",
        lambda: ready_slice_addresses(kube, namespace, "web") == {(ip, 8080) for ip in ips},
        timeout=30,
    )


def test_env_sources_expansion_and_working_dir(kube: KubeJson, namespace: str, tmp_path: Path) -> None:
    create(
        kube,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": {"mode": "fast", "level": "3"},
        },
    )
    create(
        kube,
        namespace,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}},
    )
    dump = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "env-dump", "labels": {"team": "blue"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "dump",
                    "image": IMAGE,
                    "command": [sys.executable, "-c", dump],
                    "args": ["$(POD_NAME).json"],  # relative: lands in workingDir
                    "workingDir": str(tmp_path),
                    "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
                        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                        {
                            "name": "ABSENT",
                            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": True}},
                        },
                        {"name": "URL", "value": "http://$(POD_IP):8080/$(MODE)?$$(literal)"},
                        {"name": "CFG_level", "value": "overridden"},
                    ],
                }
            ],
        },
    }
    create(kube, namespace, pod)
    final = wait_until(
        "pod env-dump to succeed",
        lambda: (p := get(kube, namespace, "Pod", "env-dump"))["status"].get("phase") == "Succeeded" and p,
        timeout=60,
    )
    env = json.loads((tmp_path / "env-dump.json").read_text())
    ip = final["status"]["podIP"]
    assert env["POD_NAME"] == "env-dump"
    assert env["POD_NAMESPACE"] == namespace
    assert env["POD_IP"] == ip and ipaddress.ip_address(ip) in POD_RANGE
    assert env["NODE"] == "local-node"
    assert env["TEAM"] == "blue"
    assert env["MODE"] == "fast"
    assert env["PASSWORD"] == "s3cret"
    assert "ABSENT" not in env
    assert env["URL"] == f"http://{ip}:8080/fast?$(literal)"
    assert env["CFG_mode"] == "fast" and env["CFG_level"] == "overridden"
    assert env["HOSTNAME"] == "env-dump"
    # Inherited from the kubelet so `python -m testbed...` works in pods.
    assert "tests" in env.get("PYTHONPATH", "")
    (container,) = final["status"]["containerStatuses"]
    assert container["state"]["terminated"]["exitCode"] == 0
    assert container["state"]["terminated"]["reason"] == "Completed"


def test_missing_secret_keeps_pod_pending_until_it_exists(kube: KubeJson, namespace: str) -> None:
    container = echo_container(
        extra_env=[{"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "later", "key": "text"}}}]
    )
    create(
        kube,
        namespace,
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "waits"}, "spec": {"containers": [container]}},
    )

    def config_error() -> bool:
        status = get(kube, namespace, "Pod", "waits")["status"]
        waiting = (status.get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
        return status.get("phase") == "Pending" and waiting.get("reason") == "CreateContainerConfigError"

    wait_until("pod waits to report CreateContainerConfigError", config_error, timeout=30)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"}, "stringData": {"text": "finally"}}
    create(kube, namespace, secret)
    pod = wait_until(
        "pod waits to become Ready", lambda: (p := get(kube, namespace, "Pod", "waits")) and is_true(p, "Ready") and p
    )
    assert http_json(pod["status"]["podIP"], 8080)["greeting"] == "finally"


def _container_log(local_cluster, pod: dict, container: str) -> str:
    meta = pod["metadata"]
    path = local_cluster.workdir / "kubelet" / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
    return (path / f"{container}.log").read_text()


def test_liveness_probe_failure_restarts_the_container(
    local_cluster, kube: KubeJson, namespace: str, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    container = echo_container(extra_args=["--healthy-checks", "3", "--events-file", str(events)], readiness=False)
    # The delay gives a (re)started interpreter time to listen on a busy machine.
    container["livenessProbe"] = {
        "httpGet": {"path": "/healthz", "port": 8080},
        "initialDelaySeconds": 2,
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    create(
        kube,
        namespace,
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "flaky"}, "spec": {"containers": [container]}},
    )

    def restarted() -> dict | None:
        status = get(kube, namespace, "Pod", "flaky")["status"]
        (container_status,) = status.get("containerStatuses") or [{}]
        return container_status if container_status.get("restartCount", 0) >= 1 else None

    container_status = wait_until("the container to be restarted", restarted, timeout=60)
    assert "terminated" in container_status["lastState"], container_status

    # The first process was stopped and a new one started in its place.
    def two_starts() -> list[int] | None:
        starts = [pid for word, pid in _events(events) if word == "started"]
        return starts[:2] if len(starts) >= 2 else None

    try:
        first, second = wait_until("a second process", two_starts, timeout=30)
    except AssertionError as error:
        pod = get(kube, namespace, "Pod", "flaky")
        raise AssertionError(
            f"{error}\nstatus: {pod['status']}\nlog:\n{_container_log(local_cluster, pod, 'app')}"
        ) from None
    assert first != second
    assert ("terminated", first) in _events(events)  # stopped with SIGTERM, not just killed
    assert not _alive(first)

    # What `kubectl describe pod` shows: the kubelet's Events about it.
    def reasons() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        query = {"fieldSelector": "involvedObject.name=flaky"}
        for event in kube.get(f"/api/v1/namespaces/{namespace}/events", **query)["items"]:
            if event["source"].get("component") == "kubelet":
                found.setdefault(event["reason"], []).append(event["message"])
        return found

    seen = wait_until("the kubelet's events", lambda: (r := reasons()) and len(r.get("Started", [])) >= 2 and r)
    assert any(m.startswith("Liveness probe failed: HTTP 500") for m in seen["Unhealthy"]), seen
    assert "Container app failed liveness probe, will be restarted" in seen["Killing"], seen


def test_jobs_complete_or_fail_by_exit_code(local_cluster, kubectl, kube: KubeJson, namespace: str) -> None:
    def job(name: str, code: int) -> dict:
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 1,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "task",
                                "image": IMAGE,
                                "command": [
                                    sys.executable,
                                    "-c",
                                    f"import sys; print('exiting {code}'); sys.exit({code})",
                                ],
                            }
                        ],
                    }
                },
            },
        }

    create(kube, namespace, job("works", 0))
    create(kube, namespace, job("breaks", 1))

    done = wait_until(
        "Job works to complete", lambda: (j := get(kube, namespace, "Job", "works")) and is_true(j, "Complete") and j
    )
    assert done["status"]["succeeded"] == 1
    (pod,) = pods(kube, namespace, "job-name=works")
    assert pod["status"]["phase"] == "Succeeded"
    # The container's output is kept in the kubelet's state directory.
    assert _container_log(local_cluster, pod, "task") == "exiting 0\n"
    # ... and served to `kubectl logs` through the API server.
    assert kubectl("logs", "job/works", "-n", namespace, check=True).stdout == "exiting 0\n"

    # backoffLimit 1: a first failure, one retry after the Job controller's back-off, then Failed.
    failed = wait_until(
        "Job breaks to fail",
        lambda: (j := get(kube, namespace, "Job", "breaks")) and is_true(j, "Failed") and j,
        timeout=120,
    )
    assert failed["status"]["failed"] == 2
    assert next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")["reason"] == "BackoffLimitExceeded"
    failed_pods = pods(kube, namespace, "job-name=breaks")
    assert len(failed_pods) == 2
    for pod in failed_pods:
        assert pod["status"]["phase"] == "Failed"
        (container,) = pod["status"]["containerStatuses"]
        assert container["state"]["terminated"]["exitCode"] == 1
        assert container["restartCount"] == 0


def test_deleting_a_pod_stops_its_process_gracefully(kube: KubeJson, namespace: str, tmp_path: Path) -> None:
    events = tmp_path / "events"
    container = echo_container(extra_args=["--events-file", str(events)])
    create(
        kube,
        namespace,
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "doomed"}, "spec": {"containers": [container]}},
    )
    wait_until("pod doomed to be Ready", lambda: is_true(get(kube, namespace, "Pod", "doomed"), "Ready"))
    ((_, pid),) = _events(events)
    assert _alive(pid)

    kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/doomed")
    wait_until("pod doomed to be gone", lambda: not exists(kube, namespace, "Pod", "doomed"), timeout=30)
    assert ("terminated", pid) in _events(events)
    wait_until("its process to exit", lambda: not _alive(pid), timeout=5)


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    kube: KubeJson, namespace: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    script = f"trap '' TERM; echo $$$$ > {pid_file}; sleep 600 & echo $! >> {pid_file}; wait"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stubborn"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "sh", "image": IMAGE, "command": ["sh", "-c", script]}],
        },
    }
    create(kube, namespace, pod)
    wait_until(
        "pod stubborn to run", lambda: get(kube, namespace, "Pod", "stubborn")["status"].get("phase") == "Running"
    )

    def both_pids() -> list[int] | None:
        pids = pid_file.read_text().split() if pid_file.exists() else []
        return [int(p) for p in pids] if len(pids) == 2 else None

    pids = wait_until("the shell's and its child's pids", both_pids)
    assert all(_alive(p) for p in pids)

    began = time.monotonic()
    kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/stubborn")
    wait_until("pod stubborn to be gone", lambda: not exists(kube, namespace, "Pod", "stubborn"), timeout=30)
    took = time.monotonic() - began
    assert 1.5 <= took < 25, took  # waited for the grace period, then killed
    wait_until("the shell and its child to be dead", lambda: not any(_alive(p) for p in pids), timeout=5)


TESTS_DIR = Path(__file__).resolve().parent.parent


def test_kubelet_stops_its_pods_on_sigterm_and_runs_them_again_when_back(
    local_cluster, kube: KubeJson, namespace: str, tmp_path: Path
) -> None:
    """A second kubelet process (its own tainted node): no orphans on SIGTERM, re-adoption on start."""
    node_name = f"extra-{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "testbed.kubelet", f"--kubeconfig={local_cluster.kubeconfig}"]
    argv += [f"--node-name={node_name}", f"--state-dir={tmp_path / 'state'}", "--heartbeat-seconds=2"]
    # A range of its own, near the top of the default one, so both runs hand out the same addresses.
    argv += ["--pod-cidr=198.19.254.0/24", "--register-with-taints=testbed/extra=yes:NoSchedule"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent / "operator")])}

    def start_kubelet() -> subprocess.Popen[bytes]:
        with open(tmp_path / "kubelet.log", "ab") as log:
            return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def node_ready() -> bool:
        return is_true(kube.get(f"/api/v1/nodes/{node_name}"), "Ready")

    events = tmp_path / "events"
    container = echo_container(extra_args=["--events-file", str(events)])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pinned"},
        "spec": {
            "containers": [container],
            "nodeSelector": {"kubernetes.io/hostname": node_name},
            "tolerations": [{"key": "testbed/extra", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
    kubelet = start_kubelet()
    try:
        wait_until(f"node {node_name} to be Ready", node_ready, timeout=30)
        lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node_name}")
        assert lease["spec"]["holderIdentity"] == node_name
        renewed = lease["spec"]["renewTime"]
        wait_until(
            "the node's Lease to be renewed",
            lambda: (
                kube.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node_name}")["spec"][
                    "renewTime"
                ]
                != renewed
            ),
            timeout=10,
        )

        create(kube, namespace, pod)
        ready = wait_until(
            "pod pinned to be Ready", lambda: (p := get(kube, namespace, "Pod", "pinned")) and is_true(p, "Ready") and p
        )
        assert ready["spec"]["nodeName"] == node_name  # placed by the scheduler
        ip = ready["status"]["podIP"]
        ((_, first),) = _events(events)

        kubelet.send_signal(signal.SIGTERM)
        assert kubelet.wait(20) == 0
        assert ("terminated", first) in _events(events)
        assert not _alive(first)
        assert exists(kube, namespace, "Pod", "pinned")  # a kubelet going away leaves its pods' objects

        kubelet = start_kubelet()

        def running_again() -> int | None:
            starts = [pid for word, pid in _events(events) if word == "started"]
            current = get(kube, namespace, "Pod", "pinned")
            return starts[-1] if len(starts) == 2 and is_true(current, "Ready") else None

        second = wait_until("the pod to run again under the new kubelet", running_again, timeout=30)
        assert second != first
        assert get(kube, namespace, "Pod", "pinned")["status"]["podIP"] == ip
        assert http_json(ip, 8080)["pid"] == second
    finally:
        with contextlib.suppress(Exception):
            kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/pinned")
            wait_until("pod pinned to be gone", lambda: not exists(kube, namespace, "Pod", "pinned"), timeout=20)
        if kubelet.poll() is None:
            kubelet.send_signal(signal.SIGTERM)
            try:
                kubelet.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(kubelet.pid, signal.SIGKILL)
                kubelet.wait()
        with contextlib.suppress(Exception):
            kube.request("DELETE", f"/api/v1/nodes/{node_name}")
    assert not any(word == "started" and _alive(pid) for word, pid in _events(events))


def test_init_containers_run_first_and_on_failure_restarts_in_place(
    kube: KubeJson, namespace: str, tmp_path: Path
) -> None:
    # The init container prepares a file; the main container fails once, then succeeds on its
    # restart (restartPolicy OnFailure restarts it in the same pod).
    prepare = f"open('{tmp_path}/prepared', 'w').write('ready')"
    flaky = (
        "import os, sys\n"
        f"assert open('{tmp_path}/prepared').read() == 'ready'\n"
        f"marker = '{tmp_path}/tried'\n"
        "if not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        "    sys.exit(3)\n"
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "second-time"},
        "spec": {
            "backoffLimit": 2,
            "template": {
                "spec": {
                    "restartPolicy": "OnFailure",
                    "initContainers": [{"name": "prepare", "image": IMAGE, "command": [sys.executable, "-c", prepare]}],
                    "containers": [{"name": "work", "image": IMAGE, "command": [sys.executable, "-c", flaky]}],
                }
            },
        },
    }
    create(kube, namespace, job)
    wait_until(
        "Job second-time to complete",
        lambda: is_true(get(kube, namespace, "Job", "second-time"), "Complete"),
        timeout=60,
    )
    (pod,) = pods(kube, namespace, "job-name=second-time")
    status = pod["status"]
    assert status["phase"] == "Succeeded"
    (init,) = status["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0
    (work,) = status["containerStatuses"]
    assert work["restartCount"] == 1
    assert work["lastState"]["terminated"]["exitCode"] == 3
    assert work["state"]["terminated"]["exitCode"] == 0
