"""The Helm chart, offline: `helm lint`, `helm template` with the real helm binary, and the
rendered objects checked the way a reviewer of an operator's chart would check them; the alert
rules checked and unit-tested with the real promtool (tests/chart/alerts.test.yaml)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from projectorset.runtime.metrics import OperatorMetrics
from testbed import toolchain

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "projectorset-operator"
RELEASE = "pso"
FULLNAME = "pso-projectorset-operator"

# The first run on a machine builds helm (and promtool) from Go modules.
pytestmark = [pytest.mark.chart, pytest.mark.timeout(3600)]

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    return toolchain.binary("helm")


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


def render(helm: Path, *values: str, namespace: str = "operators", include_crds: bool = False) -> list[Manifest]:
    flags = [flag for value in values for flag in ("--set", value)]
    if include_crds:
        flags.append("--include-crds")
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", namespace, *flags)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}: {[m['metadata']['name'] for m in found]}"
    return found[0]


def kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def container(manifests: list[Manifest]) -> Manifest:
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    result: Manifest = pod["containers"][0]
    return result


def is_test_hooks(manifest: Manifest) -> bool:
    """The `helm test` pod and its ServiceAccount and Role, not the operator's."""
    return bool(manifest["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "test")


def rules_of(manifests: list[Manifest]) -> list[tuple[str, str, Manifest]]:
    """(kind, namespace, rule) for every RBAC rule rendered for the operator."""
    return [
        (m["kind"], m["metadata"].get("namespace", ""), rule)
        for m in manifests
        if m["kind"] in ("ClusterRole", "Role") and not is_test_hooks(m)
        for rule in m["rules"]
    ]


def allows(manifests: list[Manifest], resource: str, verb: str, group: str = "") -> set[str]:
    """Where (a namespace, or "*" for cluster-wide) the rendered RBAC grants ``verb`` on ``resource``."""
    where: set[str] = set()
    for kind, namespace, rule in rules_of(manifests):
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            where.add("*" if kind == "ClusterRole" else namespace)
    return where


# --- lint and values schema ----------------------------------------------------------------------


def test_helm_lint_passes_with_default_and_namespaced_values(helm: Path) -> None:
    for values in ([], ["rbac.scope=namespaced", "watchNamespaces={team-a,team-b}"], ["replicaCount=1"]):
        flags = [flag for value in values for flag in ("--set", value)]
        result = run_helm(helm, "lint", "--strict", str(CHART), *flags)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("replicaCount=-1", "replicaCount"),
        ("logFormat=xml", "logFormat"),
        ("rbac.scope=everywhere", "scope"),
        ("health.port=70000", "port"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
        ("replicas=2", "replicas"),  # a typo of replicaCount is an error, not silently ignored
    ],
)
def test_values_schema_rejects_bad_values(helm: Path, value: str, complaint: str) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", value)
    assert result.returncode != 0, f"{value} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr


def test_combinations_the_schema_cannot_express_are_refused(helm: Path) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", "rbac.scope=namespaced")
    assert result.returncode != 0
    assert "rbac.scope=namespaced needs watchNamespaces" in result.stderr
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", "metrics.port=8080")
    assert result.returncode != 0
    assert "metrics.port and health.port must differ" in result.stderr


def test_chart_app_version_is_the_packages_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert package is not None and chart["appVersion"] == package.group(1)


# --- the operator Deployment ---------------------------------------------------------------------


def test_default_deployment_runs_two_peered_replicas_with_a_restricted_security_context(helm: Path) -> None:
    manifests = render(helm)
    deployment = one(manifests, "Deployment", FULLNAME)
    assert deployment["metadata"]["namespace"] == "operators"
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    operator = container(manifests)
    security = operator["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert operator["resources"]["requests"]["cpu"] and operator["resources"]["requests"]["memory"]
    assert operator["resources"]["limits"]["memory"]
    assert operator["image"] == "ghcr.io/projectorset/projectorset-operator:0.1.0"

    # Exactly one replica acts: Kopf peering through the ClusterKopfPeering the chart creates.
    assert f"--peering={FULLNAME}" in operator["args"]
    assert one(manifests, "ClusterKopfPeering")["metadata"]["name"] == FULLNAME
    assert not any(arg.startswith("--namespace") for arg in operator["args"])
    env = {e["name"]: e for e in operator["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # Kopf's peer identity
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_probes_use_kopfs_health_endpoint(helm: Path) -> None:
    operator = container(render(helm, "health.port=8181"))
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports["health"] == 8181
    assert "--liveness=http://0.0.0.0:8181/healthz" in operator["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_one_replica_runs_standalone_without_peering_or_pdb(helm: Path) -> None:
    manifests = render(helm, "replicaCount=1")
    assert one(manifests, "Deployment")["spec"]["replicas"] == 1
    assert not any(arg.startswith("--peering") for arg in container(manifests)["args"])
    assert "ClusterKopfPeering" not in kinds(manifests)
    assert "PodDisruptionBudget" not in kinds(manifests)
    # Two standalone operators must never run at once, not even during a rollout.
    assert one(manifests, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    # Peering disabled with two replicas: no peering either (the user takes care of it).
    manifests = render(helm, "peering.enabled=false")
    assert not any(arg.startswith("--peering") for arg in container(manifests)["args"])


def test_values_reach_the_container(helm: Path) -> None:
    manifests = render(
        helm,
        "logFormat=plain",
        "image.tag=1.2.3",
        "image.pullPolicy=Always",
        "extraEnv[0].name=HTTPS_PROXY",
        "extraEnv[0].value=http://proxy:3128",
        "nodeSelector.pool=ops",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "verbose=true",
        "metrics.port=9100",
    )
    operator = container(manifests)
    assert "--log-format=plain" in operator["args"]
    assert "--verbose" in operator["args"]
    assert "--metrics-port=9100" in operator["args"]
    assert operator["image"].endswith(":1.2.3") and operator["imagePullPolicy"] == "Always"
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in operator["env"]
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "ops"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]


def test_image_digest_overrides_the_tag(helm: Path) -> None:
    digest = "sha256:" + "ab" * 32
    operator = container(render(helm, "image.tag=1.2.3", f"image.digest={digest}"))
    assert operator["image"] == f"ghcr.io/projectorset/projectorset-operator@{digest}"
    test_pod = one(render(helm, f"image.digest={digest}"), "Pod")
    assert test_pod["spec"]["containers"][0]["image"] == operator["image"]
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", "image.digest=latest")
    assert result.returncode != 0 and "digest" in result.stderr


def test_replicas_spread_across_nodes_and_stop_within_the_grace_period(helm: Path) -> None:
    manifests = render(helm)
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    selector = one(manifests, "Deployment")["spec"]["selector"]
    assert pod["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": selector,
        }
    ]
    assert pod["terminationGracePeriodSeconds"] == 30

    pod = one(
        render(
            helm,
            "terminationGracePeriodSeconds=90",
            "topologySpreadConstraints[0].maxSkew=1",
            "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
            "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
            "topologySpreadConstraints[0].labelSelector.matchLabels.team=ops",
        ),
        "Deployment",
    )["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 90
    (constraint,) = pod["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "topology.kubernetes.io/zone"
    assert constraint["labelSelector"] == {"matchLabels": {"team": "ops"}}  # the user's selector is kept
    assert (
        "topologySpreadConstraints"
        not in one(render(helm, "topologySpreadConstraints=null"), "Deployment")["spec"]["template"]["spec"]
    )


def test_helm_test_pod_checks_the_operator_pods_with_its_own_narrow_account(helm: Path) -> None:
    manifests = render(helm, "metrics.port=9191", "health.port=8181")
    pod = one(manifests, "Pod", f"{FULLNAME}-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    selector = one(manifests, "Deployment")["spec"]["selector"]["matchLabels"]
    # Not one of the operator's pods: its ReplicaSet would adopt it, the PDB and Service count it.
    assert not selector.items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["serviceAccountName"] == f"{FULLNAME}-test"
    (test,) = spec["containers"]
    assert test["command"] == ["python", "-c"]
    assert test["args"] == [(CHART / "files" / "test-operator-answers.py").read_text()]
    env = {e["name"]: e["value"] for e in test["env"]}
    wanted = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    assert env == {
        "NAMESPACE": "operators",
        "SELECTOR": wanted,
        "REPLICAS": "2",
        "HEALTH_PORT": "8181",
        "METRICS_PORT": "9191",
        "TIMEOUT": "10",
    }
    assert test["securityContext"]["readOnlyRootFilesystem"] is True
    role = one(manifests, "Role", f"{FULLNAME}-test")
    assert role["metadata"]["namespace"] == "operators"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    binding = one(manifests, "RoleBinding", f"{FULLNAME}-test")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULLNAME}-test", "namespace": "operators"}]

    no_metrics = one(render(helm, "metrics.enabled=false"), "Pod")["spec"]["containers"][0]
    assert {"name": "METRICS_PORT", "value": ""} in no_metrics["env"]
    assert not [m for m in render(helm, "test.enabled=false") if is_test_hooks(m)]


def test_chart_command_is_the_images_entrypoint(helm: Path) -> None:
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert entrypoint is not None
    assert container(render(helm))["command"] == json.loads(entrypoint.group(1))
    # And it is the package's console script.
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'projectorset-operator = "projectorset.runtime.main:main"' in pyproject
    assert "USER 65532:65532" in (REPO / "Dockerfile").read_text()


def test_metrics_port_service_and_optional_servicemonitor(helm: Path) -> None:
    manifests = render(helm)
    assert "ServiceMonitor" not in kinds(manifests)
    service = one(manifests, "Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container(manifests)["ports"]

    manifests = render(helm, "metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom")
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # The series keep the set's namespace label (not the operator pod's), which the alerts group by.
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()

    manifests = render(helm, "metrics.enabled=false")
    assert "--metrics-port=0" in container(manifests)["args"]
    assert "Service" not in kinds(manifests)


# --- RBAC ----------------------------------------------------------------------------------------


def test_rbac_has_no_wildcards_and_never_touches_pods(helm: Path) -> None:
    for manifests in (render(helm), render(helm, "rbac.scope=namespaced", "watchNamespaces={team-a}")):
        for _, _, rule in rules_of(manifests):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], rule
        assert not allows(manifests, "pods", "create")
        assert not allows(manifests, "customresourcedefinitions", "delete", "apiextensions.k8s.io")
        assert not allows(manifests, "secrets", "list")  # only get, by name
        assert not allows(manifests, "secrets", "watch")


def test_cluster_scope_grants_what_the_operator_uses_everywhere(helm: Path) -> None:
    manifests = render(helm)
    assert "Role" not in kinds([m for m in manifests if not is_test_hooks(m)])
    bindings = [m for m in manifests if m["kind"] == "ClusterRoleBinding"]
    assert {b["roleRef"]["name"] for b in bindings} == {FULLNAME, f"{FULLNAME}-cluster"}
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": "operators"}]
    expected = {
        ("projectorsets", "projectorset.io"): {"get", "list", "watch", "patch"},
        ("projectorsets/status", "projectorset.io"): {"get", "patch"},
        ("deployments", "apps"): {"get", "list", "watch", "create", "patch", "delete"},
        ("jobs", "batch"): {"get", "list", "watch", "create", "delete"},
        ("pods", ""): {"list"},
        ("pods/log", ""): {"get"},
        ("services", ""): {"get", "patch"},
        ("secrets", ""): {"get"},
        ("events", ""): {"create", "patch"},
        ("customresourcedefinitions", "apiextensions.k8s.io"): {"get", "list", "watch"},
        ("clusterkopfpeerings", "kopf.dev"): {"get", "list", "watch", "patch"},
    }
    granted: dict[tuple[str, str], set[str]] = {}
    for _, _, rule in rules_of(manifests):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((resource, group), set()).update(rule["verbs"])
    assert granted == expected


def test_namespaced_scope_grants_only_in_the_watched_namespaces(helm: Path) -> None:
    manifests = render(helm, "rbac.scope=namespaced", "watchNamespaces={team-a,team-b}")
    roles = [m for m in manifests if m["kind"] == "Role" and not is_test_hooks(m)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = [m for m in manifests if m["kind"] == "RoleBinding" and not is_test_hooks(m)]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": "operators"}]
    # Secrets, workloads and Services only where ProjectorSets are watched; never cluster-wide.
    assert allows(manifests, "secrets", "get") == {"team-a", "team-b"}
    assert allows(manifests, "deployments", "create", "apps") == {"team-a", "team-b"}
    assert allows(manifests, "services", "patch") == {"team-a", "team-b"}
    # Cluster-wide, only what Kopf must read: the CRDs, and the namespaces (whether they exist).
    cluster_rules = [rule for kind, _, rule in rules_of(manifests) if kind == "ClusterRole"]
    assert cluster_rules == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    # Peering per namespace, and the operator told which namespaces to watch.
    peerings = [m for m in manifests if m["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert allows(manifests, "kopfpeerings", "patch", "kopf.dev") == {"team-a", "team-b"}
    args = container(manifests)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


# --- the CRDs ------------------------------------------------------------------------------------


def test_chart_renders_the_generated_crd_with_the_keep_policy(helm: Path) -> None:
    # Rendered as a template (so `helm upgrade` applies it; tests/test_crd.py checks it is the
    # generated one), it is the CRD of crds/ with the chart's labels and the keep policy:
    # uninstalling must not delete it, nor with it every ProjectorSet.
    rendered = one(render(helm), "CustomResourceDefinition", "projectorsets.projectorset.io")
    generated = yaml.safe_load((REPO / "crds" / "projectorsets.yaml").read_text())
    assert rendered["spec"] == generated["spec"]
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

    assert "CustomResourceDefinition" not in kinds(render(helm, "crds.install=false"))
    unkept = one(render(helm, "crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in unkept["metadata"]


def test_kopf_peering_crds_stay_in_crds_dir(helm: Path) -> None:
    # The release creates a ClusterKopfPeering (or KopfPeerings): Helm 3 maps every object of a
    # release before creating any, so their CRDs must exist first, which only crds/ guarantees.
    peering = {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    with_crds_dir = {
        m["metadata"]["name"] for m in render(helm, include_crds=True) if m["kind"] == "CustomResourceDefinition"
    }
    assert with_crds_dir == peering | {"projectorsets.projectorset.io"}
    assert {m["metadata"]["name"] for m in render(helm) if m["kind"] == "CustomResourceDefinition"} == {
        "projectorsets.projectorset.io"
    }
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["kopf-peerings.yaml"]


# --- dashboards and alerts -----------------------------------------------------------------------

METRIC_NAME = re.compile(r"\bprojectorset_[a-z_]+\b")


def exported_metrics() -> set[str]:
    """The series names the operator's metrics registry exports (counters end in _total,
    histograms in _bucket, _sum and _count)."""
    registry = CollectorRegistry()
    OperatorMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def dashboard_of(manifests: list[Manifest]) -> Manifest:
    configmap = one(manifests, "ConfigMap", f"{FULLNAME}-dashboard")
    dashboard: Manifest = json.loads(configmap["data"]["projectorset-operator.json"])
    return dashboard


def panel_queries(dashboard: Manifest) -> dict[str, list[str]]:
    return {
        panel["title"]: [target["expr"] for target in panel.get("targets", [])]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    }


def test_dashboard_and_rules_are_off_by_default(helm: Path) -> None:
    manifests = render(helm)
    assert "ConfigMap" not in kinds(manifests)
    assert "PrometheusRule" not in kinds(manifests)


def test_dashboard_is_a_configmap_for_the_grafana_sidecar_using_only_exported_metrics(helm: Path) -> None:
    manifests = render(helm, "grafanaDashboard.enabled=true", "grafanaDashboard.annotations.grafana_folder=Operators")
    configmap = one(manifests, "ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "operators"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Operators"}
    dashboard = dashboard_of(manifests)
    queries = panel_queries(dashboard)
    exported = exported_metrics()
    used: set[str] = set()
    for title, expressions in queries.items():
        names = {name for expression in expressions for name in METRIC_NAME.findall(expression)}
        assert names, f"panel {title!r} queries no operator metric"
        assert names <= exported, f"panel {title!r} uses {sorted(names - exported)}, not exported by the operator"
        used |= names
    # What the dashboard is for: phases, lag, stage durations, active-to-switch latency, failures.
    for wanted in (
        "projectorset_phase",
        "projectorset_replay_lag_events",
        "projectorset_replay_stage_duration_seconds_sum",
        "projectorset_activation_to_switch_seconds_bucket",
        "projectorset_rollout_failures_total",
    ):
        assert wanted in used, wanted
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "name"} <= variables

    # The sidecar's label is configurable, and so is the namespace the sidecar watches.
    manifests = render(
        helm,
        "grafanaDashboard.enabled=true",
        "grafanaDashboard.label=team_dashboards",
        "grafanaDashboard.labelValue=ops",
        "grafanaDashboard.namespace=monitoring",
    )
    configmap = one(manifests, "ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["team_dashboards"] == "ops"
    assert "grafana_dashboard" not in configmap["metadata"]["labels"]
    assert configmap["metadata"]["namespace"] == "monitoring"


def test_prometheus_rule_alerts_on_failure_catchup_stuck_and_absent_operator(helm: Path) -> None:
    manifests = render(
        helm,
        "prometheusRule.enabled=true",
        "prometheusRule.labels.release=prom",
        "prometheusRule.additionalLabels.team=platform",
        "prometheusRule.stuckFor=45m",
    )
    rule = one(manifests, "PrometheusRule", FULLNAME)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {a["alert"] for a in alerts} == {
        "ProjectorSetRolloutFailed",
        "ProjectorSetCatchupNotConverging",
        "ProjectorSetRolloutStuck",
        "ProjectorSetOperatorAbsent",
    }
    exported = exported_metrics()
    for alert in alerts:
        names = set(METRIC_NAME.findall(alert["expr"]))
        assert names and names <= exported, (alert["alert"], sorted(names - exported))
        assert alert["labels"]["team"] == "platform"
        assert alert["labels"]["severity"] in ("warning", "critical")
        # Prometheus's own templating survives Helm's.
        assert "{{ $labels" in alert["annotations"]["summary"] or alert["alert"] == "ProjectorSetOperatorAbsent"
    by_name = {a["alert"]: a for a in alerts}
    assert 'phase="Failed"' in by_name["ProjectorSetRolloutFailed"]["expr"]
    assert 'stage="catchup"' in by_name["ProjectorSetCatchupNotConverging"]["expr"]
    stuck = [a for a in alerts if a["alert"] == "ProjectorSetRolloutStuck"]
    assert {a["for"] for a in stuck} == {"45m", "6h"}
    assert all("Paused" not in a["expr"] for a in stuck)  # a person's decision, not a stuck rollout
    absent = by_name["ProjectorSetOperatorAbsent"]["expr"]
    assert 'absent(projectorset_last_pass_timestamp_seconds{namespace="operators"})' in absent
    assert by_name["ProjectorSetOperatorAbsent"]["labels"]["severity"] == "critical"


def test_rule_and_dashboard_values_are_checked_by_the_schema(helm: Path) -> None:
    for value in (
        "prometheusRule.stuckFor=soon",
        "grafanaDashboard.enabeld=true",
        "prometheusRule.severity.x=y",
        "crds.instal=false",
        "test.enable=false",
        "topologySpreadConstraints[0].whenUnsatisfiable=Maybe",
        "terminationGracePeriodSeconds=-1",
    ):
        result = run_helm(helm, "template", RELEASE, str(CHART), "--set", value)
        assert result.returncode != 0, f"{value} was accepted"
        assert "values don't meet the specifications of the schema" in result.stderr


@pytest.fixture(scope="module")
def promtool() -> Path:
    return toolchain.binary("promtool")


def run_promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def rendered_rules(helm: Path, tmp_path: Path) -> Path:
    """The PrometheusRule's groups as a Prometheus rule file, beside a copy of the rule unit tests."""
    rule = one(render(helm, "prometheusRule.enabled=true"), "PrometheusRule", FULLNAME)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False, width=200))
    shutil.copy(REPO / "tests" / "chart" / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    return rules


def test_promtool_accepts_the_rendered_alert_rules(promtool: Path, rendered_rules: Path) -> None:
    result = run_promtool(promtool, "check", "rules", str(rendered_rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout, result.stdout


def test_alert_rules_fire_on_their_series_and_only_then(promtool: Path, rendered_rules: Path) -> None:
    result = run_promtool(promtool, "test", "rules", str(rendered_rules.parent / "alerts.test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout
    # Every alert the chart defines has tests that expect it to fire.
    tests = yaml.safe_load((REPO / "tests" / "chart" / "alerts.test.yaml").read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    defined = {r["alert"] for g in yaml.safe_load(rendered_rules.read_text())["groups"] for r in g["rules"]}
    assert firing == defined


def test_promtool_rule_tests_fail_when_an_alert_is_changed(promtool: Path, rendered_rules: Path) -> None:
    # The rule tests can fail: with the failure alert waiting 5 minutes, the test expecting it at 4m does.
    text = rendered_rules.read_text()
    changed = text.replace("for: 1m", "for: 5m", 1)
    assert changed != text
    rendered_rules.write_text(changed)
    result = run_promtool(promtool, "test", "rules", str(rendered_rules.parent / "alerts.test.yaml"))
    assert result.returncode != 0
    assert "ProjectorSetRolloutFailed" in result.stdout + result.stderr
