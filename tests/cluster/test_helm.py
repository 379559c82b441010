"""The Helm chart on the local cluster: `helm install`, then the operator, running as a pod with
the identity of the chart's ServiceAccount under RBAC authorization, upgrades the sample
application; `kubectl auth can-i` shows what it may not do; `helm upgrade`; `helm uninstall`.

The process kubelet mounts no ServiceAccount token, so the test gives the pod a kubeconfig
holding a token of the chart's ServiceAccount (`kubectl create token`) and nothing else: the
operator acts with exactly the chart's RBAC.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from testbed import toolchain
from testbed.cluster import LocalCluster
from testbed.postgres import PostgresServer, free_port
from testbed.scenario import OPERATOR, REPO, Scenario
from testbed.sequent_schema import projector_rows

CHART = REPO / "charts" / "projectorset-operator"
_ids = itertools.count(1)


class Helm:
    """helm and kubectl against the local cluster, as the admin who installs the chart."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))

    def helm(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(toolchain.binary("helm")), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert not check or result.returncode == 0, f"helm {' '.join(args)}: {result.stdout}{result.stderr}"
        return result

    def kubectl(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(toolchain.binary("kubectl")), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert not check or result.returncode == 0, f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}"
        return result

    def can_i(self, service_account: str, verb: str, resource: str, namespace: str | None = None) -> bool:
        scope = ["-n", namespace] if namespace else []
        result = self.kubectl("auth", "can-i", verb, resource, *scope, f"--as={service_account}", check=False)
        assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
        return result.stdout.strip() == "yes"

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> None:
        """A kubeconfig that authenticates as the ServiceAccount only (a bound token, no certificate)."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=2h").stdout.strip()
        admin = yaml.safe_load(self.cluster.kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "local", "user": name, "namespace": namespace}}],
            "current-context": name,
        }
        staging = path.with_suffix(".partial")
        staging.write_text(yaml.safe_dump(config))
        staging.chmod(0o600)
        staging.rename(path)  # the pod waits for the file: it must appear complete


class ChartScenario(Scenario):
    """The sample application's namespace, operated by the chart's operator pods."""

    operator_namespace = ""

    def tail_logs(self, lines: int = 40) -> str:
        return operator_logs(self.cluster, self.operator_namespace, lines)


def operator_logs(cluster: LocalCluster, namespace: str, lines: int = 40) -> str:
    texts = []
    for log in sorted((cluster.workdir / "kubelet" / "pods").glob(f"{namespace}_*/operator.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        texts.append(f"--- {log.parent.name}\n" + "\n".join(tail))
    return "operator logs:\n" + "\n".join(texts)


def operator_values(kubeconfig: Path, **values: Any) -> dict[str, Any]:
    """Values for the local cluster: the venv's operator instead of an image, its own ports."""
    base: dict[str, Any] = {
        # Pods are local processes here: the image is ignored and the command must exist. The shell
        # waits for the ServiceAccount kubeconfig the test writes once `helm install` made the account.
        "command": [
            "/bin/sh",
            "-c",
            'until [ -s "$KUBECONFIG" ]; do sleep 0.2; done; exec "$0" "$@"',
            str(OPERATOR),
        ],
        "extraEnv": [{"name": "KUBECONFIG", "value": str(kubeconfig)}],
        # Every pod has its own 127.0.0.N: binding it lets two replicas use the same ports.
        "listenAddress": "$(POD_IP)",
        "health": {"port": free_port()},
        "metrics": {"port": free_port()},
        "logFormat": "plain",
        "livenessProbe": {"initialDelaySeconds": 5, "periodSeconds": 5},
        "readinessProbe": {"periodSeconds": 1},
    }
    base.update(values)
    return base


@pytest.fixture
def helm(local_cluster: LocalCluster) -> Helm:
    return Helm(local_cluster)


def release_objects(helm: Helm, release: str, namespaces: list[str]) -> list[str]:
    """Everything labelled with the release that is still in the cluster."""
    selector = f"app.kubernetes.io/instance={release}"
    kinds = "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,kopfpeerings"
    found = helm.kubectl("get", kinds, "--all-namespaces", "-l", selector, "-o", "name").stdout.split()
    cluster_kinds = "clusterroles,clusterrolebindings,clusterkopfpeerings"
    found.extend(helm.kubectl("get", cluster_kinds, "-l", selector, "-o", "name").stdout.split())
    for namespace in namespaces:
        secrets = helm.kubectl("get", "secrets", "-n", namespace, "-o", "name").stdout.split()
        found.extend(s for s in secrets if f"sh.helm.release.v1.{release}." in s)
    return found


def metrics_text(helm: Helm, namespace: str, release: str, port: int) -> str:
    pods = json.loads(
        helm.kubectl("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}", "-o", "json").stdout
    )["items"]
    texts = []
    for pod in pods:
        ip = pod["status"].get("podIP")
        if ip and pod["status"].get("phase") == "Running":
            with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5) as response:
                texts.append(response.read().decode())
    return "\n".join(texts)


