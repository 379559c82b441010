"""v1 of the sample application installed on the local cluster, with writes going through its Service."""

from __future__ import annotations

from testbed.scenario import LoadGenerator, Scenario, Write
from testbed.workloads import wait_until


def install_v1_with_traffic(scenario: Scenario) -> None:
    scenario.apply("v1")
    status = scenario.wait_active("v1")
    # A first install with an empty projector_states is adopted: the operator activates v1.
    assert {p["name"]: p["activeVersion"] for p in status["projectors"]} == {"AccountProjector": 1, "AuditProjector": 1}
    writes_succeed(scenario.start_traffic(), 20)


def writes_succeed(load: LoadGenerator, count: int) -> None:
    """Wait until ``count`` writes in all succeeded through the Service."""

    def enough() -> bool:
        writes = load.snapshot()
        assert sum(1 for w in writes if w.status == 201) >= count, f"the last writes: {writes[-3:]}"
        return True

    wait_until(f"{count} writes to succeed through the Service", enough, timeout=60, interval=0.1)


def next_writes(load: LoadGenerator, count: int = 10) -> list[Write]:
    """The next ``count`` writes to finish through the Service, waited for (not a fixed time)."""
    before = len(load.snapshot())
    wait_until(f"{count} more writes through the Service", lambda: len(load.snapshot()) >= before + count, 60, 0.1)
    return load.snapshot()[before:]
