"""The Service switch without a gap: no moment without a ready endpoint, no request failed across it.

With a real Sequent application every switch had connections reset 20 to 160 ms after it (issue
20). Watching the EndpointSlices showed that neither the EndpointSlice controller (a selector change
is one MODIFIED event that swaps the endpoints in place) nor the proxy left a gap: the Service also
selected the golive stage's pod (it carried the version's labels, and with no probe a running pod
is Ready) while that pod exited, and the connections sent to it found nothing listening.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from kubernetes import client

from projectorset.adapters.kubejson import KubeJson
from support.traffic import install_v1_with_traffic
from testbed.scenario import Scenario
from testbed.switchgap import deploy_two_versions, run_switches, watched_proxy

SWITCHES = 8


@pytest.fixture
def namespace(local_cluster, kube_api: client.ApiClient) -> Iterator[str]:
    name = f"switchgap-{uuid.uuid4().hex[:8]}"
    local_cluster.create_namespace(name)
    yield name
    KubeJson(kube_api).request("DELETE", f"/api/v1/namespaces/{name}")


def test_selector_switches_between_ready_deployments_leave_no_gap(kube_api: client.ApiClient, namespace: str) -> None:
    deploy_two_versions(KubeJson(kube_api), namespace, replicas=2)

    run = run_switches(kube_api, namespace, SWITCHES, settle=0.5, max_requests=20_000, max_seconds=120)
    print(run.report())

    assert len(run.switches) == SWITCHES, "the request loop reached its bound before the last switch"
    assert not run.lost_events
    assert run.slice_gaps == [] and run.proxy_gaps == []
    assert run.requests.failures == []
    assert set(run.requests.versions) == {"blue", "green"} and run.requests.answered > 10 * SWITCHES
    assert all(switch.followed is not None for switch in run.switches)


def test_operator_switch_under_writes_fails_no_connection(scenario: Scenario) -> None:
    install_v1_with_traffic(scenario)
    load = scenario.load
    assert load is not None

    def deployment_pod_ips() -> set[str]:
        listed = scenario.core.list_namespaced_pod(
            scenario.namespace, label_selector=f"projectorset.io/name={scenario.name}"
        )
        return {p.status.pod_ip for p in listed.items if "projectorset.io/stage" not in (p.metadata.labels or {})}

    served_by = deployment_pod_ips()
    with watched_proxy(scenario.api_client, scenario.namespace, scenario.name) as (recorder, _, proxy_endpoints):
        began = time.monotonic()
        result = scenario.upgrade("v1", "v2")
        served_by |= deployment_pod_ips()
    writes = [w for w in load.snapshot() if w.started >= began]
    print(result.summary())
    for event in recorder.events:
        print(event.describe(began))
    refused = Counter(f"{w.status} {w.error}" for w in writes if w.status != 201)
    print(
        f"{len(writes)} writes, {result.refused} refused in a {result.refused_window_ms:.0f} ms window: {dict(refused)}"
    )

    assert result.lost == 0 and result.refused_outside_window == 0
    # What a client would see: an answer to every request, never a reset or a closed connection.
    assert [w for w in writes if w.status == 0] == []
    assert not recorder.lost_events
    assert recorder.gaps() == [] and proxy_endpoints.gaps() == []
    # The Service only ever sent traffic to the versions' Deployment pods, never to a stage's pod.
    assert recorder.ready_addresses() <= served_by, served_by
