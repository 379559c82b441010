"""End to end on the local cluster: a set whose actions fail at every pass leaves one Warning Event
whose count grows (as kubectl users know from the controllers' Events), not one Event a pass.

An admission policy (a ValidatingAdmissionPolicy, as a platform team would write one) refuses the
set's Deployment: the operator's pass fails every 5 s, the same way each time."""

from __future__ import annotations

import json
import time
from typing import Any

from testbed.scenario import Scenario

POLICY = "no-deployments-here"


def refuse_deployments(scenario: Scenario) -> None:
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": f"{POLICY}-{scenario.namespace}"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [{"expression": "false", "message": "Deployments wait for the change window"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": f"{POLICY}-{scenario.namespace}"},
        "spec": {
            "policyName": f"{POLICY}-{scenario.namespace}",
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": scenario.namespace}}
            },
        },
    }
    scenario.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy]}))
    scenario.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [binding]}))


def allow_deployments(scenario: Scenario) -> None:
    name = f"{POLICY}-{scenario.namespace}"
    scenario.kubectl("delete", f"validatingadmissionpolicybinding/{name}", f"validatingadmissionpolicy/{name}")


def warnings(scenario: Scenario) -> list[dict[str, Any]]:
    listed = scenario.kubectl(
        "get",
        "events",
        "-n",
        scenario.namespace,
        "--field-selector",
        f"involvedObject.name={scenario.name},involvedObject.kind=ProjectorSet,type=Warning",
        "-o",
        "json",
    )
    return list(json.loads(listed.stdout)["items"])


def test_a_set_failing_at_every_pass_leaves_one_warning_whose_count_grows(scenario: Scenario) -> None:
    refuse_deployments(scenario)
    try:
        # The policy takes a moment to be enforced: until then a Deployment could still be made.
        deadline = time.monotonic() + 30
        while (
            "denied request"
            not in scenario.kubectl(
                "create", "deployment", "probe", "--image=x", "-n", scenario.namespace, check=False
            ).stderr
        ):
            assert time.monotonic() < deadline, "the admission policy is not enforced"
            time.sleep(0.5)
        scenario.apply("v1")
        # Each pass is refused, and the next one comes 5 s later: wait for a few of them.
        deadline = time.monotonic() + 120
        while max((e.get("count") or 1 for e in warnings(scenario)), default=0) < 4:
            assert time.monotonic() < deadline, f"no growing count: {warnings(scenario)}\n{scenario.tail_logs()}"
            time.sleep(1)
        [refused] = warnings(scenario)
        print(f"one Warning after the refusals: count {refused['count']}, {refused['message']}")
        assert refused["reason"] == "KubernetesInvalid" and "denied request" in refused["message"]
        assert refused["lastTimestamp"] > refused["firstTimestamp"]
    finally:
        allow_deployments(scenario)
    # Once the policy is gone, the next pass makes the Deployment, and the set goes on.
    scenario.wait_active("v1")
    assert len(warnings(scenario)) == 1
