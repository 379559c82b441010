"""The edits users really make in the middle of a rollout, end to end on the local cluster with
the operator as a process, a real PostgreSQL and writes going through the Service."""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from test_upgrade import install_v1_with_traffic

from projectorset.api import ProjectorSetSpec
from projectorset.cluster import ClusterError, Owner
from projectorset.conditions import Reason
from projectorset.kube import KubernetesCluster
from projectorset.observation import EnsureDeployment, RunStageJob
from projectorset.sequent import Stage
from sampleapp.releases import get_release
from testbed.manifests import sample_projectorset
from testbed.scenario import MomentWatcher, Scenario
from testbed.sequent_schema import projector_rows


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

    deadline = time.monotonic() + 120
    while watcher.switched_at is None:
        assert time.monotonic() < deadline, "the Service never selected v2 after its golive committed"
        time.sleep(0.2)
    time.sleep(1.0)
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
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "True"
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


def test_versions_whose_object_names_collide_are_refused_not_confused(kube_api: client.ApiClient) -> None:
    """v1.2 and v1_2 both map to Deployment and Job names ending in v1-2: the second version used
    to take the first one's Deployment (and Jobs) for its own."""
    namespace = f"collide-{int(time.time()) % 100000}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        cluster = KubernetesCluster(kube_api)
        # A real owner: the garbage collector deletes objects whose owner does not exist.
        created = client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            "projectorset.io", "v1alpha1", namespace, "projectorsets", sample_projectorset("v1", namespace=namespace)
        )
        owner = Owner("accounts", namespace, created["metadata"]["uid"])
        first = ProjectorSetSpec.model_validate(sample_projectorset("v1")["spec"] | {"version": "v1_2"})
        second = ProjectorSetSpec.model_validate(sample_projectorset("v1")["spec"] | {"version": "v1.2"})
        cluster.apply(owner, first, EnsureDeployment("v1_2", 1))
        cluster.apply(owner, first, RunStageJob("v1_2", 1, Stage.PREPARE, projectors=("AccountProjector",)))
        with pytest.raises(ClusterError) as refused:
            cluster.apply(owner, second, EnsureDeployment("v1.2", 1))
        assert refused.value.reason is Reason.KUBERNETES_CONFLICT
        assert "collides" in refused.value.message
        with pytest.raises(ClusterError) as refused_job:
            cluster.apply(owner, second, RunStageJob("v1.2", 1, Stage.PREPARE, projectors=("AccountProjector",)))
        assert refused_job.value.reason is Reason.KUBERNETES_CONFLICT
    finally:
        core.delete_namespace(namespace)
