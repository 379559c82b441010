"""The Helm chart on the local cluster: `helm install`, then the operator, running as a pod with
the identity of the chart's ServiceAccount under RBAC authorization, upgrades the sample
application; `kubectl auth can-i` shows what it may not do; `helm upgrade`; `helm uninstall`.
The CRD: adopted from a `kubectl apply`, upgraded by `helm upgrade` with a new field, kept by
`helm uninstall`. `helm test`: its pod finds every operator pod answering, and fails without them.

The process kubelet mounts no ServiceAccount token, so the test gives the pod a kubeconfig
holding a token of the chart's ServiceAccount (`kubectl create token`) and nothing else: the
operator acts with exactly the chart's RBAC.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from projectorset.api import crd as crd_generator
from testbed import toolchain
from testbed.cluster import LocalCluster
from testbed.manifests import sample_projectorset
from testbed.postgres import PostgresServer, free_port
from testbed.scenario import OPERATOR, REPO, Scenario
from testbed.sequent_schema import projector_rows

CHART = REPO / "charts" / "projectorset-operator"
CRD_NAME = "projectorsets.projectorset.io"
_ids = itertools.count(1)
# Waits for a kubeconfig the test writes once `helm install` made the ServiceAccount it is for.
WAIT_FOR_KUBECONFIG = 'until [ -s "$KUBECONFIG" ]; do sleep 0.2; done; exec "$0" "$@"'


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
        "command": ["/bin/sh", "-c", WAIT_FOR_KUBECONFIG, str(OPERATOR)],
        "extraEnv": [{"name": "KUBECONFIG", "value": str(kubeconfig)}],
        # Every pod has its own 127.0.0.N: binding it lets two replicas use the same ports.
        "listenAddress": "$(POD_IP)",
        "health": {"port": free_port()},
        "metrics": {"port": free_port()},
        "logFormat": "plain",
        "livenessProbe": {"initialDelaySeconds": 5, "periodSeconds": 5},
        "readinessProbe": {"periodSeconds": 1},
        # The tests share one cluster: the CRD is applied as `make install` does (install_crd), and
        # only the CRD test lets a release own it.
        "crds": {"install": False},
    }
    base.update(values)
    return base


def install_operator(
    helm: Helm, release: str, operator_ns: str, app_ns: str, values: dict[str, Any], tmp_path: Path
) -> Path:
    """`helm install` with ``values`` for the local cluster, the CRD applied first as `make install`
    does; returns the values file (for `helm upgrade`)."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    # The application namespace exists first: a namespaced scope's Role and RoleBinding go into it.
    helm.cluster.create_namespace(app_ns)
    install_crd(helm)
    helm.helm("install", release, str(CHART), "-n", operator_ns, "-f", str(values_file))
    return values_file


def wait_rollout(helm: Helm, operator_ns: str, account: str) -> None:
    rollout = helm.kubectl(
        "rollout", "status", f"deployment/{account}", "-n", operator_ns, "--timeout=120s", check=False
    )
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr + operator_logs(helm.cluster, operator_ns)


