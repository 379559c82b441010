"""v1 of the sample application installed on the local cluster, with writes going through its Service."""

from __future__ import annotations

from testbed.scenario import Scenario
from testbed.workloads import wait_until


def install_v1_with_traffic(scenario: Scenario) -> None:
    scenario.apply("v1")
    status = scenario.wait_active("v1")
    # A first install with an empty projector_states is adopted: the operator activates v1.
    assert {p["name"]: p["activeVersion"] for p in status["projectors"]} == {"AccountProjector": 1, "AuditProjector": 1}
    load = scenario.start_traffic()

    def twenty_writes_succeeded() -> bool:
        writes = load.snapshot()
        assert sum(1 for w in writes if w.status == 201) >= 20, f"the last writes: {writes[-3:]}"
        return True

    wait_until("20 writes to succeed through the Service", twenty_writes_succeeded, timeout=60, interval=0.1)
