"""The edits users really make in the middle of a rollout, end to end on the local cluster with
the operator as a process, a real PostgreSQL and writes going through the Service."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml
from kubernetes import client

from projectorset.adapters.kube import KubernetesCluster
from projectorset.adapters.kubejson import KubeJson
from projectorset.api import ProjectorSetSpec
from projectorset.api.conditions import Reason
from projectorset.domain.cluster import ClusterError, Owner
from projectorset.domain.observation import DeleteDeployment, EnsureDeployment, RunStageJob, ScaleDeployment
from projectorset.domain.resources import build_deployment, build_stage_job, deployment_name, job_name
from projectorset.domain.sequent import Stage
from sampleapp.releases import get_release
from support.conditions import is_true
from support.traffic import install_v1_with_traffic, writes_succeed
from testbed.manifests import sample_projectorset
from testbed.scenario import MomentWatcher, Scenario
from testbed.sequent_schema import projector_rows
from testbed.workloads import wait_until


def stage_jobs(running: Scenario) -> list[dict[str, str]]:
    jobs = client.BatchV1Api(running.api_client).list_namespaced_job(running.namespace)
    return [dict(job.metadata.labels or {}) for job in jobs.items]


def test_version_edited_back_while_golive_runs_follows_the_database_then_rolls_back(scenario: Scenario) -> None:
    """v1 -> v2, and back to v1 while v2's golive runs: golive commits v2's projectors active, so
    v1's pods are refused; the Service must move to v2 at once (FollowingDatabase), and only then
    does v1 come back, by a replay, as any rollback."""
    install_v1_with_traffic(scenario)
    assert scenario.load is not None
    spec = scenario.projectorset()["spec"]
    commands = dict(spec["replay"]["commands"])
    # golive waits a little before its transaction, so the spec can change while it runs.
    commands["golive"] = ["sh", "-c", 'sleep 6; exec "$0" "$@"', *commands["golive"]]
    watcher = MomentWatcher(scenario.database_url, scenario.core, scenario.namespace, scenario.name)
    watcher.watch("v2", get_release("v2").versions)
    began = time.monotonic()
    scenario.apply("v2", replay={**spec["replay"], "commands": commands})
    scenario.wait_for("golive", lambda s: s.get("phase") == "Activating")
    scenario.apply("v1")  # the user goes back while golive of v2 runs

    wait_until("the Service to select v2 after its golive committed", lambda: watcher.switched_at is not None, 120)
    time.sleep(1.0)  # the measured window runs 1 s past the switch: the writes started in it
    watcher.stop()
    writes = [w for w in scenario.load.snapshot() if began <= w.started <= watcher.switched_at + 1.0]
    result = scenario.measure("v1", "v2", writes, watcher, time.monotonic() - began)
    print(result.summary())
    assert result.active_to_switch_ms is not None
    assert result.refused_outside_window == 0, result.summary()
    assert "FollowingDatabase" in [e["reason"] for e in scenario.events()]

    status = scenario.wait_active("v1", timeout=300)
    assert status["activeVersion"] == "v1"
    assert result.lost == 0 and not scenario.lost_writes(scenario.load.snapshot())
    assert projector_rows(scenario.database_url) == {
        name: (version, None, None) for name, version in get_release("v1").versions.items()
    }


def test_replicas_zero_rolls_out_with_no_pods(scenario: Scenario) -> None:
    scenario.apply("v1")
    scenario.wait_active("v1")
    scenario.apply("v2", replicas=0)
    status = scenario.wait_active("v2", timeout=300)
    assert is_true(status, "Ready")
    assert scenario.deployment_replicas("v2") == 0
    assert projector_rows(scenario.database_url)["AccountProjector"] == (2, None, None)


def test_v1_v2_v1_v2_each_rollout_runs_its_own_jobs_and_loses_no_write(scenario: Scenario) -> None:
    install_v1_with_traffic(scenario)
    for source, target in (("v1", "v2"), ("v2", "v1"), ("v1", "v2")):
        result = scenario.upgrade(source, target)
        print(result.summary())
        assert result.lost == 0, result.summary()
        assert result.refused_outside_window == 0, result.summary()
    golives = [
        (labels["projectorset.io/version"], int(labels["projectorset.io/attempt"]))
        for labels in stage_jobs(scenario)
        if labels["projectorset.io/stage"] == "golive"
    ]
    # Each rollout ran its own golive: the second v2 rollout under a new attempt, not on the
    # first one's finished Jobs (attempt numbers count every Job of a version, migrate included).
    assert len(golives) == len(set(golives)) == 3, golives
    second_v2 = max(attempt for version, attempt in golives if version == "v2")
    assert second_v2 > min(attempt for version, attempt in golives if version == "v2"), golives
    assert projector_rows(scenario.database_url)["AccountProjector"] == (2, None, None)


@contextmanager
def namespace_with_sets(kube_api: client.ApiClient, *names: str) -> Iterator[tuple[str, dict[str, Owner]]]:
    """A fresh namespace holding ProjectorSets ``names`` (real owners: the garbage collector
    deletes objects whose owner does not exist); the operator is not running."""
    namespace = f"names-{int(time.time() * 1000) % 10**8}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        owners = {}
        for name in names:
            created = client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
                "projectorset.io",
                "v1alpha1",
                namespace,
                "projectorsets",
                sample_projectorset("v1", name=name, namespace=namespace),
            )
            owners[name] = Owner(name, namespace, created["metadata"]["uid"])
        yield namespace, owners
    finally:
        core.delete_namespace(namespace)


def spec_at(version: str, name: str = "accounts") -> ProjectorSetSpec:
    return ProjectorSetSpec.model_validate(sample_projectorset("v1", name=name)["spec"] | {"version": version})


def version_objects(kube_api: client.ApiClient, namespace: str, selector: str) -> tuple[list[str], list[str]]:
    """The (Deployment, Job) names ``kubectl get deployments,jobs -l selector`` shows."""
    deployments = client.AppsV1Api(kube_api).list_namespaced_deployment(namespace, label_selector=selector)
    jobs = client.BatchV1Api(kube_api).list_namespaced_job(namespace, label_selector=selector)
    return sorted(d.metadata.name for d in deployments.items), sorted(j.metadata.name for j in jobs.items)


def test_versions_and_sets_whose_names_once_collided_get_their_own_objects(
    kube_api: client.ApiClient, operator_kube: KubeJson, projectorset_crd: None
) -> None:
    """v1.2 and v1_2 used to map to one Deployment (and Job) name, and so did set shop at
    eu-v2 and set shop-eu at v2: the second was refused. Now each has its own, side by side."""
    with namespace_with_sets(kube_api, "accounts", "shop", "shop-eu") as (namespace, owners):
        cluster = KubernetesCluster(operator_kube)
        pairs = [(owners["accounts"], "v1_2"), (owners["accounts"], "v1.2"), (owners["shop"], "eu-v2")]
        for owner, version in [*pairs, (owners["shop-eu"], "v2")]:
            spec = spec_at(version, owner.name)
            cluster.apply(owner, spec, EnsureDeployment(version, 1))
            cluster.apply(owner, spec, RunStageJob(version, 1, Stage.PREPARE, projectors=("AccountProjector",)))

        for version in ("v1_2", "v1.2"):
            deployments, jobs = version_objects(
                kube_api, namespace, f"projectorset.io/name=accounts,projectorset.io/version={version}"
            )
            assert len(deployments) == 1 and len(jobs) == 1, (version, deployments, jobs)
            assert deployments[0].startswith("accounts-v1-2-") and jobs[0].endswith("-a1-prepare")
        all_deployments, all_jobs = version_objects(kube_api, namespace, "projectorset.io/name")
        assert len(all_deployments) == len(all_jobs) == 4, (all_deployments, all_jobs)
        # Each set sees its own versions, each with its own Deployment and Job.
        view, _ = cluster.observe(owners["accounts"], spec_at("v1.2"))
        assert set(view.deployments) == {"v1_2", "v1.2"}
        assert sorted(job.version for job in view.jobs) == ["v1.2", "v1_2"]
        for owner, version in [(owners["shop"], "eu-v2"), (owners["shop-eu"], "v2")]:
            view, _ = cluster.observe(owner, spec_at(version, owner.name))
            assert set(view.deployments) == {version} and [job.version for job in view.jobs] == [version]

        # Only a clash of two 8-digit hashes could still give two versions one name: the object of
        # that name is then refused, never taken for the other version's.
        clash = build_deployment(owners["accounts"], spec_at("v9_9"), "v9_9")
        clash["metadata"]["name"] = deployment_name(owners["accounts"], "v9.9")
        client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, clash)
        with pytest.raises(ClusterError) as refused:
            cluster.apply(owners["accounts"], spec_at("v9.9"), EnsureDeployment("v9.9", 1))
        assert refused.value.reason is Reason.KUBERNETES_CONFLICT and "collides" in refused.value.message


def test_a_deployment_named_by_the_earlier_rule_is_used_never_duplicated(
    kube_api: client.ApiClient, operator_kube: KubeJson, projectorset_crd: None
) -> None:
    """A set that ran under an operator before today's names keeps its Deployment (v1.2 was
    named accounts-v1-2): the new operator scales it, reads its release and retires it, and never
    creates a second Deployment, with the same pod selector, beside it."""
    with namespace_with_sets(kube_api, "accounts") as (namespace, owners):
        owner = owners["accounts"]
        apps = client.AppsV1Api(kube_api)
        earlier = build_deployment(owner, spec_at("v1.2"), "v1.2")
        earlier["metadata"]["name"] = "accounts-v1-2"  # the earlier rule: lowered, '.' and '_' as '-'
        earlier_code = earlier["spec"]["template"]["spec"]["containers"][0]["env"]
        apps.create_namespaced_deployment(namespace, earlier)
        earlier_job = build_stage_job(owner, spec_at("v1.2"), "v1.2", 1, Stage.PREPARE, 0, ["AccountProjector"])
        earlier_job["metadata"]["name"] = "accounts-v1-2-a1-prepare"
        client.BatchV1Api(kube_api).create_namespaced_job(namespace, earlier_job)
        selector = "projectorset.io/name=accounts,projectorset.io/version=v1.2"
        cluster = KubernetesCluster(operator_kube)

        view, _ = cluster.observe(owner, spec_at("v1.2"))
        assert view.deployments["v1.2"].replicas == 1
        assert [(job.name, job.stage) for job in view.jobs] == [("accounts-v1-2-a1-prepare", Stage.PREPARE)]

        cluster.apply(owner, spec_at("v1.2"), EnsureDeployment("v1.2", 2))
        assert version_objects(kube_api, namespace, selector)[0] == ["accounts-v1-2"]
        assert apps.read_namespaced_deployment("accounts-v1-2", namespace).spec.replicas == 2

        # v2 rolls out: an abort Job for v1.2 runs v1.2's recorded code, read from that Deployment.
        template = copy.deepcopy(spec_at("v2").template)
        template["spec"]["containers"][0]["env"] = [{"name": "RELEASE", "value": "v2-only"}]
        v2 = spec_at("v2").model_copy(update={"template": template})
        cluster.apply(owner, v2, RunStageJob("v1.2", 1, Stage.ABORT, round=1, projectors=("AccountProjector",)))
        abort = client.BatchV1Api(kube_api).read_namespaced_job(job_name(owner, "v1.2", 1, Stage.ABORT, 1), namespace)
        env = abort.spec.template.spec.containers[0].env
        assert [(e.name, e.value) for e in env][: len(earlier_code)] == [
            (e["name"], e.get("value")) for e in earlier_code
        ]

        cluster.apply(owner, v2, ScaleDeployment("v1.2", 0))
        assert apps.read_namespaced_deployment("accounts-v1-2", namespace).spec.replicas == 0
        cluster.apply(owner, v2, DeleteDeployment("v1.2"))
        assert version_objects(kube_api, namespace, selector)[0] == []


def test_an_operator_upgrade_keeps_the_deployment_its_predecessor_named(scenario: Scenario) -> None:
    """Version v1.0 installed by an operator before today's names has its Deployment named
    accounts-v1-0 (today's rule adds a hash). The new operator serves from that Deployment and,
    at the next rollout, retires it: a second v1.0 Deployment never appears."""
    assert scenario.operator is not None
    scenario.operator.stop()
    manifest = sample_projectorset(
        "v1",
        name=scenario.name,
        namespace=scenario.namespace,
        secret=f"{scenario.name}-db",
        service=scenario.name,
        spec={"version": "v1.0"},  # release v1's code
    )
    scenario.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    body = scenario.projectorset()
    owner = Owner(scenario.name, scenario.namespace, body["metadata"]["uid"])
    earlier = build_deployment(owner, ProjectorSetSpec.model_validate(body["spec"]), "v1.0")
    earlier["metadata"]["name"] = "accounts-v1-0"  # the earlier rule: lowered, '.' and '_' as '-'
    apps = client.AppsV1Api(scenario.api_client)
    apps.create_namespaced_deployment(scenario.namespace, earlier)
    selector = "projectorset.io/name=accounts,projectorset.io/version=v1.0"
    seen: set[str] = set()

    def record() -> None:
        seen.update(
            d.metadata.name for d in apps.list_namespaced_deployment(scenario.namespace, label_selector=selector).items
        )

    scenario.start_operator()
    scenario.wait_active("v1.0", on_poll=record)
    service = scenario.core.read_namespaced_service(scenario.name, scenario.namespace)
    assert service.spec.selector == {"projectorset.io/name": "accounts", "projectorset.io/version": "v1.0"}
    load = scenario.start_traffic()
    writes_succeed(load, 10)

    result = scenario.upgrade("v1.0", "v2", on_poll=record)
    assert result.lost == 0, result.summary()

    def scaled_down() -> bool:
        record()
        return scenario.deployment_replicas("v1.0") == 0

    wait_until("v1.0 scaled down", scaled_down, 60, 0.5)
    assert seen == {"accounts-v1-0"}, seen