@pytest.fixture
def namespaces(helm: Helm) -> Iterator[tuple[str, str, str]]:
    """(operator namespace, application namespace, a namespace the operator does not watch)."""
    suffix = f"{next(_ids)}-{int(time.time()) % 100000}"
    names = (f"helm-op-{suffix}", f"helm-app-{suffix}", f"helm-other-{suffix}")
    for name in (names[0], names[2]):
        helm.cluster.create_namespace(name)
    yield names
    # The ProjectorSet keeps the operator's finalizer once the operator is uninstalled.
    helm.kubectl(
        "patch",
        "projectorsets",
        "--all",
        "-n",
        names[1],
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
        check=False,
    )
    for name in names:
        helm.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def test_namespaced_install_upgrades_the_app_with_only_the_charts_rbac(
    helm: Helm,
    namespaces: tuple[str, str, str],
    local_cluster: LocalCluster,
    kube_api: client.ApiClient,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    operator_ns, app_ns, other_ns = namespaces
    release = f"pso-{operator_ns.removeprefix('helm-op-')}"
    account = f"{release}-projectorset-operator"
    identity = f"system:serviceaccount:{operator_ns}:{account}"
    kubeconfig = tmp_path / "operator.kubeconfig"
    values = operator_values(kubeconfig, replicaCount=1, rbac={"scope": "namespaced"}, watchNamespaces=[app_ns])
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    # The application namespace exists first: the chart's Role and RoleBinding go into it.
    local_cluster.create_namespace(app_ns)

    helm.helm("install", release, str(CHART), "-n", operator_ns, "-f", str(values_file))
    for crd in ("projectorsets.projectorset.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        helm.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    helm.service_account_kubeconfig(operator_ns, account, kubeconfig)
    rollout = helm.kubectl(
        "rollout", "status", f"deployment/{account}", "-n", operator_ns, "--timeout=120s", check=False
    )
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr + operator_logs(local_cluster, operator_ns)

    # What the ServiceAccount must not do.
    assert helm.can_i(identity, "get", "secrets", app_ns)
    assert not helm.can_i(identity, "get", "secrets", other_ns)
    assert not helm.can_i(identity, "get", "secrets", operator_ns)
    assert not helm.can_i(identity, "list", "secrets", app_ns)
    assert not helm.can_i(identity, "create", "pods", app_ns)
    assert not helm.can_i(identity, "delete", "customresourcedefinitions")
    assert not helm.can_i(identity, "create", "deployments", other_ns)
    assert not helm.can_i(identity, "patch", "services", other_ns)
    assert not helm.can_i(identity, "list", "projectorsets", None)  # not cluster-wide

    # A full upgrade of the sample application, by the operator pod under that identity.
    scenario = ChartScenario(local_cluster, kube_api, postgres_server, app_ns, tmp_path)
    scenario.operator_namespace = operator_ns
    scenario.prepare()
    started = time.monotonic()
    scenario.apply("v1")
    scenario.wait_active("v1")
    scenario.apply("v2")
    status = scenario.wait_active("v2")
    print(f"v1 -> v2 through the chart's operator: {time.monotonic() - started:.1f} s")
    assert {p["name"]: p["activeVersion"] for p in status["projectors"]} == {"AccountProjector": 2, "AuditProjector": 1}
    assert projector_rows(scenario.database_url) == {
        "AccountProjector": (2, None, None),
        "AuditProjector": (1, None, None),
    }
    selector = client.CoreV1Api(kube_api).read_namespaced_service("accounts", app_ns).spec.selector
    assert selector["projectorset.io/version"] == "v2"
    # Nothing failed for lack of permission on the way.
    logs = operator_logs(local_cluster, operator_ns, lines=100000)
    assert "Forbidden" not in logs and " 403" not in logs, logs[-4000:]

    # The metrics endpoint of the pod shows the rollout.
    text = metrics_text(helm, operator_ns, release, values["metrics"]["port"])
    assert f'projectorset_phase{{name="accounts",namespace="{app_ns}",phase="Active"}} 1.0' in text
    assert "projectorset_activation_to_switch_seconds_count 2.0" in text

    # helm upgrade: a changed value rolls the operator, which carries on (v2 -> v3).
    helm.helm("upgrade", release, str(CHART), "-n", operator_ns, "-f", str(values_file), "--set", "logFormat=full")
    rollout = helm.kubectl(
        "rollout", "status", f"deployment/{account}", "-n", operator_ns, "--timeout=120s", check=False
    )
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr + operator_logs(local_cluster, operator_ns)
    deployment = json.loads(helm.kubectl("get", "deployment", account, "-n", operator_ns, "-o", "json").stdout)
    assert "--log-format=full" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert json.loads(helm.helm("history", release, "-n", operator_ns, "-o", "json").stdout)[-1]["revision"] == 2
    scenario.apply("v3")
    scenario.wait_active("v3")

    # helm uninstall leaves nothing of the release but the CRDs (and the users' ProjectorSets).
    helm.helm("uninstall", release, "-n", operator_ns, "--wait", "--timeout=120s")
    deadline = time.monotonic() + 60
    while left := release_objects(helm, release, [operator_ns, app_ns]):
        assert time.monotonic() < deadline, f"left behind by helm uninstall: {left}"
        time.sleep(0.5)
    for crd in ("projectorsets.projectorset.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        helm.kubectl("get", "crd", crd)
    helm.kubectl("get", "projectorset", "accounts", "-n", app_ns)
    assert not helm.can_i(identity, "get", "secrets", app_ns)


def test_two_replicas_peer_so_that_exactly_one_acts_and_a_standby_takes_over(
    helm: Helm,
    namespaces: tuple[str, str, str],
    local_cluster: LocalCluster,
    kube_api: client.ApiClient,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    operator_ns, app_ns, _ = namespaces
    release = f"pso-{operator_ns.removeprefix('helm-op-')}"
    account = f"{release}-projectorset-operator"
    kubeconfig = tmp_path / "operator.kubeconfig"
    # Cluster-scoped RBAC (the default) but one watched namespace: other tests' namespaces stay theirs.
    values = operator_values(kubeconfig, replicaCount=2, watchNamespaces=[app_ns])
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    local_cluster.create_namespace(app_ns)

    helm.helm("install", release, str(CHART), "-n", operator_ns, "-f", str(values_file))
    helm.service_account_kubeconfig(operator_ns, account, kubeconfig)
    rollout = helm.kubectl(
        "rollout", "status", f"deployment/{account}", "-n", operator_ns, "--timeout=120s", check=False
    )
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr + operator_logs(local_cluster, operator_ns)

    # Both replicas announce themselves in the KopfPeering the chart created in the watched namespace.
    deadline = time.monotonic() + 60
    peers: dict[str, Any] = {}
    while len(peers) < 2:
        assert time.monotonic() < deadline, f"peers: {peers}\n{operator_logs(local_cluster, operator_ns)}"
        time.sleep(0.5)
        peering = json.loads(helm.kubectl("get", "kopfpeering", account, "-n", app_ns, "-o", "json").stdout)
        peers = peering.get("status") or {}
    priorities = [peer["priority"] for peer in peers.values()]
    assert len(set(priorities)) == 2, peers  # random priorities: never the tie that pauses both

    scenario = ChartScenario(local_cluster, kube_api, postgres_server, app_ns, tmp_path)
    scenario.operator_namespace = operator_ns
    scenario.prepare()
    scenario.apply("v1")
    scenario.wait_active("v1")
    scenario.apply("v2")
    scenario.wait_active("v2")

    # Exactly one replica acted: the rollout shows in one pod's log, and its Events come from that pod.
    # (The standby starts paused when it finds a higher priority in the peering, so it need not log it.)
    logs = {
        log.parent.name.split("_")[1]: log.read_text(errors="replace")
        for log in (local_cluster.workdir / "kubelet" / "pods").glob(f"{operator_ns}_*/operator.log")
    }
    acting = [pod for pod, text in logs.items() if "ServiceSwitched" in text]
    assert len(logs) == 2 and len(acting) == 1, operator_logs(local_cluster, operator_ns)
    (standby,) = set(logs) - set(acting)
    assert "RolloutStarted" not in logs[standby] and "Preparing" not in logs[standby]
    events = client.CoreV1Api(kube_api).list_namespaced_event(app_ns, field_selector="involvedObject.kind=ProjectorSet")
    assert {e.reporting_instance for e in events.items} == set(acting)

    # The acting pod goes away (a drain, a node failure): a standby takes over and rolls out v3.
    helm.kubectl("delete", "pod", acting[0], "-n", operator_ns, "--wait=false")
    scenario.apply("v3")
    scenario.wait_active("v3", timeout=180)
    events = client.CoreV1Api(kube_api).list_namespaced_event(app_ns, field_selector="involvedObject.kind=ProjectorSet")
    switched_by = {e.reporting_instance for e in events.items if "version v3" in (e.message or "")}
    assert switched_by and acting[0] not in switched_by, switched_by
    helm.helm("uninstall", release, "-n", operator_ns, "--wait", "--timeout=120s")