def install_crd(helm: Helm) -> None:
    """The ProjectorSet CRD as `make install` applies it (kubectl apply -f crds/)."""
    helm.kubectl("apply", "-f", str(REPO / "crds" / "projectorsets.yaml"))
    helm.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")


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
    values_file = install_operator(helm, release, operator_ns, app_ns, values, tmp_path)
    for crd in ("projectorsets.projectorset.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        helm.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    helm.service_account_kubeconfig(operator_ns, account, kubeconfig)
    wait_rollout(helm, operator_ns, account)

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
    wait_rollout(helm, operator_ns, account)
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
    install_operator(helm, release, operator_ns, app_ns, values, tmp_path)
    helm.service_account_kubeconfig(operator_ns, account, kubeconfig)
    wait_rollout(helm, operator_ns, account)

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


def crd_schema_spec(helm: Helm) -> dict[str, Any]:
    found = json.loads(helm.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    properties: dict[str, Any] = found["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return properties


def set_note(helm: Helm, namespace: str, note: str) -> subprocess.CompletedProcess[str]:
    patch = json.dumps({"spec": {"changeNote": note}})
    return helm.kubectl("patch", "projectorset", "accounts", "-n", namespace, "--type=merge", "-p", patch, check=False)


def read_note(helm: Helm, namespace: str) -> str:
    jsonpath = "-o=jsonpath={.spec.changeNote}"
    return helm.kubectl("get", "projectorset", "accounts", "-n", namespace, jsonpath).stdout


def test_helm_upgrade_upgrades_the_crd_and_uninstall_keeps_it_with_the_sets(
    helm: Helm, namespaces: tuple[str, str, str], local_cluster: LocalCluster, tmp_path: Path
) -> None:
    operator_ns, app_ns, _ = namespaces
    release = f"pso-{operator_ns.removeprefix('helm-op-')}"
    local_cluster.create_namespace(app_ns)
    # No operator pod is needed to show what the API server keeps: the chart with no replica.
    install = ["-n", operator_ns, "--set", "replicaCount=0", "--set", f"watchNamespaces={{{app_ns}}}"]

    # The CRD exists already, applied by kubectl as `make install` does (the tests share the
    # cluster: another test's release may have owned it, so it is made nobody's first).
    if helm.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0:
        helm.kubectl("label", "crd", CRD_NAME, "app.kubernetes.io/managed-by-")
        helm.kubectl("annotate", "crd", CRD_NAME, "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-")
    install_crd(helm)

    # helm install refuses to take it over silently, and says how to adopt it.
    refused = helm.helm("install", release, str(CHART), *install, check=False)
    assert refused.returncode != 0
    message = refused.stderr
    print(message)
    assert f"CustomResourceDefinition {CRD_NAME} already exists and belongs to no Helm release" in message
    assert "--set crds.install=false" in message
    commands = [shlex.split(line) for line in message.splitlines() if line.strip().startswith("kubectl ")]
    assert len(commands) == 2, message
    for command in commands:
        helm.kubectl(*command[1:])
    helm.helm("install", release, str(CHART), *install)
    owned = json.loads(helm.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)["metadata"]
    assert owned["annotations"]["meta.helm.sh/release-name"] == release
    assert owned["annotations"]["helm.sh/resource-policy"] == "keep"

    # A field this chart's CRD does not have is not stored (refused by field validation, or pruned).
    manifest = sample_projectorset("v1", namespace=app_ns)
    (tmp_path / "set.yaml").write_text(yaml.safe_dump(manifest))
    helm.kubectl("apply", "-f", str(tmp_path / "set.yaml"))
    before = set_note(helm, app_ns, "moved to the new cluster")
    assert read_note(helm, app_ns) == "", before.stdout + before.stderr
    print(f"spec.changeNote with chart 0.1.0's CRD: not stored ({(before.stdout + before.stderr).strip()})")
    assert "changeNote" not in crd_schema_spec(helm)["properties"]

    # The next chart version's CRD has the field; helm upgrade applies it.
    newer = tmp_path / "projectorset-operator"
    shutil.copytree(CHART, newer)
    definition = crd_generator.custom_resource_definition()
    spec = definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["changeNote"] = {"type": "string", "description": "Why this version is rolled out."}
    (newer / "templates" / "crd-projectorsets.yaml").write_text(crd_generator.render_helm_template(definition))
    chart = yaml.safe_load((newer / "Chart.yaml").read_text())
    chart["version"] = "0.1.1"
    (newer / "Chart.yaml").write_text(yaml.safe_dump(chart))
    upgraded = helm.helm("upgrade", release, str(newer), *install)
    print(upgraded.stdout)
    assert crd_schema_spec(helm)["properties"]["changeNote"]["type"] == "string"
    deadline = time.monotonic() + 30
    while read_note(helm, app_ns) != "moved to the new cluster":
        # The API server serves a changed CRD's schema within moments.
        result = set_note(helm, app_ns, "moved to the new cluster")
        assert time.monotonic() < deadline, result.stdout + result.stderr
        time.sleep(0.5)
    print(f"spec.changeNote after helm upgrade to 0.1.1: {read_note(helm, app_ns)!r}")
    history = json.loads(helm.helm("history", release, "-n", operator_ns, "-o", "json").stdout)
    assert [(h["revision"], h["chart"]) for h in history] == [
        (1, "projectorset-operator-0.1.0"),
        (2, "projectorset-operator-0.1.1"),
    ]

    # helm uninstall keeps the CRD (as the last upgrade left it) and the ProjectorSets.
    helm.helm("uninstall", release, "-n", operator_ns, "--wait", "--timeout=120s")
    assert "changeNote" in crd_schema_spec(helm)["properties"]
    assert read_note(helm, app_ns) == "moved to the new cluster"
    assert not helm.kubectl("get", "deployments", "-n", operator_ns, "-o", "name").stdout.strip()


def test_helm_test_finds_every_operator_pod_answering_and_fails_without_them(
    helm: Helm, namespaces: tuple[str, str, str], local_cluster: LocalCluster, tmp_path: Path
) -> None:
    operator_ns, app_ns, _ = namespaces
    release = f"pso-{operator_ns.removeprefix('helm-op-')}"
    account = f"{release}-projectorset-operator"
    kubeconfig = tmp_path / "operator.kubeconfig"
    test_kubeconfig = tmp_path / "test.kubeconfig"
    values = operator_values(
        kubeconfig,
        replicaCount=2,
        watchNamespaces=[app_ns],
        # The test pod runs this venv's Python (with the kubernetes client, as the image has), as the
        # test's ServiceAccount: the process kubelet mounts no token, so it gets a kubeconfig.
        test={
            "command": ["/bin/sh", "-c", WAIT_FOR_KUBECONFIG, sys.executable, "-c"],
            "extraEnv": [{"name": "KUBECONFIG", "value": str(test_kubeconfig)}],
        },
    )
    install_operator(helm, release, operator_ns, app_ns, values, tmp_path)
    helm.service_account_kubeconfig(operator_ns, account, kubeconfig)
    helm.service_account_kubeconfig(operator_ns, f"{account}-test", test_kubeconfig)
    wait_rollout(helm, operator_ns, account)

    passed = helm.helm("test", release, "-n", operator_ns, "--logs", "--timeout=120s", check=False)
    print(passed.stdout)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "Phase:          Succeeded" in passed.stdout
    answered = [line for line in passed.stdout.splitlines() if line.endswith(" answered")]
    assert len([line for line in answered if " health " in line]) == 2, passed.stdout
    assert len([line for line in answered if " metrics " in line]) == 2, passed.stdout

    # With the operator gone, the same test fails and says why.
    helm.kubectl("scale", f"deployment/{account}", "-n", operator_ns, "--replicas=0")
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/name=projectorset-operator"
    deadline = time.monotonic() + 60
    while helm.kubectl("get", "pods", "-n", operator_ns, "-l", selector, "-o", "name").stdout.strip():
        assert time.monotonic() < deadline, "the operator pods did not stop"
        time.sleep(0.5)
    failed = helm.helm("test", release, "-n", operator_ns, "--logs", "--timeout=120s", check=False)
    print(failed.stdout + failed.stderr)
    assert failed.returncode != 0
    assert "0 running operator pod(s)" in failed.stdout + failed.stderr
    helm.helm("uninstall", release, "-n", operator_ns, "--wait", "--timeout=120s")
