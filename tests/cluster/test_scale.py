"""The scale subresource on the local cluster: kubectl scale and a HorizontalPodAutoscaler on a
ProjectorSet scale the Deployment of the version users reach, and the set reports its pods."""

from __future__ import annotations

import json

import yaml

from testbed.scenario import Scenario
from testbed.workloads import wait_until


def test_kubectl_scale_and_an_autoscaler_scale_the_serving_version(scenario: Scenario) -> None:
    name, namespace = scenario.name, scenario.namespace
    scenario.apply("v1")
    scenario.wait_active("v1")

    scenario.kubectl("scale", "pjs", name, "-n", namespace, "--replicas=3")
    scenario.wait_for("three pods of v1", lambda s: s.get("replicas") == 3)
    assert scenario.deployment_replicas("v1") == 3
    printed = scenario.kubectl("get", "pjs", name, "-n", namespace, "-o", "jsonpath={.status.replicas}").stdout
    assert printed == "3"
    path = f"/apis/projectorset.io/v1alpha1/namespaces/{namespace}/projectorsets/{name}/scale"
    scale = json.loads(scenario.kubectl("get", "--raw", path).stdout)
    print(json.dumps(scale, indent=1))
    selector = f"projectorset.io/name={name},projectorset.io/version=v1"
    assert (scale["kind"], scale["spec"], scale["status"]) == (
        "Scale",
        {"replicas": 3},
        {"replicas": 3, "selector": selector},
    )
    # The selector is the one an autoscaler measures: exactly the serving version's pods, not the
    # v1 migrate Job's pod still there (stage pods carry no version label).
    pods = scenario.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "name").stdout.split()
    assert len(pods) == 3, pods

    # An autoscaler whose minimum is above the current count scales up without metrics (the test
    # cluster has no metrics server): through the set, to the serving version's Deployment.
    autoscaler = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "projectorset.io/v1alpha1", "kind": "ProjectorSet", "name": name},
            "minReplicas": 4,
            "maxReplicas": 6,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }
    scenario.kubectl("apply", "-f", "-", input=yaml.safe_dump(autoscaler))
    scenario.wait_for("the autoscaler's four pods", lambda s: s.get("replicas") == 4, timeout=120)
    assert scenario.deployment_replicas("v1") == 4
    assert scenario.projectorset()["spec"]["replicas"] == 4

    def able_to_scale() -> dict[str, str] | None:
        hpa = json.loads(scenario.kubectl("get", "hpa", name, "-n", namespace, "-o", "json").stdout)
        found = {c["type"]: c for c in (hpa.get("status") or {}).get("conditions") or []}
        able = found.get("AbleToScale")
        return able if able is not None and able["status"] == "True" else None

    able = wait_until("the autoscaler to read the set's scale", able_to_scale, timeout=60)
    print(able)
