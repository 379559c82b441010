"""Checks before golive on the local cluster: a check that fails during a real rollout of the
sample application, under writes through the Service, stops it before golive; the replay is
aborted and v1 keeps serving with nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
from kubernetes import client

from support.conditions import condition, failed_and_aborted
from support.traffic import install_v1_with_traffic, next_writes
from testbed import toolchain
from testbed.scenario import Scenario
from testbed.sequent_schema import projector_rows
from testbed.workloads import wait_until

CHECKS = [
    # Passes: the replay built the balances.
    {"name": "balances-replayed", "query": "SELECT count(*) > 0 FROM replay_schema.account_balances"},
    # Fails: a rule the new code would rely on that the data does not meet.
    {
        "name": "balances-over-a-million",
        "query": "SELECT bool_and(balance >= 1000000) FROM replay_schema.account_balances",
        "timeoutSeconds": 10,
    },
]


def test_a_failing_check_stops_the_rollout_under_writes_and_v1_keeps_serving(scenario: Scenario) -> None:
    install_v1_with_traffic(scenario)
    load = scenario.load
    assert load is not None
    spec = scenario.projectorset()["spec"]
    scenario.apply("v2", replay={**spec["replay"], "checks": CHECKS})

    status = scenario.wait_for("the rollout to fail on a check and abort the replay", failed_and_aborted)
    progressing = condition(status, "Progressing")
    print("status.phase:", status["phase"], "reason:", progressing["reason"])
    print("status.message:", status["message"])
    print("status.checks:", json.dumps(status["checks"], indent=1))
    assert progressing["reason"] == "CheckFailed"
    assert status["message"].startswith("check balances-over-a-million failed: false")
    assert "version v1 keeps serving" in status["message"]
    results = {c["name"]: (c["passed"], c["result"], c["version"], c["attempt"]) for c in status["checks"]}
    assert results == {
        "balances-replayed": (True, "true", "v2", 1),
        "balances-over-a-million": (False, "false", "v2", 1),
    }

    # The Warning Event names the check and its result; the checks ran after the replay's stages.
    wait_until(
        "the CheckFailed Event",
        lambda: any(e["type"] == "Warning" and e["reason"] == "CheckFailed" for e in scenario.events()),
    )
    events = scenario.events()
    for event in events:
        print(f"event: {event['type']} {event['reason']}: {event['message']}")
    [failed] = [e for e in events if e["reason"] == "CheckFailed"]
    assert failed["type"] == "Warning"
    assert failed["message"].startswith("check balances-over-a-million failed: false; aborting")
    reasons = [e["reason"] for e in events]
    # (Events of one second are listed in no particular order.)
    assert reasons.index("Optimizing") < min(reasons.index("RunningChecks"), reasons.index("CheckFailed"))
    assert "GoingLive" not in reasons

    # Nothing went live: no golive Job ran, the replay is aborted, v1's projectors as they were.
    jobs = client.BatchV1Api(scenario.api_client).list_namespaced_job(scenario.namespace)
    stages = [job.metadata.labels["projectorset.io/stage"] for job in jobs.items]
    assert "golive" not in stages and "abort" in stages, stages
    with psycopg.connect(scenario.database_url) as conn:
        replay = conn.execute("SELECT state FROM sequent_schema.replay_states ORDER BY id DESC LIMIT 1").fetchone()
    assert replay == ("aborted",)
    assert projector_rows(scenario.database_url) == {
        "AccountProjector": (1, None, None),
        "AuditProjector": (1, None, None),
    }
    assert status["activeVersion"] == "v1"
    assert scenario.deployment_replicas("v2") == 0

    # v1 keeps serving: writes go on through the Service, and none acknowledged was lost.
    recent = next_writes(load)
    assert all(w.status == 201 for w in recent), recent
    load.stop()
    assert not scenario.lost_writes(load.snapshot())

    # kubectl projectorset get shows the results.
    kubectl = str(toolchain.binary("kubectl"))
    env = dict(
        os.environ,
        KUBECONFIG=str(scenario.cluster.kubeconfig),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    tree = subprocess.run(
        [kubectl, "projectorset", "get", scenario.name, "-n", scenario.namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    print(tree)
    assert "✖ Failed · CheckFailed" in tree.splitlines()[0]
    assert "✔ balances-replayed" in tree and "✖ balances-over-a-million" in tree

    # The database URI never shows.
    visible = json.dumps(scenario.projectorset()) + json.dumps(events) + tree
    assert scenario.database_url not in visible and "test-password" not in visible
